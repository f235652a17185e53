"""Cheap latent -> RGB previews: a fitted linear map, its least-squares fit, and a false-colour fallback.

A linear preview is rgb = latent^T @ factors + bias per latent pixel (the form ComfyUI's Latent2RGB
previewer uses), values in [-1, 1]. `fit_latent_rgb` finds factors and bias from pairs of latents
and images pooled to the latent grid. Without fitted factors, `false_colour` shows the structure of
a latent through its three main principal components (colours are arbitrary but stable).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def linear_rgb(latent: Tensor, factors: Tensor, bias: Tensor | None = None) -> Tensor:
    """latent (C, h, w), factors (C, 3), bias (3,) -> rgb (h, w, 3) in [0, 1]."""
    rgb = latent.float().movedim(0, -1) @ factors.float()  # (h, w, 3)
    if bias is not None:
        rgb = rgb + bias.float()
    return ((rgb + 1) / 2).clamp(0, 1)


def fit_latent_rgb(latents: Tensor, images: Tensor) -> tuple[Tensor, Tensor]:
    """Least-squares factors (C, 3) and bias (3,) mapping latents (N, C, h, w) to images (N, 3, H, W).

    Images are in [0, 1]; they are area-averaged to the latent grid and mapped to [-1, 1] first.
    Solves min ||[latent, 1] @ W - rgb||^2 over all latent pixels (normal equations via lstsq).
    """
    if latents.ndim != 4 or images.ndim != 4 or images.shape[1] != 3 or latents.shape[0] != images.shape[0]:
        raise ValueError(f"expected latents (N, C, h, w) and images (N, 3, H, W), got {tuple(latents.shape)} "
                         f"and {tuple(images.shape)}")
    pooled = F.adaptive_avg_pool2d(images.float(), latents.shape[-2:]) * 2 - 1  # (N, 3, h, w)
    x = latents.float().movedim(1, -1).reshape(-1, latents.shape[1])  # (N*h*w, C)
    y = pooled.movedim(1, -1).reshape(-1, 3)  # (N*h*w, 3)
    design = torch.cat([x, torch.ones(x.shape[0], 1)], dim=1)  # (N*h*w, C + 1)
    solution = torch.linalg.lstsq(design.double(), y.double()).solution.float()  # (C + 1, 3)
    return solution[:-1], solution[-1]


def false_colour(latent: Tensor) -> Tensor:
    """latent (C, h, w) -> rgb (h, w, 3) in [0, 1]: its top-3 principal components, each scaled to [0, 1].

    The sign of each component is fixed (largest loading positive) so that a preview does not flip
    colours between steps.
    """
    c, h, w = latent.shape
    x = latent.float().reshape(c, h * w).T  # (hw, C)
    x = x - x.mean(dim=0)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)  # vh (k, C), k = min(hw, C)
    basis = vh[:3]
    signs = torch.sign(basis.gather(1, basis.abs().argmax(dim=1, keepdim=True)))  # (k, 1)
    proj = x @ (basis * signs).T  # (hw, k)
    if proj.shape[1] < 3:
        proj = torch.cat([proj, proj.new_zeros(proj.shape[0], 3 - proj.shape[1])], dim=1)
    scale = proj.abs().amax(dim=0).clamp_min(1e-8)
    return ((proj / scale + 1) / 2).reshape(h, w, 3)


def to_uint8(rgb: Tensor) -> Tensor:
    """(h, w, 3) in [0, 1] -> uint8 on the CPU, ready for PIL.Image.fromarray."""
    return (rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
