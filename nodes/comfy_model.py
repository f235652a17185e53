"""The SANA-Sprint DiT as a native ComfyUI MODEL, and ModelPatchers for Gemma-2 and DC-AE.

The DiT becomes the `diffusion_model` of a `BaseModel` subclass of type FLOW whose model sampling
has shift 1 and multiplier 1, so ComfyUI's sigma is flow time tau in [0, 1] and the DiT receives it
unchanged (comfy_api_notes.md section 6). State-dict keys are `diffusion_model.<DiT path>`, so core
LoRA keys (`diffusion_model.transformer_blocks.0.attn1.to_q`, `lora_unet_...`) map.

LATENT units: ComfyUI stores raw DC-AE latents in `{"samples": ...}`; `SanaLatentFormat.process_in`
multiplies by 0.41407 into diffusion units (what the DiT and `sana_sprint_core` work in) and
`process_out` divides back. Every node converts with these two methods and nothing else.

ControlNet: SanaSprintControlNetApply puts the ControlNet (a ManagedModule), the control latent
(diffusion units) and the strength into the conditioning dict under CONTROLNET_KEY,
CONTROL_LATENT_KEY and CONTROL_STRENGTH_KEY, and the ControlNet's ModelPatcher under the core key
"additional_models", so ComfyUI's samplers load it with the model. `extra_conds` turns them into
conds (the ControlNet as a CONDConstant, latent and strength per sample) and `_apply_model` runs the
DiT with `SanaControlNet.dit_kwargs`; SanaSprintSampler reads the same keys.
"""

from __future__ import annotations

import torch

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.supported_models_base

from ..sana_sprint_core.constants import (
    DCAE_LATENT_RGB_BIAS,
    DCAE_LATENT_RGB_FACTORS,
    DCAE_SCALE,
    DEFAULT_GUIDANCE,
    LATENT_CHANNELS,
)
from ..sana_sprint_core.dit import SanaSprintDiT

# Conditioning-dict keys: the text mask, and the distilled guidance scale (the key ComfyUI's own
# FluxGuidance node writes, so that node works on this model too).
MASK_KEY = "attention_mask"
GUIDANCE_KEY = "guidance"
# Conditioning-dict keys of SanaSprintControlNetApply (module docstring) and ComfyUI's own key for
# models to load beside the MODEL (comfy.sampler_helpers.get_additional_models).
CONTROLNET_KEY = "sana_controlnet"
CONTROL_LATENT_KEY = "sana_control_latent"
CONTROL_STRENGTH_KEY = "sana_control_strength"
ADDITIONAL_MODELS_KEY = "additional_models"
# Where ComfyUI's TorchCompileModel node (comfy_api.torch_helpers.set_torch_compile_wrapper) keeps
# its torch.compile arguments in a MODEL's model_options.
HOST_COMPILE_KEY = "torch_compile_kwargs"


class SanaLatentFormat(comfy.latent_formats.LatentFormat):
    """DC-AE f32c32 latents: 32 channels; model space = raw latent * 0.41407."""

    latent_channels = LATENT_CHANNELS
    latent_dimensions = 2

    def __init__(self):
        self.scale_factor = DCAE_SCALE
        # None until fitted against the real DC-AE (bench/fit_latent_rgb.py; see constants.py).
        self.latent_rgb_factors = DCAE_LATENT_RGB_FACTORS
        self.latent_rgb_factors_bias = DCAE_LATENT_RGB_BIAS


class SanaSprintModelConfig(comfy.supported_models_base.BASE):
    """Model config: FLOW sampling with sigma == tau (shift 1, multiplier 1), Sana latents."""

    unet_config = {}
    unet_extra_config = {}
    sampling_settings = {"shift": 1.0, "multiplier": 1.0}
    latent_format = SanaLatentFormat
    supported_inference_dtypes = [torch.bfloat16, torch.float16, torch.float32]


