"""Loader nodes: SANA-Sprint DiT -> MODEL, Gemma-2 -> SANA_TEXT_ENCODER, DC-AE -> SANA_VAE,
Sana ControlNet -> SANA_CONTROLNET.

Files come from ComfyUI's model folders (model_files.py); nothing is downloaded. Every model is
placed and offloaded by ComfyUI's model management through a ModelPatcher.
"""

from __future__ import annotations

import torch
from comfy_api.latest import io

import comfy.model_management as mm
import comfy.ops

from ..sana_sprint_core.controlnet import WIRINGS
from ..sana_sprint_core.controlnet_loading import load_controlnet
from ..sana_sprint_core.dcae import load_vae
from ..sana_sprint_core.dit_loading import load_dit
from ..sana_sprint_core.precision import STORAGE_DTYPES, is_fp8
from ..sana_sprint_core.precision import compute_dtype as precision_compute_dtype
from ..sana_sprint_core.text_encoder import load_text_encoder
from . import model_files
from .comfy_model import ManagedModule, SanaSprintModelConfig, dit_patcher

CATEGORY = "SanaSprint/loaders"
TextEncoderType = io.Custom("SANA_TEXT_ENCODER")
VaeType = io.Custom("SANA_VAE")
ControlNetType = io.Custom("SANA_CONTROLNET")
AUTO_WIRING = "auto"

_NAMED_DTYPES = {**STORAGE_DTYPES, "fp8_e4m3fn_fast": torch.float8_e4m3fn}
# Options are only ever appended (saved workflows keep their values).
DIT_DTYPES = ["auto", "bf16", "fp16", "fp32", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]
# fp16 is left out for Gemma-2 and DC-AE: both overflow fp16 activations; fp8 storage for Gemma-2 only.
TE_DTYPES = ["auto", "bf16", "fp32", "fp8_e4m3fn", "fp8_e5m2"]
VAE_DTYPES = ["auto", "bf16", "fp32"]
_TOOLTIPS = {
    "DiT": "auto: bf16 on GPUs that support it, else fp32 (ComfyUI's --bf16/--fp32 flags apply); on the CPU bf16 "
           "weights computed in fp32 (half the memory of fp32). fp8_*: weights stored in fp8 (half of bf16), "
           "computed in bf16 (fp32 on the CPU); fp8_e4m3fn_fast also multiplies in fp8 on GPUs that can (RTX 40xx).",
    "ControlNet": "as for the DiT: auto (bf16 on GPUs, bf16 weights computed in fp32 on the CPU), or fp8 storage.",
    "Gemma-2": "auto: bf16 on GPUs that support it, else fp32; on the CPU bf16 weights computed in fp32, or in bf16 "
               "on CPUs with native bf16. fp8_*: weights stored in fp8 (about 3.2 GB instead of 5.2), computed in "
               "bf16 (fp32 on CPUs without bf16); encoding runs once per prompt.",
    "DC-AE": "auto: bf16 on GPUs that support it, else fp32 (the CPU: fp32).",
}


def _dtype_input(options: list[str], what: str) -> io.Combo.Input:
    return io.Combo.Input("weight_dtype", options=options, default="auto",
                          tooltip=f"Dtype of the {what} weights. {_TOOLTIPS[what]}")


def _auto_or(name: str, auto: torch.dtype) -> torch.dtype:
    return auto if name == "auto" else _NAMED_DTYPES[name]


def _gpu_bf16_or_fp32(device) -> torch.dtype:
    """bf16 on a device with bf16 support, fp32 otherwise (Gemma-2 and DC-AE are bf16 models)."""
    return torch.bfloat16 if mm.should_use_bf16(device) else torch.float32


