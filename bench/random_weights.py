"""Seeded random weights for the real-size benchmarks (no download possible here): every weight
matrix N(0, 1/fan_in), vectors 0.1 N(0, 1), norm weights around 1, one tensor at a time."""

from __future__ import annotations

import torch


def fill_random(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """`module`'s parameters (real, e.g. after to_empty) filled in place; returns the module."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim > 1:
                value = noise / p[0].numel() ** 0.5
            else:
                value = 0.1 * noise + (1.0 if "norm" in name and name.endswith("weight") else 0.0)
            p.copy_(value.to(device=p.device, dtype=p.dtype))
    return module
