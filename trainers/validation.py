"""Validation images during training: few-step sCM samples of the student, decoded by the DC-AE."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from sana_sprint_core import trigflow
from sana_sprint_core.constants import SIGMA_DATA
from sana_sprint_core.sampler import sprint_timesteps
from sana_sprint_core.trigflow_model import TrigFlowModel


@torch.no_grad()
def sample_latents(model: TrigFlowModel, noise: Tensor, text: Tensor, mask: Tensor | None, guidance: float | None,
                   steps: int, generator: torch.Generator, model_kwargs: dict | None = None) -> Tensor:
    """Multistep consistency sampling (sCM Alg. 1) on the SANA-Sprint schedule; `noise` is N(0, 1).

    Works for any latent shape (the core sampler fixes 32 channels); returns diffusion latents.
    model_kwargs go to every model call (the ControlNet modes' `control`).
    """
    times = sprint_timesteps(steps)
    b = noise.shape[0]
    g = None if guidance is None else torch.full((b,), float(guidance), device=noise.device)
    x = noise.float() * SIGMA_DATA
    x0 = x
    for s, t in zip(times[:-1], times[1:]):
        s_b = torch.full((b,), s, device=noise.device)
        pred = SIGMA_DATA * model(x / SIGMA_DATA, s_b, text, mask, g, **(model_kwargs or {}))
        x0 = trigflow.x0_from_prediction(x, pred, torch.tensor(s))
        if t > 0:
            fresh = torch.randn(noise.shape, generator=generator).to(noise.device) * SIGMA_DATA
            x = trigflow.add_noise(x0, fresh, torch.tensor(t))
    return x0 / SIGMA_DATA


def to_pil(image: Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> PIL RGB."""
    data = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().cpu()
    return Image.fromarray(data.numpy())


def save_validation(model: Callable[..., Tensor], channels: int, vae, text: Tensor, mask: Tensor, prompts: list[str],
                    steps_list: list[int], guidance: float, size: tuple[int, int], seed: int, folder: Path, step: int,
                    model_kwargs: dict | None = None, write: bool = True) -> list[Path]:
    """One PNG per (prompt, step count) in `folder`: step_<N>_p<i>_<k>step.png.

    `model` computes F like TrigFlowModel; `channels` are its latent channels. write=False only samples
    (the other processes of an FSDP run, whose sharded model must take part in every forward).
    """
    from sana_sprint_core.dcae import decode

    device = text.device
    factor = vae.config.downscale
    shape = (len(prompts), channels, size[0] // factor, size[1] // factor)
    paths = []
    for k in steps_list:
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(shape, generator=gen).to(device)
        latents = sample_latents(model, noise, text, mask, guidance, k, gen, model_kwargs)
        if not write:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        images = decode(vae, latents)
        for i in range(len(prompts)):
            path = folder / f"step_{step:08d}_p{i}_{k}step.png"
            to_pil(images[i]).save(path)
            paths.append(path)
    return paths
