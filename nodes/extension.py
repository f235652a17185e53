"""The ComfyExtension that lists every node of the pack (ComfyUI calls `comfy_entrypoint`)."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .conditioning import SanaSprintTextEncode
from .controlnet import SanaSprintControlNetApply, SanaSprintHEDPreprocessor
from .latents import SanaSprintEmptyLatent
from .live import SanaSprintLivePreview, SanaSprintScribblePad
from .loaders import SanaSprintControlNetLoader, SanaSprintDiTLoader, SanaSprintTextEncoderLoader, SanaSprintVAELoader
from .sampling import SanaSprintSampler, SanaSprintSCMSampler, SanaSprintSigmas
from .train_controlnet import SanaSprintDistillControlNet
from .train_data import SanaSprintDataset, SanaSprintPrecompute
from .train_distill import SanaSprintDistill
from .train_personalize import SanaSprintPersonalize
from .train_outputs import (
    SanaSprintLoraLoader, SanaSprintLossGraph, SanaSprintSaveControlNet, SanaSprintSaveLoRA, SanaSprintSaveStudent,
)
from .vae import SanaSprintVAEDecode, SanaSprintVAEEncode

NODES: list[type[io.ComfyNode]] = [
    SanaSprintDiTLoader, SanaSprintTextEncoderLoader, SanaSprintVAELoader, SanaSprintTextEncode,
    SanaSprintEmptyLatent, SanaSprintSampler, SanaSprintSCMSampler, SanaSprintSigmas,
    SanaSprintVAEDecode, SanaSprintVAEEncode, SanaSprintLivePreview, SanaSprintScribblePad,
    SanaSprintControlNetLoader, SanaSprintHEDPreprocessor, SanaSprintControlNetApply,
    # training inside ComfyUI
    SanaSprintDataset, SanaSprintPrecompute, SanaSprintDistill, SanaSprintLossGraph, SanaSprintSaveLoRA,
    SanaSprintSaveStudent, SanaSprintLoraLoader, SanaSprintDistillControlNet, SanaSprintSaveControlNet,
    SanaSprintPersonalize,
]


class SanaSprintExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> SanaSprintExtension:
    return SanaSprintExtension()
