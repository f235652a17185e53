"""Text to image end to end: Gemma-2 prompt encoding, the Sprint sampler, DC-AE decoding."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .acceleration import fast_cpu_linears
from .constants import DEFAULT_GUIDANCE, LATENT_DOWNSCALE, MAX_TEXT_TOKENS, T_INTERMEDIATE_2STEP, T_MAX
from .dcae import DCAE, decode, load_vae
from .dit import SanaSprintDiT
from .dit_loading import load_dit
from .model_files import find_model, missing_models_message
from .offload import OFFLOAD_MODES, Offloader
from .precision import plan
from .sampler import sample
from .text_cache import PromptCache
from .text_encoder import TextEncoder, encode_prompt, load_text_encoder


@dataclass(frozen=True)
class PromptOptions:
    """How prompts become embeddings (text_encoder.encode_prompt); defaults follow NVlabs."""

    chi: bool = True
    max_tokens: int = MAX_TEXT_TOKENS
    quote_style: str = "nvlabs"
    lowercase: bool = False


class _ExecutionDeviceTextEncoder(TextEncoder):
    """The same tokenizer and model, reporting the execution device while the model may sit on the CPU
    (offload modes): encode_prompt puts the token ids there and keys the cache by it."""

    def __init__(self, base: TextEncoder, device: torch.device):
        super().__init__(base.tokenizer, base.model, base.identity)
        self._device = device

    @property
    def device(self) -> torch.device:
        return self._device


class SprintPipeline:
    """The three models of SANA-Sprint, checked to fit each other, with a prompt cache.

    offload (see offload.py): "none" keeps the models where they are; "text_encoder" keeps Gemma on
    the CPU except while it encodes (alone on the device); "sequential" also streams the DiT block by
    block and brings the DC-AE only to decode. `device` is where the work runs (default: the DiT's);
    offloaded weights wait on `offload_device`. One pipeline per model set: the offload hooks sit on
    the modules (`pipeline.offloader.remove_hooks()` detaches them). Gemma's nn.Linear layers get the
    CPU fp32 fast path of ops.Linear (acceleration.fast_cpu_linears; same weights, keys and results).
    """

    def __init__(self, dit: SanaSprintDiT, text_encoder: TextEncoder, vae: DCAE, cache_size: int = 64, *,
                 offload: str = "none", device: str | torch.device | None = None,
                 offload_device: str | torch.device = "cpu"):
        _check_compatible(dit, text_encoder, vae)
        self.device = torch.device(device) if device is not None else next(dit.parameters()).device
        self.offloader = Offloader(offload, self.device, offload_device)
        self.dit, self.text_encoder, self.vae = dit.eval(), text_encoder, vae.eval()
        fast_cpu_linears(text_encoder.model)  # same weights and keys; CPU fp32 matmuls via oneDNN
        self.cache = PromptCache(cache_size)
        self.offloader.place(text_encoder.model, self.dit, self.vae)
        self._encoder = text_encoder if offload == "none" else _ExecutionDeviceTextEncoder(text_encoder, self.device)

    @classmethod
    def from_files(cls, dit: str | os.PathLike, text_encoder: str | os.PathLike, vae: str | os.PathLike, *,
                   dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu",
                   offload: str = "none") -> "SprintPipeline":
        """Load each model from its file or folder (see the loaders for the accepted layouts).

        dtype: the storage dtype of the DiT and Gemma-2 (fp32, bf16, fp16, fp8_e4m3fn, fp8_e5m2; None or
        "auto": the file's on CUDA, bf16 on the CPU); each computes in the dtype `precision.plan` picks
        for `device` (fp32 on a CPU without native bf16). With an offload mode the weights are read onto
        the CPU and reach `device` when they run.
        """
        if offload not in OFFLOAD_MODES:
            raise ValueError(f"offload must be one of {OFFLOAD_MODES}, got {offload!r}")
        p = plan(dtype, device)
        where = device if offload == "none" else "cpu"
        return cls(load_dit(dit, dtype=p.dit, device=where, compute_dtype=p.dit_compute),
                   load_text_encoder(text_encoder, p.text_encoder, where, compute_dtype=p.text_encoder_compute),
                   load_vae(vae, dtype=p.vae, device=where), offload=offload, device=device)

    @classmethod
    def from_models_dir(cls, models_dir: str | os.PathLike, **kwargs) -> "SprintPipeline":
        """Find the models under a ComfyUI-style models/ folder; name every missing one and its source."""
        found = {kind: find_model(models_dir, kind) for kind in ("dit", "text_encoder", "vae")}
        missing = [kind for kind, path in found.items() if path is None]
        if missing:
            raise FileNotFoundError(missing_models_message(models_dir, missing))
        return cls.from_files(found["dit"], found["text_encoder"], found["vae"], **kwargs)

    def encode(self, prompts: str | Sequence[str], options: PromptOptions = PromptOptions()) -> tuple[Tensor, Tensor]:
        """(embeds, mask) for the prompts, served from the cache when seen before."""
        return encode_prompt(self._encoder, prompts, chi=options.chi, max_tokens=options.max_tokens,
                             quote_style=options.quote_style, lowercase=options.lowercase, cache=self.cache)

    @torch.no_grad()
    def generate_latents(self, prompts: str | Sequence[str], *, width: int = 1024, height: int = 1024,
                         steps: int = 2, guidance: float = DEFAULT_GUIDANCE, seed: int = 0,
                         timesteps: Sequence[float] | None = None, max_timestep: float = T_MAX,
                         intermediate_timestep: float | None = T_INTERMEDIATE_2STEP,
                         prompt_options: PromptOptions = PromptOptions()) -> Tensor:
        """Diffusion latents (B, 32, H/32, W/32) for the prompts."""
        embeds, mask = self.encode(prompts, prompt_options)
        device = self.device
        self.offloader.before_sampling(self.dit, self.vae)
        return sample(self.dit, embeds.to(device), mask.to(device), width=width, height=height, steps=steps,
                      guidance=guidance, seed=seed, timesteps=timesteps, max_timestep=max_timestep,
                      intermediate_timestep=intermediate_timestep)

    def __call__(self, prompts: str | Sequence[str], *, tiled_decode: bool | str = "auto", **kwargs) -> Tensor:
        """Images (B, 3, H, W) float32 in [0, 1] for the prompts (kwargs: generate_latents)."""
        latents = self.generate_latents(prompts, **kwargs)
        with torch.no_grad(), self.offloader.decoding(self.vae):
            return decode(self.vae, latents, tiled=tiled_decode)


def _check_compatible(dit: SanaSprintDiT, text_encoder: TextEncoder, vae: DCAE) -> None:
    cfg = dit.config
    if text_encoder.hidden_size != cfg.caption_channels:
        raise ValueError(f"text encoder width {text_encoder.hidden_size} does not fit the DiT, which expects "
                         f"caption_channels={cfg.caption_channels} (Gemma-2-2b: 2304)")
    if vae.config.latent_channels != cfg.in_channels:
        raise ValueError(f"VAE latent channels {vae.config.latent_channels} do not fit the DiT's "
                         f"in_channels={cfg.in_channels} (SANA uses DC-AE f32c32)")
    if vae.config.downscale != LATENT_DOWNSCALE:
        raise ValueError(f"VAE downscale {vae.config.downscale} is not {LATENT_DOWNSCALE} (SANA uses DC-AE f32c32)")


def save_png(images: Tensor, out: str | os.PathLike) -> list[Path]:
    """Write (B, 3, H, W) images in [0, 1] as PNG; several images get _0, _1, ... suffixes."""
    from PIL import Image

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] if images.shape[0] == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix}")
                                                 for i in range(images.shape[0])]
    arrays = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    for path, array in zip(paths, arrays):
        Image.fromarray(array).save(path)
    return paths
