"""ControlNet nodes: scribble maps (HED or a drawing) and applying a Sana ControlNet to a conditioning.

SanaSprintHEDPreprocessor turns an IMAGE into the white-on-black scribble a Sana HED ControlNet was
trained on (NVlabs `get_scribble_map`, reference 5.3), at the detect size. Its `mode` decides where
the lines come from, so no separate "scribble from drawing" node is needed:
  hed               HED edges of a photo (needs ControlNetHED.pth), thinned and thresholded;
  drawing           a drawing with light strokes on a dark ground (SanaSprintScribblePad's output);
  drawing_inverted  dark strokes on a light ground (pen on paper, NVlabs' demo canvas).
HED is not run on drawings: it would outline both sides of every stroke.

SanaSprintControlNetApply resizes the control image to the generation size (NVlabs
`transform_control_signal`), encodes it once with the DC-AE, and returns COPIES of the conditioning
dicts carrying the ControlNet, the control latent and the strength (keys in comfy_model.py).
"""

from __future__ import annotations

import os

import torch
from comfy_api.latest import io, ui

import comfy.model_management as mm

from ..sana_sprint_core.constants import (
    HED_DEFAULT_DETECT_RESOLUTION, HED_FILE_NAME, HED_SIZE_MULTIPLE, LATENT_DOWNSCALE, SCRIBBLE_DEFAULT_THICKNESS,
    SCRIBBLE_PAD_DEFAULT_SIZE, SCRIBBLE_PAD_MAX_SIZE, SCRIBBLE_TRAIN_THICKNESS_MAX,
)
from ..sana_sprint_core.controlnet import encode_control_image
from ..sana_sprint_core.hed import (
    apply_thickness, detect_size, hed_edges, load_hed, resize, scribble_from_drawing, scribble_from_edges,
    to_control_image,
)
from ..sana_sprint_core.sampler import check_image_size
from . import model_files
from .comfy_model import (
    ADDITIONAL_MODELS_KEY, CONTROL_LATENT_KEY, CONTROL_STRENGTH_KEY, CONTROLNET_KEY, ManagedModule,
)
from .float_inputs import check_floats
from .loaders import ControlNetType, VaeType
from .vae import load_for_pixels

CATEGORY = "SanaSprint/controlnet"
MODES = ("hed", "drawing", "drawing_inverted")
MAX_STRENGTH = 2.0
# The loaded HED network of the last file used: {(path, mtime_ns, size): ManagedModule}.
_HED_CACHE: dict[tuple, ManagedModule] = {}


def hed_options() -> list[str]:
    """The annotators listing, plus the default file name so that a workflow naming it validates
    (its absence is then reported by validate_inputs with the download hint)."""
    return sorted(set(model_files.list_models(model_files.HED)) | {HED_FILE_NAME})


def hed_module(name: str) -> ManagedModule:
    """The HED network of annotators/<name> under model management, read once per file version
    (`.load()` places it and returns the network)."""
    path = model_files.resolve(model_files.HED, name)
    stat = os.stat(path)
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _HED_CACHE:
        offload = mm.unet_offload_device()
        net = load_hed(path, device=offload)
        _HED_CACHE.clear()
        _HED_CACHE[key] = ManagedModule(net, net, mm.get_torch_device(), offload, "hed")
    return _HED_CACHE[key]


def scribble_map(pixels: torch.Tensor, mode: str, detect_resolution: int, thickness: int,
                 hed_model: str | None) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> binary scribble (B, 1, h, w) at the detect size (module docstring)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "hed":
        net = hed_module(hed_model or HED_FILE_NAME).load()
        device = next(net.parameters()).device
        return scribble_from_edges(hed_edges(net, pixels.to(device), detect_resolution), thickness)
    drawing = resize(pixels, detect_size(pixels.shape[-2], pixels.shape[-1], detect_resolution))
    return apply_thickness(scribble_from_drawing(drawing, invert=mode == "drawing_inverted"), thickness)