def _dit_dtypes(weight_dtype: str):
    """(device, weight dtype, manual-cast compute dtype or None, operations) as for the DiT: ComfyUI's
    own choice of compute dtype and layer classes (manual cast; fp8_ops for fp8_e4m3fn_fast on GPUs
    that multiply in fp8). auto on the CPU stores bf16 (ComfyUI's own auto would store fp32)."""
    device = mm.get_torch_device()
    supported = SanaSprintModelConfig.supported_inference_dtypes
    auto = torch.bfloat16 if device.type == "cpu" else mm.unet_dtype(device, supported_dtypes=supported)
    dtype = _auto_or(weight_dtype, auto)
    compute = mm.unet_manual_cast(dtype, device, supported)
    ops = comfy.ops.pick_operations(dtype, compute, load_device=device,
                                    fp8_optimizations=weight_dtype == "fp8_e4m3fn_fast")
    return device, dtype, compute, ops


def _text_encoder_dtypes(weight_dtype: str, device) -> tuple[torch.dtype, torch.dtype]:
    """(storage, compute) of Gemma-2: bf16 or fp32 on GPUs as ComfyUI would pick; on the CPU bf16 storage
    computed per precision.compute_dtype; fp8 storage computed in bf16 (fp32 where bf16 is missing)."""
    if device.type == "cpu":
        storage = _auto_or(weight_dtype, torch.bfloat16)
        return storage, precision_compute_dtype(storage, device)
    storage = _auto_or(weight_dtype, _gpu_bf16_or_fp32(device))
    return storage, _gpu_bf16_or_fp32(device) if is_fp8(storage) else storage


class SanaSprintDiTLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaSprintDiTLoader",
            display_name="Load SANA-Sprint DiT",
            category=CATEGORY,
            description="Loads a SANA-Sprint (or Sana) DiT from models/diffusion_models: a diffusers "
                        "transformer folder, a diffusers pipeline folder or a single .safetensors/.pth file. "
                        "Gives a native MODEL that ComfyUI loads, offloads and LoRA-patches.",
            inputs=[
                io.Combo.Input("model_name", options=model_files.list_models(model_files.DIT),
                               tooltip="File or folder in models/diffusion_models, e.g. "
                                       f"{model_files.DIT.example}."),
                _dtype_input(DIT_DTYPES, "DiT"),
            ],
            outputs=[io.Model.Output(tooltip="The SANA-Sprint DiT as a ComfyUI MODEL (flow model, sigma = tau).")],
        )

    @classmethod
    def validate_inputs(cls, model_name):
        return model_files.check_available(model_files.DIT, model_name)

    @classmethod
    def execute(cls, model_name, weight_dtype) -> io.NodeOutput:
        path = model_files.resolve(model_files.DIT, model_name)
        _, dtype, compute, ops = _dit_dtypes(weight_dtype)
        dit = load_dit(path, dtype=dtype, device=mm.unet_offload_device(), operations=ops, compute_dtype=compute)
        return io.NodeOutput(dit_patcher(dit, manual_cast_dtype=compute))


class SanaSprintTextEncoderLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaSprintTextEncoderLoader",
            display_name="Load SANA-Sprint Gemma-2 Text Encoder",
            category=CATEGORY,
            description="Loads Gemma-2-2B-IT (tokenizer + model) from models/text_encoders: a Hugging Face "
                        "folder or a single .safetensors file. ComfyUI places and offloads it like its own "
                        "text encoders.",
            inputs=[
                io.Combo.Input("text_encoder_name", options=model_files.list_models(model_files.TEXT_ENCODER),
                               tooltip="Folder or file in models/text_encoders, e.g. "
                                       f"{model_files.TEXT_ENCODER.example}."),
                _dtype_input(TE_DTYPES, "Gemma-2"),
            ],
            outputs=[TextEncoderType.Output(tooltip="Gemma-2 for SanaSprintTextEncode.")],
        )

    @classmethod
    def validate_inputs(cls, text_encoder_name):
        return model_files.check_available(model_files.TEXT_ENCODER, text_encoder_name)

    @classmethod
    def execute(cls, text_encoder_name, weight_dtype) -> io.NodeOutput:
        path = model_files.resolve(model_files.TEXT_ENCODER, text_encoder_name)
        device, offload = mm.text_encoder_device(), mm.text_encoder_offload_device()
        storage, compute = _text_encoder_dtypes(weight_dtype, device)
        encoder = load_text_encoder(path, dtype=storage, device=offload, compute_dtype=compute)
        return io.NodeOutput(ManagedModule(encoder, encoder.model, device, offload, "gemma2"))


class SanaSprintVAELoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaSprintVAELoader",
            display_name="Load SANA-Sprint DC-AE",
            category=CATEGORY,
            description="Loads the DC-AE f32c32 autoencoder from models/vae: a diffusers folder, a "
                        ".safetensors file or an original mit-han-lab checkpoint.",
            inputs=[
                io.Combo.Input("vae_name", options=model_files.list_models(model_files.VAE),
                               tooltip=f"Folder or file in models/vae, e.g. {model_files.VAE.example}."),
                _dtype_input(VAE_DTYPES, "DC-AE"),
            ],
            outputs=[VaeType.Output(tooltip="DC-AE for SanaSprintVAEDecode / SanaSprintVAEEncode.")],
        )

    @classmethod
    def validate_inputs(cls, vae_name):
        return model_files.check_available(model_files.VAE, vae_name)

    @classmethod
    def execute(cls, vae_name, weight_dtype) -> io.NodeOutput:
        path = model_files.resolve(model_files.VAE, vae_name)
        device, offload = mm.vae_device(), mm.vae_offload_device()
        dtype = _auto_or(weight_dtype, _gpu_bf16_or_fp32(device))
        vae = load_vae(path, dtype=dtype, device=offload)
        return io.NodeOutput(ManagedModule(vae, vae, device, offload, "dcae"))


class SanaSprintControlNetLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaSprintControlNetLoader",
            display_name="Load SANA-Sprint ControlNet",
            category=CATEGORY,
            description="Loads a Sana ControlNet from models/controlnet: NVlabs' released Sana HED ControlNet "
                        "(.pth; its base model inside is not loaded), a diffusers SanaControlNetModel folder, or "
                        "a ControlNet distilled for SANA-Sprint by this pack's trainer (.safetensors). ComfyUI "
                        "loads and offloads it together with the MODEL.",
            inputs=[
                io.Combo.Input("controlnet_name", options=model_files.list_models(model_files.CONTROLNET),
                               tooltip="File or folder in models/controlnet, e.g. "
                                       f"{model_files.CONTROLNET.example}."),
                _dtype_input(DIT_DTYPES, "ControlNet"),
                io.Combo.Input("wiring", options=[AUTO_WIRING, *WIRINGS], default=AUTO_WIRING,
                               tooltip="Where the control stream joins the DiT. auto: as the file was trained "
                                       "(NVlabs .pth and our files: nvlabs; diffusers folders: diffusers)."),
            ],
            outputs=[ControlNetType.Output(tooltip="The ControlNet for SanaSprintControlNetApply.")],
        )

    @classmethod
    def validate_inputs(cls, controlnet_name):
        return model_files.check_available(model_files.CONTROLNET, controlnet_name)

    @classmethod
    def execute(cls, controlnet_name, weight_dtype, wiring) -> io.NodeOutput:
        path = model_files.resolve(model_files.CONTROLNET, controlnet_name)
        _, dtype, compute, ops = _dit_dtypes(weight_dtype)
        controlnet = load_controlnet(path, dtype=dtype, device=mm.unet_offload_device(), operations=ops,
                                     wiring=None if wiring == AUTO_WIRING else wiring, compute_dtype=compute)
        return io.NodeOutput(controlnet_module(controlnet))


def controlnet_module(controlnet) -> ManagedModule:
    """A SANA_CONTROLNET: the ControlNet (on the offload device) placed by model management like the DiT."""
    return ManagedModule(controlnet, controlnet, mm.get_torch_device(), mm.unet_offload_device(), "sana_controlnet")
