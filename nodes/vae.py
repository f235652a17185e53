"""DC-AE nodes: LATENT -> IMAGE (optionally tiled) and IMAGE -> LATENT for img2img.

Layouts: ComfyUI IMAGE is (B, H, W, 3) in [0, 1]; the core takes (B, 3, H, W) in [0, 1]. LATENT
samples are raw DC-AE latents (see comfy_model.py); the core works in diffusion units, converted
with SanaLatentFormat.process_in / process_out.
"""

from __future__ import annotations

from comfy_api.latest import io

import comfy.model_management as mm

from ..sana_sprint_core.constants import DCAE_BYTES_PER_PIXEL_PER_DTYPE_BYTE, LATENT_DOWNSCALE
from ..sana_sprint_core.dcae import decode, encode
from .comfy_model import SanaLatentFormat
from .loaders import VaeType
from .timing import timed

CATEGORY = "SanaSprint/vae"
TILING = {"auto": "auto", "off": False, "on": True}


def _tiled_input() -> io.Combo.Input:
    return io.Combo.Input("tiled", options=list(TILING), default="auto",
                          tooltip="on: work in overlapping tiles (less memory, slight seams possible); "
                                  "off: whole image at once; auto: whole image, tiles after an out-of-memory error.")


def load_for_pixels(vae, pixels: int):
    """Load the DC-AE with room for the activations of `pixels` output pixels; returns the model."""
    dtype_bytes = next(vae.payload.parameters()).element_size()
    return vae.load(memory_required=pixels * dtype_bytes * DCAE_BYTES_PER_PIXEL_PER_DTYPE_BYTE)


class SanaSprintVAEDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaSprintVAEDecode",
            display_name="SANA-Sprint VAE Decode",
            category=CATEGORY,
            description="Decodes a SANA-Sprint latent into images with the DC-AE (32x upscale).",
            inputs=[
                io.Latent.Input("samples", tooltip="Latent from SanaSprintSampler (or SamplerCustomAdvanced)."),
                VaeType.Input("vae", tooltip="DC-AE from SanaSprintVAELoader."),
                _tiled_input(),
            ],
            outputs=[io.Image.Output(tooltip="Images (B, H, W, 3) in [0, 1].")],
        )

    @classmethod
    def execute(cls, samples, vae, tiled) -> io.NodeOutput:
        latents = samples["samples"]
        with timed("decode"):
            pixels = latents.shape[0] * latents.shape[-2] * latents.shape[-1] * LATENT_DOWNSCALE**2
            model = load_for_pixels(vae, pixels)
            images = decode(model, SanaLatentFormat().process_in(latents), tiled=TILING[tiled])
            images = images.movedim(1, -1).to(mm.intermediate_device())  # (B, H, W, 3)
        return io.NodeOutput(images)


class SanaSprintVAEEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaSprintVAEEncode",
            display_name="SANA-Sprint VAE Encode",
            category=CATEGORY,
            description="Encodes images into a SANA-Sprint latent with the DC-AE, for img2img "
                        "(SanaSprintSampler with denoise < 1). Width and height must be multiples of 32.",
            inputs=[
                io.Image.Input("pixels", tooltip="Images (B, H, W, 3) in [0, 1]; an alpha channel is dropped."),
                VaeType.Input("vae", tooltip="DC-AE from SanaSprintVAELoader."),
                _tiled_input(),
            ],
            outputs=[io.Latent.Output(tooltip="Latent (B, 32, H/32, W/32).")],
        )

    @classmethod
    def execute(cls, pixels, vae, tiled) -> io.NodeOutput:
        model = load_for_pixels(vae, pixels.shape[0] * pixels.shape[1] * pixels.shape[2])
        latents = encode(model, pixels[..., :3].movedim(-1, 1), tiled=TILING[tiled])  # (B, 3, H, W) in
        return io.NodeOutput({"samples": SanaLatentFormat().process_out(latents).to(mm.intermediate_device())})
