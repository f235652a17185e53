"""The optimisers of the trainer's student, heads and teacher preparation (one place for all modes)."""

from __future__ import annotations

import torch

from .config import Config


def make_optimizer(params: list, cfg: Config, lr: float, kind: str | None = None) -> torch.optim.Optimizer:
    """AdamW, or torch's Adafactor (factored second moments, no first moment: the memory-lean choice)."""
    o = cfg.optim
    if (kind or o.optimizer) == "adafactor":  # lr is relative to each parameter's RMS (torch.optim.Adafactor)
        return torch.optim.Adafactor(params, lr=lr, weight_decay=o.weight_decay)
    return torch.optim.AdamW(params, lr=lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
