"""Empty latent node: width, height, batch (or a 1024px aspect-ratio preset) -> LATENT (32 ch, /32)."""

from __future__ import annotations

import torch
from comfy_api.latest import io

import comfy.model_management as mm

from ..sana_sprint_core.constants import ASPECT_RATIO_PRESETS_1024, LATENT_CHANNELS, LATENT_DOWNSCALE, MAX_IMAGE_SIDE
from ..sana_sprint_core.sampler import check_image_size

CUSTOM = "custom"
PRESETS = {f"{name} ({w}x{h})": (w, h) for name, w, h in ASPECT_RATIO_PRESETS_1024}
MAX_SIDE = MAX_IMAGE_SIDE


def preset_size(aspect_ratio: str, width: int, height: int) -> tuple[int, int]:
    """(width, height) of a preset, or the given ones for "custom"; ValueError for unknown names."""
    if aspect_ratio == CUSTOM:
        return width, height
    if aspect_ratio not in PRESETS:
        raise ValueError(f"aspect_ratio must be 'custom' or one of {list(PRESETS)}, got {aspect_ratio!r}")
    return PRESETS[aspect_ratio]


class SanaSprintEmptyLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        side = dict(min=LATENT_DOWNSCALE, max=MAX_SIDE, step=LATENT_DOWNSCALE)
        return io.Schema(
            node_id="SanaSprintEmptyLatent",
            display_name="SANA-Sprint Empty Latent",
            category="SanaSprint/latent",
            description="An empty DC-AE latent (32 channels, 1/32 of the image size) for text-to-image. "
                        "Pick a 1024px aspect-ratio preset or 'custom' to use width and height.",
            inputs=[
                io.Int.Input("width", default=1024, **side, tooltip="Image width in pixels, a multiple of 32 "
                             "(used when aspect_ratio is 'custom')."),
                io.Int.Input("height", default=1024, **side, tooltip="Image height in pixels, a multiple of 32 "
                             "(used when aspect_ratio is 'custom')."),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Number of images."),
                io.Combo.Input("aspect_ratio", options=[CUSTOM, *PRESETS], default=CUSTOM,
                               tooltip="Size presets of about one megapixel (SANA-Sprint's 1024px models); "
                                       "'custom' uses width and height."),
            ],
            outputs=[io.Latent.Output(tooltip="Zeros of shape (batch, 32, height/32, width/32).")],
        )

    @classmethod
    def execute(cls, width, height, batch_size, aspect_ratio) -> io.NodeOutput:
        width, height = preset_size(aspect_ratio, width, height)
        check_image_size(width, height)
        shape = (batch_size, LATENT_CHANNELS, height // LATENT_DOWNSCALE, width // LATENT_DOWNSCALE)
        return io.NodeOutput({"samples": torch.zeros(shape, device=mm.intermediate_device())})
