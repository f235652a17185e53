"""Outputs of a training run: the loss graph, Save LoRA, Save student, Save ControlNet, and the LoRA loader.

Files go to ComfyUI's model folders (loras, diffusion_models, controlnet) or its output folder as
`<prefix>_<NNNNN>.safetensors` with the next free counter: an existing file is never overwritten.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from comfy_api.latest import io, ui

import comfy.model_management as mm
import folder_paths

from ..sana_sprint_core.checkpoint_io import read_state_dict_with_info, save_safetensors_atomic
from ..sana_sprint_core.controlnet_loading import save_controlnet
from ..sana_sprint_core.dit_loading import CONFIG_METADATA_KEY
from ..trainers.controlnet import controlnet_like
from ..trainers.export import LORA_FILE_FORMATS, META_PREFIX, diffusers_lora
from ..trainers.logs import draw_losses
from .comfy_model import sana_dit
from .float_inputs import check_floats
from .loaders import ControlNetType
from .train_data import CATEGORY
from .train_distill import DENOISE_COLUMNS, LOSS_COLUMNS, LoraType
from .train_models import TRAINING_METADATA_KEY, apply_lora

SAVE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
SUFFIX = ".safetensors"


def unique_file(folder: str | os.PathLike, prefix: str) -> Path:
    """Reserve `<folder>/<prefix>_<NNNNN>.safetensors` with the next free counter (created empty, exclusively).

    `prefix` may name subfolders ("sana_sprint/my_style"); it must stay inside `folder`.
    """
    rel = Path(prefix.strip())
    if not rel.name or rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"filename_prefix {prefix!r} must be a relative name inside the target folder, "
                         "e.g. 'my_style' or 'sana_sprint/my_style'")
    target = Path(folder) / rel.parent
    target.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(rf"^{re.escape(rel.name)}_(\d{{5}}){re.escape(SUFFIX)}$")
    counter = max([int(m.group(1)) for p in target.iterdir() if (m := pattern.match(p.name))], default=0) + 1
    while True:
        path = target / f"{rel.name}_{counter:05d}{SUFFIX}"
        try:
            with open(path, "x"):
                return path
        except FileExistsError:
            counter += 1


def write_new(folder: str | os.PathLike, prefix: str, write) -> Path:
    """`write(path)` into a freshly reserved unique file; the reservation is removed if writing fails."""
    path = unique_file(folder, prefix)
    try:
        write(path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def _destination(kind: str, destination: str) -> str:
    """The output folder, or the model folder named `kind` (models/diffusion_models rather than the legacy
    models/unet that ComfyUI lists first), else the first folder of that kind."""
    if destination == "output":
        return folder_paths.get_output_directory()
    roots = folder_paths.get_folder_paths(kind)
    return next((r for r in roots if Path(r).name == kind), roots[0])


def _saved(path: Path) -> io.NodeOutput:
    return io.NodeOutput(str(path), ui=ui.PreviewText(f"saved {path}"))


class SanaSprintLossGraph(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaSprintLossGraph",
            display_name="SANA-Sprint Loss Graph",
            category=CATEGORY,
            description="Draws the losses of a SanaSprintDistill or SanaSprintDistillControlNet run (sCM, "
                        "adversarial, discriminator, or the denoising loss; raw points and a smoothed line per panel) "
                        "as an image, shown on the node.",
            inputs=[io.LossMap.Input("loss", tooltip="The loss map from SanaSprintDistill or "
                                                     "SanaSprintDistillControlNet.")],
            outputs=[io.Image.Output(tooltip="The plot (1, H, W, 3).")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, loss) -> io.NodeOutput:
        if "step" not in loss or "phase" not in loss:
            raise ValueError("SanaSprintLossGraph needs the loss map of SanaSprintDistill (with 'step' and 'phase')")
        columns = [k for k in (*LOSS_COLUMNS, *DENOISE_COLUMNS) if k in loss]
        rows = [{"step": s, **{k: loss[k][i] for k in columns}} for i, s in enumerate(loss["step"])]
        image = draw_losses(rows)
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        tensor = pixels.reshape(image.height, image.width, 3)[None].float() / 255.0  # (1, H, W, 3)
        return io.NodeOutput(tensor, ui=ui.PreviewImage(tensor, cls=cls))


class SanaSprintSaveLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaSprintSaveLoRA",
            display_name="SANA-Sprint Save LoRA",
            category=CATEGORY,
            description="Saves the LoRA of SanaSprintDistill to models/loras (or output/) as <prefix>_00001.safetensors, "
                        "the next free number, with its metadata (base model hash, rank, alpha, steps, config). "
                        "Load it with SanaSprintLoraLoader.",
            inputs=[
                LoraType.Input("lora", tooltip="The LoRA from SanaSprintDistill."),
                io.String.Input("filename_prefix", default="sana_sprint_lora",
                                tooltip="File name before the counter; may include subfolders, e.g. 'sprint/my_style'."),
                io.Combo.Input("destination", options=["loras", "output"], default="loras",
                               tooltip="loras: ComfyUI's models/loras (listed by the LoRA loaders); output: the output folder."),
                io.Combo.Input("weight_dtype", options=list(SAVE_DTYPES), default="bf16",
                               tooltip="Precision of the saved tensors (training keeps fp32)."),
                io.Combo.Input("file_format", options=list(LORA_FILE_FORMATS), default="comfyui",
                               tooltip="comfyui: this pack's and ComfyUI's LoRA keys. diffusers: PEFT keys with the "
                                       "alpha in the metadata, for SanaSprintPipeline.load_lora_weights (on the "
                                       "teacher with a zero guidance embedder); SanaSprintLoraLoader reads both."),
            ],
            outputs=[io.String.Output(tooltip="The path of the written file.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, lora, filename_prefix, destination, weight_dtype, file_format="comfyui") -> io.NodeOutput:
        if lora is None:
            raise ValueError("SanaSprintSaveLoRA: no LoRA (SanaSprintDistill ran in full mode); save the student "
                             "with SanaSprintSaveStudent")
        dtype = SAVE_DTYPES[weight_dtype]
        out = lora if file_format == "comfyui" else diffusers_lora(lora)
        path = write_new(_destination("loras", destination), filename_prefix, lambda p: out.save(p, dtype))
        return _saved(path)


class SanaSprintSaveStudent(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaSprintSaveStudent",
            display_name="SANA-Sprint Save Student",
            category=CATEGORY,
            description="Saves a SANA-Sprint MODEL with its LoRAs merged (e.g. the student of SanaSprintDistill) as "
                        "one .safetensors in models/diffusion_models (or output/), with its config and training "
                        "metadata, so SanaSprintDiTLoader loads it directly.",
            inputs=[
                io.Model.Input("model", tooltip="A MODEL from SanaSprintDistill, SanaSprintLoraLoader or SanaSprintDiTLoader."),
                io.String.Input("filename_prefix", default="sana_sprint_student",
                                tooltip="File name before the counter; may include subfolders."),
                io.Combo.Input("destination", options=["diffusion_models", "output"], default="diffusion_models",
                               tooltip="diffusion_models: ComfyUI's models/diffusion_models (listed by "
                                       "SanaSprintDiTLoader); output: the output folder."),
                io.Combo.Input("weight_dtype", options=list(SAVE_DTYPES), default="bf16",
                               tooltip="Precision of the saved weights."),
            ],
            outputs=[io.String.Output(tooltip="The path of the written file.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, filename_prefix, destination, weight_dtype) -> io.NodeOutput:
        dit = sana_dit(model, "SanaSprintSaveStudent")
        mm.load_models_gpu([model], force_patch_weights=True, force_full_load=True)  # patches merged into weights
        state = {k: v.detach().to("cpu", SAVE_DTYPES[weight_dtype]) for k, v in dit.state_dict().items()}
        meta = {**model.model_options.get(TRAINING_METADATA_KEY, {}), f"{META_PREFIX}kind": "student",
                CONFIG_METADATA_KEY: json.dumps(dit.config.to_dict())}
        path = write_new(_destination("diffusion_models", destination), filename_prefix,
                         lambda p: save_safetensors_atomic(state, p, metadata=meta))
        return _saved(path)


class SanaSprintSaveControlNet(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaSprintSaveControlNet",
            display_name="SANA-Sprint Save ControlNet",
            category=CATEGORY,
            description="Saves a SANA ControlNet (e.g. the one SanaSprintDistillControlNet trained) as one "
                        ".safetensors in models/controlnet (or output/), with its architecture and training metadata "
                        "(base model hash, steps, config), so SanaSprintControlNetLoader loads it directly.",
            inputs=[
                ControlNetType.Input("controlnet", tooltip="A ControlNet from SanaSprintDistillControlNet or "
                                                           "SanaSprintControlNetLoader."),
                io.String.Input("filename_prefix", default="sana_sprint_controlnet",
                                tooltip="File name before the counter; may include subfolders."),
                io.Combo.Input("destination", options=["controlnet", "output"], default="controlnet",
                               tooltip="controlnet: ComfyUI's models/controlnet (listed by "
                                       "SanaSprintControlNetLoader); output: the output folder."),
                io.Combo.Input("weight_dtype", options=list(SAVE_DTYPES), default="bf16",
                               tooltip="Precision of the saved weights."),
            ],
            outputs=[io.String.Output(tooltip="The path of the written file.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, controlnet, filename_prefix, destination, weight_dtype) -> io.NodeOutput:
        net, dtype = controlnet.payload, SAVE_DTYPES[weight_dtype]
        copy = controlnet_like(net, {k: v.detach().to("cpu", dtype) for k, v in net.state_dict().items()}, dtype)
        meta = {**controlnet.patcher.model_options.get(TRAINING_METADATA_KEY, {}), f"{META_PREFIX}kind": "controlnet"}
        path = write_new(_destination("controlnet", destination), filename_prefix,
                         lambda p: save_controlnet(copy, p, metadata=meta))
        return _saved(path)


class SanaSprintLoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaSprintLoraLoader",
            display_name="SANA-Sprint Load LoRA",
            category="SanaSprint/loaders",
            description="Applies a LoRA from models/loras to a SANA-Sprint MODEL at a strength, through ComfyUI's "
                        "LoRA patching. Reads diffusers/PEFT (alpha from the metadata), ComfyUI, kohya, OneTrainer "
                        "and LyCORIS LoRA keys, in SANA or NVlabs module names (fused qkv split). A LoRA distilled "
                        "by SanaSprintDistill goes on its teacher (a zero guidance embedder is added first); a LoRA "
                        "for another base or with keys that fit nothing is refused by name, never applied in part.",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL to apply the LoRA to (for a distilled LoRA: its teacher)."),
                io.Combo.Input("lora_name", options=folder_paths.get_filename_list("loras"),
                               tooltip="LoRA file in models/loras."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="How strongly the LoRA changes the model (1: as trained; 0: not at all)."),
            ],
            outputs=[io.Model.Output(tooltip="The MODEL with the LoRA applied; the input MODEL is unchanged.")],
        )

    @classmethod
    def validate_inputs(cls, lora_name, strength=None):
        if lora_name is not None:  # None: linked, checked when it runs
            try:
                lora_path(lora_name)
            except (ValueError, FileNotFoundError) as e:
                return str(e)
        return check_floats(cls, strength=strength)

    @classmethod
    def execute(cls, model, lora_name, strength) -> io.NodeOutput:
        path = lora_path(lora_name)
        tensors, info = read_state_dict_with_info(path)
        meta = {k: v for k, v in info.metadata.items() if k.startswith(META_PREFIX)}
        return io.NodeOutput(apply_lora(model, tensors, strength, f"LoRA {lora_name!r}", meta, info.metadata))


def lora_path(name: str) -> Path:
    """The file of a `loras` entry; ValueError for names leading outside the folder, else FileNotFoundError."""
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"LoRA name {name!r} points outside the 'loras' folder")
    roots = folder_paths.get_folder_paths("loras")
    for root in roots:
        if (Path(root) / rel).is_file():
            return Path(root) / rel
    raise FileNotFoundError(f"LoRA {name!r} not found in ComfyUI's 'loras' folder ({', '.join(roots)})")
