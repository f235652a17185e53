"""Writes the shipped workflows from one description: UI format (v0.4) and the API-format twin.

    python workflows/build.py          # rewrite workflows/*.json and workflows/api/*.json
    python workflows/build.py --check  # exit 1 if a committed file differs from what this writes

UI files sit in workflows/ (ComfyUI lists them under Browse Templates); API twins sit in
workflows/api/ (not listed: the frontend cannot open API format). The nodes' specs, the layout and the
two formats live in workflow_graph.py; this file registers the specs it uses and describes each
workflow. Runs without ComfyUI and without this repo's packages.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
API_DIR = HERE / "api"
if str(HERE) not in sys.path:  # run as a script, imported as workflows.build, or loaded from its file
    sys.path.insert(0, str(HERE))

from workflow_graph import SPECS, In, Node, Spec, _sock, to_api, to_ui  # noqa: E402  (the graph format)
from workflow_graph import NODE_TITLE_HEIGHT  # noqa: E402,F401  (re-exported: the layout test reads it)

# Public weights in ComfyUI's model folders (sana_sprint_core.constants COMFY_*_NAME; a test checks).
DIT_NAME = "Sana_Sprint_1.6B_1024px_diffusers"
TEXT_ENCODER_NAME = "gemma-2-2b-it"
VAE_NAME = "dc-ae-f32c32-sana-1.1-diffusers"
CONTROLNET_NAME = "Sana_1600M_1024px_BF16_ControlNet_HED.pth"  # COMFY_CONTROLNET_NAME
HED_NAME = "ControlNetHED.pth"  # HED_FILE_NAME
PROMPT = "a tiny astronaut hatching from an egg on the moon, detailed, cinematic light"
IMG2IMG_PROMPT = "a watercolor painting of a lighthouse on a cliff at sunset"
LIVE_PROMPT = "a cozy cabin in a snowy forest at dusk, warm light in the windows"
INPUT_IMAGE = "example.png"
SCRIBBLE_IMAGE = "scribble.png"  # a drawing: dark strokes on a light ground
HED_PROMPT = "a cozy reading corner with an armchair and a tall window, soft morning light"
SCRIBBLE_PROMPT = "a small wooden house on a hill under a big round sun, children's book illustration"
LIVE_SCRIBBLE_PROMPT = "a friendly dragon made of autumn leaves, watercolor"
SEED = 42


SPECS.update({
    "SanaSprintDiTLoader": Spec((In("model_name", "COMBO"), In("weight_dtype", "COMBO")), (("MODEL", "MODEL"),)),
    "SanaSprintTextEncoderLoader": Spec((In("text_encoder_name", "COMBO"), In("weight_dtype", "COMBO")),
                                        (("SANA_TEXT_ENCODER", "SANA_TEXT_ENCODER"),)),
    "SanaSprintVAELoader": Spec((In("vae_name", "COMBO"), In("weight_dtype", "COMBO")), (("SANA_VAE", "SANA_VAE"),)),
    "SanaSprintTextEncode": Spec((_sock("text_encoder", "SANA_TEXT_ENCODER"), In("text", "STRING"),
                                  In("complex_human_instruction", "BOOLEAN")), (("CONDITIONING", "CONDITIONING"),)),
    "SanaSprintEmptyLatent": Spec((In("width", "INT"), In("height", "INT"), In("batch_size", "INT"),
                                   In("aspect_ratio", "COMBO")), (("LATENT", "LATENT"),)),
    "SanaSprintSampler": Spec((
        _sock("model", "MODEL"), _sock("positive", "CONDITIONING"), _sock("latent_image", "LATENT"),
        In("seed", "INT", control=True), In("steps", "INT"), In("guidance", "FLOAT"), In("max_timestep", "FLOAT"),
        In("intermediate_timestep", "FLOAT"), In("denoise", "FLOAT"), In("timesteps", "STRING"),
    ), (("LATENT", "LATENT"),)),
    "SanaSprintVAEDecode": Spec((_sock("samples", "LATENT"), _sock("vae", "SANA_VAE"), In("tiled", "COMBO")),
                                (("IMAGE", "IMAGE"),)),
    "SanaSprintVAEEncode": Spec((_sock("pixels", "IMAGE"), _sock("vae", "SANA_VAE"), In("tiled", "COMBO")),
                                (("LATENT", "LATENT"),)),
    "SanaSprintLivePreview": Spec((_sock("images", "IMAGE"),), ()),
    "SanaSprintScribblePad": Spec((In("scribble", "SANA_SCRIBBLE"), In("width", "INT"), In("height", "INT"),
                                   _sock("image", "IMAGE", optional=True)), (("IMAGE", "IMAGE"), ("MASK", "MASK"))),
    "SanaSprintControlNetLoader": Spec((In("controlnet_name", "COMBO"), In("weight_dtype", "COMBO"),
                                        In("wiring", "COMBO")), (("SANA_CONTROLNET", "SANA_CONTROLNET"),)),
    "SanaSprintHEDPreprocessor": Spec((_sock("image", "IMAGE"), In("mode", "COMBO"), In("detect_resolution", "INT"),
                                       In("thickness", "INT"), In("hed_model", "COMBO")), (("IMAGE", "IMAGE"),)),
    "SanaSprintControlNetApply": Spec((
        _sock("positive", "CONDITIONING"), _sock("controlnet", "SANA_CONTROLNET"), _sock("vae", "SANA_VAE"),
        _sock("image", "IMAGE"), In("strength", "FLOAT"), In("width", "INT"), In("height", "INT"),
    ), (("CONDITIONING", "CONDITIONING"),)),
    # ComfyUI core nodes (checked against the real /object_info by tests/e2e).
    "SaveImage": Spec((_sock("images", "IMAGE"), In("filename_prefix", "STRING")), ()),
    "LoadImage": Spec((In("image", "COMBO", upload=True),), (("IMAGE", "IMAGE"), ("MASK", "MASK"))),
})


def _loaders() -> list[Node]:
    return [
        Node(1, "SanaSprintDiTLoader", {"model_name": DIT_NAME, "weight_dtype": "auto"}),
        Node(2, "SanaSprintTextEncoderLoader", {"text_encoder_name": TEXT_ENCODER_NAME, "weight_dtype": "auto"}),
        Node(3, "SanaSprintVAELoader", {"vae_name": VAE_NAME, "weight_dtype": "auto"}),
    ]


def _sampler(steps: int, latent: tuple[int, int], denoise: float, positive: tuple[int, int] = (4, 0)) -> Node:
    values = {"model": (1, 0), "positive": positive, "latent_image": latent, "seed": SEED, "steps": steps,
              "guidance": 4.5, "max_timestep": 1.5708, "intermediate_timestep": 1.3, "denoise": denoise,
              "timesteps": ""}
    return Node(6, "SanaSprintSampler", values)


def _tail(prefix: str) -> list[Node]:
    return [
        Node(7, "SanaSprintVAEDecode", {"samples": (6, 0), "vae": (3, 0), "tiled": "auto"}),
        Node(8, "SaveImage", {"images": (7, 0), "filename_prefix": prefix}),
    ]


def text_to_image(steps: int) -> list[Node]:
    """DiT + Gemma + DC-AE loaders, prompt, empty 1024x1024 latent, Sprint sampler, decode, save."""
    return [
        *_loaders(),
        Node(4, "SanaSprintTextEncode", {"text_encoder": (2, 0), "text": PROMPT, "complex_human_instruction": True}),
        Node(5, "SanaSprintEmptyLatent", {"width": 1024, "height": 1024, "batch_size": 1,
                                          "aspect_ratio": "1:1 (1024x1024)"}),
        _sampler(steps, (5, 0), 1.0),
        *_tail(f"SanaSprint_{steps}step"),
    ]


def image_to_image() -> list[Node]:
    """LoadImage -> DC-AE encode -> 2-step Sprint sampler at denoise 0.6 -> decode -> save."""
    return [
        *_loaders(),
        Node(4, "SanaSprintTextEncode", {"text_encoder": (2, 0), "text": IMG2IMG_PROMPT,
                                         "complex_human_instruction": True}),
        Node(9, "LoadImage", {"image": INPUT_IMAGE}),
        Node(5, "SanaSprintVAEEncode", {"pixels": (9, 0), "vae": (3, 0), "tiled": "auto"}),
        _sampler(2, (5, 0), 0.6),
        *_tail("SanaSprint_img2img"),
    ]


def live_text_to_image() -> list[Node]:
    """Text-to-image for live mode: 1 step (the fastest), the image shown by SanaSprintLivePreview.

    Switch on "Live" in the preview node: every edit of the prompt re-runs the graph; the loaders
    and unchanged nodes come from ComfyUI's cache. Nothing is written to the output folder.
    """
    return [
        *_loaders(),
        Node(4, "SanaSprintTextEncode", {"text_encoder": (2, 0), "text": LIVE_PROMPT,
                                         "complex_human_instruction": True}),
        Node(5, "SanaSprintEmptyLatent", {"width": 1024, "height": 1024, "batch_size": 1,
                                          "aspect_ratio": "1:1 (1024x1024)"}),
        _sampler(1, (5, 0), 1.0),
        Node(7, "SanaSprintVAEDecode", {"samples": (6, 0), "vae": (3, 0), "tiled": "auto"}),
        Node(8, "SanaSprintLivePreview", {"images": (7, 0)}),
    ]


def _prompt(text: str) -> Node:
    return Node(4, "SanaSprintTextEncode", {"text_encoder": (2, 0), "text": text, "complex_human_instruction": True})


def _empty_latent() -> Node:
    return Node(5, "SanaSprintEmptyLatent", {"width": 1024, "height": 1024, "batch_size": 1,
                                             "aspect_ratio": "1:1 (1024x1024)"})


def _controlnet(source: tuple[int, int], mode: str) -> list[Node]:
    """ControlNet loader, scribble map of `source` (mode hed / drawing / drawing_inverted), apply to the prompt."""
    return [
        Node(10, "SanaSprintControlNetLoader", {"controlnet_name": CONTROLNET_NAME, "weight_dtype": "auto",
                                                "wiring": "auto"}),
        Node(11, "SanaSprintHEDPreprocessor", {"image": source, "mode": mode, "detect_resolution": 1024,
                                               "thickness": 2, "hed_model": HED_NAME}),
        Node(12, "SanaSprintControlNetApply", {"positive": (4, 0), "controlnet": (10, 0), "vae": (3, 0),
                                               "image": (11, 0), "strength": 1.0, "width": 1024, "height": 1024}),
    ]


def controlnet_hed() -> list[Node]:
    """A photo -> HED scribble -> Sana HED ControlNet on the Sprint DiT -> 2-step image, saved."""
    return [
        *_loaders(), _prompt(HED_PROMPT), Node(9, "LoadImage", {"image": INPUT_IMAGE}),
        *_controlnet((9, 0), "hed"), _empty_latent(), _sampler(2, (5, 0), 1.0, positive=(12, 0)),
        *_tail("SanaSprint_controlnet_hed"),
    ]


def controlnet_scribble() -> list[Node]:
    """A drawing (dark strokes on light paper, input/scribble.png) -> scribble -> ControlNet -> image, saved."""
    return [
        *_loaders(), _prompt(SCRIBBLE_PROMPT), Node(9, "LoadImage", {"image": SCRIBBLE_IMAGE}),
        *_controlnet((9, 0), "drawing_inverted"), _empty_latent(), _sampler(2, (5, 0), 1.0, positive=(12, 0)),
        *_tail("SanaSprint_controlnet_scribble"),
    ]


def live_scribble() -> list[Node]:
    """Live mode with the scribble pad: every stroke re-runs ControlNet sampling (1 step) into the live preview.

    The pad's optional background `image` stays unlinked.
    """
    return [
        *_loaders(), _prompt(LIVE_SCRIBBLE_PROMPT),
        Node(13, "SanaSprintScribblePad", {"scribble": "", "width": 1024, "height": 1024}),
        *_controlnet((13, 0), "drawing"), _empty_latent(), _sampler(1, (5, 0), 1.0, positive=(12, 0)),
        Node(7, "SanaSprintVAEDecode", {"samples": (6, 0), "vae": (3, 0), "tiled": "auto"}),
        Node(8, "SanaSprintLivePreview", {"images": (7, 0)}),
    ]


WORKFLOWS = {
    "sana_sprint_1step_text_to_image": lambda: text_to_image(1),
    "sana_sprint_2step_text_to_image": lambda: text_to_image(2),
    "sana_sprint_4step_text_to_image": lambda: text_to_image(4),
    "sana_sprint_img2img": image_to_image,
    "sana_sprint_live_text_to_image": live_text_to_image,
    "sana_sprint_controlnet_hed": controlnet_hed,
    "sana_sprint_controlnet_scribble": controlnet_scribble,
    "sana_sprint_live_scribble_controlnet": live_scribble,
}


# --- Training inside ComfyUI: distil a LoRA from a folder of images, then generate at 1 and 2 steps ----
TEACHER_NAME = "SANA_Sprint_1.6B_1024px_teacher_diffusers"  # COMFY_TEACHER_NAME
TRAIN_FOLDER = "sana_sprint_training"  # a folder of images + .txt captions in ComfyUI's input folder
TRAIN_PROMPT = "a lighthouse on a rocky coast at sunset, in the style of the training images"

SPECS.update({
    "SanaSprintDataset": Spec((In("folder", "STRING"), In("resolution", "INT"), In("buckets", "BOOLEAN"),
                               In("skip_bad_files", "BOOLEAN"), In("caption_extension", "STRING")),
                              (("SANA_DATASET", "SANA_DATASET"), ("STRING", "STRING"))),
    "SanaSprintPrecompute": Spec((_sock("dataset", "SANA_DATASET"), _sock("text_encoder", "SANA_TEXT_ENCODER"),
                                  _sock("vae", "SANA_VAE"), In("preview_prompt", "STRING"),
                                  In("complex_human_instruction", "BOOLEAN"), In("control_maps", "COMBO"),
                                  In("hed_model", "COMBO"), In("thickness_min", "INT"), In("thickness_max", "INT")),
                                 (("SANA_TRAIN_CACHE", "SANA_TRAIN_CACHE"),)),
    "SanaSprintDistill": Spec((
        _sock("model", "MODEL"), _sock("cache", "SANA_TRAIN_CACHE"), In("mode", "COMBO"), In("rank", "INT"),
        In("alpha", "FLOAT"), In("steps", "INT"), In("learning_rate", "FLOAT"), In("batch_size", "INT"),
        In("scm_weight", "FLOAT"), In("ladd_weight", "FLOAT"), In("max_time_probability", "FLOAT"),
        In("seed", "INT", control=True),
        In("save_every", "INT"), In("preview_every", "INT"), In("output_name", "STRING"), In("resume", "BOOLEAN"),
    ), (("MODEL", "MODEL"), ("SANA_LORA", "SANA_LORA"), ("LOSS_MAP", "LOSS_MAP"))),
    "SanaSprintLossGraph": Spec((_sock("loss", "LOSS_MAP"),), (("IMAGE", "IMAGE"),)),
    "SanaSprintSaveLoRA": Spec((_sock("lora", "SANA_LORA"), In("filename_prefix", "STRING"), In("destination", "COMBO"),
                                In("weight_dtype", "COMBO"), In("file_format", "COMBO")), (("STRING", "STRING"),)),
})


def _precompute(prompt: str, control_maps: str) -> Node:
    """Precompute (node 11) of the images of Dataset (node 10); control_maps 'hed' adds their HED scribbles."""
    values = {"dataset": (10, 0), "text_encoder": (2, 0), "vae": (3, 0), "preview_prompt": prompt,
              "complex_human_instruction": True, "control_maps": control_maps, "hed_model": HED_NAME,
              "thickness_min": 0, "thickness_max": 24}
    return Node(11, "SanaSprintPrecompute", values)


def _generate(first_id: int, steps: int) -> list[Node]:
    """Sampler on the student MODEL (Distill output 0) at `steps`, decode, save."""
    sampler = _sampler(steps, (5, 0), 1.0)
    sampler.id = first_id
    sampler.values["model"] = (12, 0)
    return [
        sampler,
        Node(first_id + 1, "SanaSprintVAEDecode", {"samples": (first_id, 0), "vae": (3, 0), "tiled": "auto"}),
        Node(first_id + 2, "SaveImage", {"images": (first_id + 1, 0),
                                         "filename_prefix": f"SanaSprint_trained_{steps}step"}),
    ]


def train_lora() -> list[Node]:
    """Teacher + Gemma + DC-AE -> images folder -> cache -> Distill (LoRA) -> save LoRA, loss graph, and the
    student sampled at 1 and 2 steps. Put images with .txt captions in input/sana_sprint_training first."""
    loaders = _loaders()
    loaders[0].values["model_name"] = TEACHER_NAME
    distill = {"model": (1, 0), "cache": (11, 0), "mode": "lora", "rank": 32, "alpha": 32.0, "steps": 1000,
               "learning_rate": 1e-4, "batch_size": 1, "scm_weight": 1.0, "ladd_weight": 0.5,
               "max_time_probability": 0.5, "seed": SEED, "save_every": 250, "preview_every": 50,
               "output_name": "sana_sprint_lora", "resume": False}
    return [
        *loaders,
        Node(10, "SanaSprintDataset", {"folder": TRAIN_FOLDER, "resolution": 1024, "buckets": True,
                                       "skip_bad_files": False, "caption_extension": ".txt"}),
        _precompute(TRAIN_PROMPT, "none"),
        Node(12, "SanaSprintDistill", distill),
        Node(13, "SanaSprintSaveLoRA", {"lora": (12, 1), "filename_prefix": "sana_sprint_lora",
                                        "destination": "loras", "weight_dtype": "bf16", "file_format": "comfyui"}),
        Node(14, "SanaSprintLossGraph", {"loss": (12, 2)}),
        _prompt(TRAIN_PROMPT),
        _empty_latent(),
        *_generate(6, 1),
        *_generate(16, 2),
    ]


WORKFLOWS["sana_sprint_train_lora"] = train_lora


# --- Training a ControlNet for the Sprint model: distil NVIDIA's Sana HED ControlNet on your images ---
SPECS.update({
    "SanaSprintDistillControlNet": Spec((
        _sock("model", "MODEL"), _sock("cache", "SANA_TRAIN_CACHE"), In("mode", "COMBO"),
        In("teacher_controlnet", "COMBO"), In("init", "COMBO"), In("steps", "INT"), In("learning_rate", "FLOAT"),
        In("batch_size", "INT"), In("scm_weight", "FLOAT"), In("ladd_weight", "FLOAT"),
        In("max_time_probability", "FLOAT"), In("seed", "INT", control=True), In("save_every", "INT"),
        In("preview_every", "INT"),
        In("output_name", "STRING"), In("resume", "BOOLEAN"), _sock("teacher_model", "MODEL", optional=True),
    ), (("SANA_CONTROLNET", "SANA_CONTROLNET"), ("LOSS_MAP", "LOSS_MAP"))),
    "SanaSprintSaveControlNet": Spec((_sock("controlnet", "SANA_CONTROLNET"), In("filename_prefix", "STRING"),
                                      In("destination", "COMBO"), In("weight_dtype", "COMBO")),
                                     (("STRING", "STRING"),)),
})


def train_controlnet() -> list[Node]:
    """Sprint DiT + Gemma + DC-AE -> images folder -> cache with HED scribbles -> Distill ControlNet (teacher:
    NVIDIA's HED ControlNet with the Sana base inside its file; teacher_model unlinked) -> save it, loss graph,
    and a 2-step image steered by it from the HED scribble of input/example.png. Put images with .txt
    captions in input/sana_sprint_training first."""
    distill = {"model": (1, 0), "cache": (11, 0), "mode": "distill", "teacher_controlnet": CONTROLNET_NAME,
               "init": "auto", "steps": 1000, "learning_rate": 1e-5, "batch_size": 1, "scm_weight": 1.0,
               "ladd_weight": 0.5, "max_time_probability": 0.5, "seed": SEED, "save_every": 250, "preview_every": 50,
               "output_name": "sana_sprint_controlnet", "resume": False}
    return [
        *_loaders(),
        Node(10, "SanaSprintDataset", {"folder": TRAIN_FOLDER, "resolution": 1024, "buckets": True,
                                       "skip_bad_files": False, "caption_extension": ".txt"}),
        _precompute(HED_PROMPT, "hed"),
        Node(12, "SanaSprintDistillControlNet", distill),
        Node(13, "SanaSprintSaveControlNet", {"controlnet": (12, 0), "filename_prefix": "sana_sprint_controlnet",
                                              "destination": "controlnet", "weight_dtype": "bf16"}),
        Node(14, "SanaSprintLossGraph", {"loss": (12, 1)}),
        _prompt(HED_PROMPT),
        _empty_latent(),
        Node(9, "LoadImage", {"image": INPUT_IMAGE}),
        Node(15, "SanaSprintHEDPreprocessor", {"image": (9, 0), "mode": "hed", "detect_resolution": 1024,
                                               "thickness": 2, "hed_model": HED_NAME}),
        Node(16, "SanaSprintControlNetApply", {"positive": (4, 0), "controlnet": (12, 0), "vae": (3, 0),
                                               "image": (15, 0), "strength": 1.0, "width": 1024, "height": 1024}),
        _sampler(2, (5, 0), 1.0, positive=(16, 0)),
        *_tail("SanaSprint_trained_controlnet"),
    ]


WORKFLOWS["sana_sprint_train_controlnet"] = train_controlnet


# --- Personalise the Sprint model on your images: teacher LoRA, then a LoRA on the Sprint model -------
PERSONAL_FOLDER = "sana_sprint_personalize"  # your images + .txt captions, in ComfyUI's input folder
PERSONAL_PROMPT = "a photo of sks toy on a beach at sunset"  # use the token your captions use
SPECS.update({
    "SanaSprintPersonalize": Spec((
        _sock("teacher", "MODEL"), _sock("sprint", "MODEL"), _sock("cache", "SANA_TRAIN_CACHE"), In("rank", "INT"),
        In("teacher_steps", "INT"), In("teacher_learning_rate", "FLOAT"), In("teacher_rank", "INT"),
        In("steps", "INT"), In("learning_rate", "FLOAT"), In("batch_size", "INT"), In("scm_weight", "FLOAT"),
        In("ladd_weight", "FLOAT"), In("max_time_probability", "FLOAT"), In("seed", "INT", control=True),
        In("save_every", "INT"), In("preview_every", "INT"), In("output_name", "STRING"), In("resume", "BOOLEAN"),
        In("prior_images", "INT"), In("prior_weight", "FLOAT"), _sock("prior", "CONDITIONING", optional=True),
    ), (("SPRINT_MODEL", "MODEL"), ("SPRINT_LORA", "SANA_LORA"), ("TEACHER_LORA", "SANA_LORA"),
        ("LOSS_MAP", "LOSS_MAP"))),
})


def personalize() -> list[Node]:
    """Sprint DiT + teacher + Gemma + DC-AE -> your images -> cache -> Personalize (teacher LoRA, then the
    Sprint LoRA) -> save both LoRAs, loss graph, and the personalised Sprint model at 1 and 2 steps. Put
    images with .txt captions naming your subject (e.g. "a photo of sks toy") in input/sana_sprint_personalize
    first; for prior preservation link a SanaSprintTextEncode of the class ("a photo of a toy") to prior."""
    personal = {"teacher": (20, 0), "sprint": (1, 0), "cache": (11, 0), "rank": 32, "teacher_steps": 500,
                "teacher_learning_rate": 1e-4, "teacher_rank": 16, "steps": 600, "learning_rate": 1e-4,
                "batch_size": 1, "scm_weight": 1.0, "ladd_weight": 0.5, "max_time_probability": 0.5, "seed": SEED,
                "save_every": 100, "preview_every": 50, "output_name": "sana_sprint_personalize", "resume": False,
                "prior_images": 4, "prior_weight": 1.0}
    dataset = {"folder": PERSONAL_FOLDER, "resolution": 1024, "buckets": True, "skip_bad_files": False,
               "caption_extension": ".txt"}
    return [
        Node(1, "SanaSprintDiTLoader", {"model_name": DIT_NAME, "weight_dtype": "auto"}, "Load the Sprint model"),
        *_loaders()[1:],
        Node(20, "SanaSprintDiTLoader", {"model_name": TEACHER_NAME, "weight_dtype": "auto"}, "Load the teacher"),
        Node(10, "SanaSprintDataset", dataset),
        _precompute(PERSONAL_PROMPT, "none"),
        Node(12, "SanaSprintPersonalize", personal),
        Node(13, "SanaSprintSaveLoRA", {"lora": (12, 1), "filename_prefix": "sana_sprint_personal",
                                        "destination": "loras", "weight_dtype": "bf16", "file_format": "comfyui"}),
        Node(21, "SanaSprintSaveLoRA", {"lora": (12, 2), "filename_prefix": "sana_sprint_personal_teacher",
                                        "destination": "loras", "weight_dtype": "bf16", "file_format": "comfyui"}),
        Node(14, "SanaSprintLossGraph", {"loss": (12, 3)}),
        _prompt(PERSONAL_PROMPT),
        _empty_latent(),
        *_generate(6, 1),
        *_generate(16, 2),
    ]


WORKFLOWS["sana_sprint_personalize"] = personalize


# --- Template browser names ---------------------------------------------------------------------------
# ComfyUI 0.3.64's template browser (frontend 1.27.10) reads nothing but the file names of a pack's
# workflows/*.json: the name is a card's title, the same name with "-" and "_" as spaces its
# description, and a same-name .jpg its thumbnail. So each UI file is named by a human title (no
# characters that Windows or URLs refuse); the API twin in workflows/api/ keeps the short id.
TITLES = {
    "sana_sprint_1step_text_to_image": "SANA-Sprint text to image, 1 step",
    "sana_sprint_2step_text_to_image": "SANA-Sprint text to image, 2 steps",
    "sana_sprint_4step_text_to_image": "SANA-Sprint text to image, 4 steps",
    "sana_sprint_img2img": "SANA-Sprint image to image",
    "sana_sprint_live_text_to_image": "SANA-Sprint live text to image",
    "sana_sprint_controlnet_hed": "SANA-Sprint ControlNet from a photo (HED edges)",
    "sana_sprint_controlnet_scribble": "SANA-Sprint ControlNet from a drawing",
    "sana_sprint_live_scribble_controlnet": "SANA-Sprint live scribble pad with ControlNet",
    "sana_sprint_train_lora": "SANA-Sprint train a LoRA on your images",
    "sana_sprint_train_controlnet": "SANA-Sprint train a ControlNet on your images",
    "sana_sprint_personalize": "SANA-Sprint personalize the Sprint model on your images",
}


def ui_path(name: str) -> Path:
    """The UI file of workflow `name` (an API twin's stem): its title, in workflows/."""
    return HERE / f"{TITLES[name]}.json"


def thumbnail_path(name: str) -> Path:
    return HERE / f"{TITLES[name]}.jpg"


def render() -> dict[Path, str]:
    """Every file this script writes, path -> text."""
    files = {}
    for name, make in WORKFLOWS.items():
        nodes = make()
        files[ui_path(name)] = json.dumps(to_ui(nodes), indent=2) + "\n"
        files[API_DIR / f"{name}.json"] = json.dumps(to_api(nodes), indent=2) + "\n"
    return files


def main(argv: list[str]) -> int:
    files = render()
    if "--check" in argv:
        stale = [str(p) for p, text in files.items() if not p.is_file() or p.read_text() != text]
        for p in stale:
            print(f"out of date: {p} (run python workflows/build.py)")
        strays = [str(p) for folder in (HERE, API_DIR) for p in folder.glob("*.json") if p not in files]
        for p in strays:
            print(f"not written by build.py: {p} (ComfyUI would list it as a template; remove or add it here)")
        return 1 if stale or strays else 0
    API_DIR.mkdir(exist_ok=True)
    for path, text in files.items():
        path.write_text(text)
        print(f"wrote {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