class SanaSprintBaseModel(comfy.model_base.BaseModel):
    """BaseModel whose diffusion_model is a SanaSprintDiT (velocity prediction at flow time tau)."""

    def __init__(self, dit: SanaSprintDiT, device=None, manual_cast_dtype=None):
        config = SanaSprintModelConfig({"disable_unet_model_creation": True})
        config.set_inference_dtype(dit.dtype, manual_cast_dtype)
        super().__init__(config, model_type=comfy.model_base.ModelType.FLOW, device=device)
        self.diffusion_model = dit

    def extra_conds(self, **kwargs):
        """Text embeddings, mask and guidance as CONDRegular (no repeat-padding of the text)."""
        out = {}
        cross_attn = kwargs.get("cross_attn")
        if cross_attn is not None:
            out["c_crossattn"] = comfy.conds.CONDRegular(cross_attn)
        mask = kwargs.get(MASK_KEY)
        if mask is not None:
            out[MASK_KEY] = comfy.conds.CONDRegular(mask)
        guidance = kwargs.get(GUIDANCE_KEY, DEFAULT_GUIDANCE)
        out[GUIDANCE_KEY] = comfy.conds.CONDRegular(torch.tensor([float(guidance)], dtype=torch.float32))
        controlnet = kwargs.get(CONTROLNET_KEY)
        if controlnet is not None:  # one ControlNet object for the whole batch; latent and strength per sample
            out[CONTROLNET_KEY] = comfy.conds.CONDConstant(controlnet)
            out[CONTROL_LATENT_KEY] = comfy.conds.CONDRegular(kwargs[CONTROL_LATENT_KEY])
            strength = torch.tensor([float(kwargs[CONTROL_STRENGTH_KEY])], dtype=torch.float32)
            out[CONTROL_STRENGTH_KEY] = comfy.conds.CONDRegular(strength)
        return out

    def _apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        """Denoised x0 = x - tau * v, with v from the DiT at flow state x and time tau.

        The timestep and guidance stay fp32 (only x and the text go to the model dtype); the mask
        keeps its integer dtype. A Sana ControlNet comes in through the extra conds (module
        docstring); ComfyUI's own `control` (CONTROL_NET models) and c_concat do not fit this model.
        """
        if control is not None:
            raise ValueError("ComfyUI ControlNets (CONTROL_NET from Load ControlNet Model) cannot steer SANA-Sprint; "
                             "use SanaSprintControlNetLoader and SanaSprintControlNetApply")
        if c_concat is not None:
            raise ValueError("the SANA-Sprint model takes no concat conditioning (c_concat)")
        if c_crossattn is None:
            raise ValueError("the SANA-Sprint model needs text conditioning from SanaSprintTextEncode")
        dtype = self.manual_cast_dtype or self.get_dtype()
        xc = self.model_sampling.calculate_input(t, x).to(dtype)
        tau = self.model_sampling.timestep(t).float()
        context = c_crossattn.to(device=xc.device, dtype=dtype)
        mask = kwargs.get(MASK_KEY)
        mask = None if mask is None else mask.to(device=xc.device, dtype=torch.long)
        guidance = kwargs.get(GUIDANCE_KEY)
        guidance = None if guidance is None else guidance.to(device=xc.device, dtype=torch.float32)
        control = self._control_kwargs(xc, tau, context, mask, kwargs)
        velocity = self.diffusion_model(xc, tau, context, mask, guidance, **control).float()
        return self.model_sampling.calculate_denoised(t, velocity, x)

    def _control_kwargs(self, x, tau, context, mask, conds: dict) -> dict:
        """The DiT keyword arguments of the ControlNet in the conds ({} without one)."""
        holder = conds.get(CONTROLNET_KEY)
        if holder is None:
            return {}
        latent = conds[CONTROL_LATENT_KEY].to(device=x.device)
        strength = conds[CONTROL_STRENGTH_KEY].to(device=x.device, dtype=torch.float32)
        return holder.payload.dit_kwargs(self.diffusion_model, x, tau, context, mask, latent, strength)


def control_of(conditioning_dict: dict):
    """(ControlNet ManagedModule, control latent, strength) of a conditioning dict, or None without one."""
    holder = conditioning_dict.get(CONTROLNET_KEY)
    if holder is None:
        return None
    return holder, conditioning_dict[CONTROL_LATENT_KEY], float(conditioning_dict[CONTROL_STRENGTH_KEY])


def dit_patcher(dit: SanaSprintDiT, manual_cast_dtype=None) -> comfy.model_patcher.ModelPatcher:
    """A MODEL: ModelPatcher around SanaSprintBaseModel, loaded on the torch device, offloaded as usual.

    manual_cast_dtype: compute dtype when the device cannot compute in the weight dtype (the layers
    must then be comfy.ops.manual_cast ones), else None.
    """
    offload = comfy.model_management.unet_offload_device()
    model = SanaSprintBaseModel(dit, device=offload, manual_cast_dtype=manual_cast_dtype)
    return comfy.model_patcher.ModelPatcher(
        model, load_device=comfy.model_management.get_torch_device(), offload_device=offload)


def sana_dit(model: comfy.model_patcher.ModelPatcher, node: str) -> SanaSprintDiT:
    """The SanaSprintDiT inside a MODEL, or a ValueError naming the node and what to connect."""
    inner = getattr(getattr(model, "model", None), "diffusion_model", None)
    if not isinstance(inner, SanaSprintDiT):
        raise ValueError(f"{node} needs a MODEL from SanaSprintDiTLoader, got a model of type "
                         f"{type(getattr(model, 'model', model)).__name__}")
    return inner


def host_compiled(model: comfy.model_patcher.ModelPatcher, dit: SanaSprintDiT) -> torch.nn.Module:
    """`dit`, or `torch.compile(dit, **kwargs)` when ComfyUI's TorchCompileModel was applied to `model`.

    That node compiles the diffusion model for BaseModel.apply_model (SamplerCustomAdvanced + our
    SAMPLER go through it); SanaSprintSampler calls the DiT itself, so it compiles with the node's
    arguments. One compiled wrapper per argument set is kept on the DiT (it shares the DiT's weights;
    torch.compile only traces on the first call).
    """
    kwargs = model.model_options.get(HOST_COMPILE_KEY)
    if not kwargs:
        return dit
    key = repr(sorted(kwargs.items()))
    cache = dit.__dict__.setdefault("_sana_host_compiled", {})  # a plain attribute, not a submodule
    if key not in cache:
        cache[key] = torch.compile(dit, **kwargs)
    return cache[key]


class _Holder(torch.nn.Module):
    """Container whose `device` attribute ModelPatcher may set (a transformers model's is read-only)."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.inner = module
        self.device = None


class ManagedModule:
    """A module ComfyUI places and offloads (Gemma-2 or DC-AE): `payload` plus its ModelPatcher.

    The patcher is kept here (ComfyUI holds only a weak reference to loaded models); call `load()`
    before each use so model management moves the weights to `patcher.load_device`.
    """

    def __init__(self, payload, module: torch.nn.Module, load_device, offload_device, kind: str):
        self.payload = payload
        self.kind = kind
        self.patcher = comfy.model_patcher.ModelPatcher(
            _Holder(module), load_device=load_device, offload_device=offload_device)

    def load(self, memory_required: int = 0):
        """Load onto the load device (freeing other models as needed); returns the payload."""
        comfy.model_management.load_models_gpu([self.patcher], memory_required=memory_required)
        return self.payload

    def __repr__(self) -> str:
        return f"ManagedModule({self.kind}: {self.payload!r})"