class SanaSprintHEDPreprocessor(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaSprintHEDPreprocessor",
            display_name="SANA-Sprint HED Scribble",
            category=CATEGORY,
            description="Makes the control image of a Sana HED ControlNet: white scribble lines on black, "
                        "from HED edges of a photo (mode 'hed', NVlabs' get_scribble_map) or from a drawing "
                        "(modes 'drawing' / 'drawing_inverted', no HED). Shows the map as a preview.",
            inputs=[
                io.Image.Input("image", tooltip="A photo (mode hed) or a drawing (modes drawing*), [0, 1] RGB."),
                io.Combo.Input("mode", options=list(MODES), default="hed",
                               tooltip="hed: HED edges of a photo. drawing: light strokes on dark (the scribble "
                                       "pad). drawing_inverted: dark strokes on light (pen on paper)."),
                io.Int.Input("detect_resolution", default=HED_DEFAULT_DETECT_RESOLUTION, min=HED_SIZE_MULTIPLE,
                             max=SCRIBBLE_PAD_MAX_SIZE, step=HED_SIZE_MULTIPLE,
                             tooltip="Short side of the map in pixels (sides rounded to multiples of 64). The "
                                     "generation size is a good value (NVlabs uses it)."),
                io.Int.Input("thickness", default=SCRIBBLE_DEFAULT_THICKNESS, min=0, max=SCRIBBLE_TRAIN_THICKNESS_MAX,
                             tooltip="Line width: 0 thins, 1 and 2 keep, t > 2 dilates by t // 2 pixels "
                                     "(NVlabs' demo default 2; training used 0..24)."),
                io.Combo.Input("hed_model", options=hed_options(), default=HED_FILE_NAME, optional=True,
                               tooltip=f"HED weights in models/annotators (or comfyui_controlnet_aux's download "
                                       f"folder): {HED_FILE_NAME} of lllyasviel/Annotators. Mode hed only."),
            ],
            outputs=[io.Image.Output(tooltip="The scribble (B, h, w, 3): 1 on lines, 0 elsewhere.")],
        )

    @classmethod
    def validate_inputs(cls, mode, hed_model=None):
        if mode != "hed":
            return True
        return model_files.check_available(model_files.HED, hed_model or HED_FILE_NAME)

    @classmethod
    def execute(cls, image, mode, detect_resolution, thickness, hed_model=None) -> io.NodeOutput:
        pixels = image[..., :3].movedim(-1, 1).float().clamp(0, 1)  # (B, 3, H, W)
        scribble = scribble_map(pixels, mode, detect_resolution, thickness, hed_model)
        out = scribble.expand(-1, 3, -1, -1).movedim(1, -1).contiguous().to(mm.intermediate_device())
        return io.NodeOutput(out, ui=ui.PreviewImage(out, cls=cls))


def _size_input(name: str) -> io.Int.Input:
    return io.Int.Input(name, default=SCRIBBLE_PAD_DEFAULT_SIZE, min=LATENT_DOWNSCALE, max=SCRIBBLE_PAD_MAX_SIZE,
                        step=LATENT_DOWNSCALE,
                        tooltip=f"Generation {name} in pixels: the control image is resized to it and must equal "
                                "the latent's size (a multiple of 32).")


def with_control(conditioning: list, controlnet: ManagedModule, latent: torch.Tensor, strength: float) -> list:
    """Copies of the conditioning entries with the control added; the inputs are left untouched."""
    out = []
    for embeds, extra in conditioning:
        if CONTROLNET_KEY in extra:
            raise ValueError("this conditioning already carries a Sana ControlNet; stacking several ControlNets "
                             "is not supported (apply one SanaSprintControlNetApply per prompt)")
        models = [*extra.get(ADDITIONAL_MODELS_KEY, []), controlnet.patcher]
        out.append([embeds, {**extra, CONTROLNET_KEY: controlnet, CONTROL_LATENT_KEY: latent,
                             CONTROL_STRENGTH_KEY: float(strength), ADDITIONAL_MODELS_KEY: models}])
    return out


class SanaSprintControlNetApply(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaSprintControlNetApply",
            display_name="Apply SANA-Sprint ControlNet",
            category=CATEGORY,
            description="Adds a Sana ControlNet to a prompt: the control image (e.g. from SanaSprintHEDPreprocessor) "
                        "is resized to the generation size and encoded once with the DC-AE. SanaSprintSampler and "
                        "SamplerCustomAdvanced (with SanaSprintSCMSampler) both follow it.",
            inputs=[
                io.Conditioning.Input("positive", tooltip="Prompt from SanaSprintTextEncode."),
                ControlNetType.Input("controlnet", tooltip="ControlNet from SanaSprintControlNetLoader."),
                VaeType.Input("vae", tooltip="DC-AE from SanaSprintVAELoader (encodes the control image)."),
                io.Image.Input("image", tooltip="Control image in [0, 1]; for a HED ControlNet white lines on black."),
                io.Float.Input("strength", default=1.0, min=0.0, max=MAX_STRENGTH, step=0.01,
                               tooltip="Scale of the ControlNet's residuals (1 = as trained, 0 = no control)."),
                _size_input("width"),
                _size_input("height"),
            ],
            outputs=[io.Conditioning.Output(tooltip="The prompt with the ControlNet, control latent and strength.")],
        )

    @classmethod
    def validate_inputs(cls, strength=None):
        return check_floats(cls, strength=strength)

    @classmethod
    def execute(cls, positive, controlnet, vae, image, strength, width, height) -> io.NodeOutput:
        check_image_size(width, height)
        control = to_control_image(image[..., :3].movedim(-1, 1).float().clamp(0, 1), width, height)
        model = load_for_pixels(vae, control.shape[0] * height * width)
        latent = encode_control_image(model, control.to(next(model.parameters()).device))
        return io.NodeOutput(with_control(positive, controlnet, latent.to(mm.intermediate_device()), strength))

