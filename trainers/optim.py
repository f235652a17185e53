"""The optimisers, learning-rate schedule and gradient clipping of every training mode (one place).

* `make_optimizer`: AdamW, torch's Adafactor, or CAME (the NVlabs SANA-Sprint choice; `came-pytorch`).
* `lr_factor`: linear warmup, then a cosine or linear decay to `optim.lr_min_ratio` x lr at the last
  update (or constant), a pure function of the update count, so a resumed run continues the same curve.
* `Clipper`: the gradient-norm threshold. A fixed `optim.grad_clip`, or (default, grad_clip empty)
  adaptive: `optim.clip_ratio` x the running mean of the previous updates' norms, so a spike is cut to
  a few times the typical size while typical updates pass unclipped. A fixed threshold has to be
  re-tuned per model, loss and rank: the NVlabs 0.1 clipped every update of the toy in
  docs/training.md (norms 16-240), which turns the optimiser into a normalised-gradient method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import Config, OptimConfig

CLIP_AVERAGE_DECAY = 0.99  # running mean of the pre-clip norms: about the last 100 updates


def make_optimizer(params: list, cfg: Config, lr: float, kind: str | None = None) -> torch.optim.Optimizer:
    """AdamW, torch's Adafactor (factored second moments, no first moment: the memory-lean choice), or
    CAME (factored second moments plus a confidence-guided first moment; NVlabs trains Sprint with it)."""
    o = cfg.optim
    kind = kind or o.optimizer
    if kind == "adafactor":  # lr is relative to each parameter's RMS (torch.optim.Adafactor)
        return torch.optim.Adafactor(params, lr=lr, weight_decay=o.weight_decay)
    if kind == "came":
        try:
            from came_pytorch import CAME
        except ImportError:
            raise ValueError("config key optim.optimizer is 'came' but the came-pytorch package is not installed; "
                             "pip install came-pytorch (or choose adamw / adafactor)") from None
        return CAME(params, lr=lr, weight_decay=o.weight_decay)  # its own betas (0.9, 0.999, 0.9999) and eps
    return torch.optim.AdamW(params, lr=lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)


def lr_factor(update: int, total: int, o: OptimConfig) -> float:
    """Multiplier of the base lr for update `update` (0-based) of `total`: linear warmup over
    o.warmup_steps, then o.lr_schedule from 1 down to o.lr_min_ratio at the last update."""
    if o.warmup_steps > 0 and update < o.warmup_steps:
        return (update + 1) / o.warmup_steps
    if o.lr_schedule == "constant":
        return 1.0
    span = max(total - 1 - o.warmup_steps, 1)
    progress = min(max(update - o.warmup_steps, 0) / span, 1.0)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if o.lr_schedule == "cosine" else 1 - progress
    return o.lr_min_ratio + (1 - o.lr_min_ratio) * shape


class Clipper:
    """The clipping threshold of one optimiser: fixed, or clip_ratio x the running mean of past norms.

    `state()` / `load_state()` go into the checkpoint, so a resumed run clips exactly as an
    uninterrupted one. The first update of an adaptive run is not clipped (no history yet).
    """

    def __init__(self, fixed: float | None, ratio: float):
        self.fixed, self.ratio = fixed, ratio
        self.mean, self.count = 0.0, 0

    def threshold(self) -> float:
        if self.fixed is not None:
            return self.fixed
        if self.count == 0:
            return math.inf
        debiased = self.mean / (1 - CLIP_AVERAGE_DECAY ** self.count)
        return self.ratio * debiased

    def observe(self, norm: float) -> None:
        """Record an update's pre-clip norm (a non-finite one is skipped; a spike enters at the threshold)."""
        if not math.isfinite(norm):
            return
        value = min(norm, self.threshold())
        self.mean = CLIP_AVERAGE_DECAY * self.mean + (1 - CLIP_AVERAGE_DECAY) * value
        self.count += 1

    def state(self) -> dict:
        return {"mean": self.mean, "count": self.count}

    def load_state(self, state: dict) -> None:
        self.mean, self.count = float(state["mean"]), int(state["count"])


def clipper(o: OptimConfig) -> Clipper:
    return Clipper(o.grad_clip, o.clip_ratio)


@dataclass
class Update:
    """What `apply_update` did; true when the optimiser stepped."""

    applied: bool
    clipped: bool  # the pre-clip norm was above the threshold
    threshold: float

    def __bool__(self) -> bool:
        return self.applied


def apply_update(optimizer: torch.optim.Optimizer, params: list[Tensor], clip: Clipper | float,
                 clip_fn=None) -> tuple[float, Update]:
    """Clip the gradient norm to the clipper's threshold (or a fixed number); step unless the norm is
    NaN/Inf; zero the grads. Returns (total norm before clipping, Update). `clip_fn` is the
    accelerator's clip_grad_norm_ under DDP/FSDP (same signature as torch's)."""
    clip = clip if isinstance(clip, Clipper) else Clipper(clip, 1.0)
    threshold = clip.threshold()
    norm = (clip_fn or torch.nn.utils.clip_grad_norm_)(params, threshold)
    norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP: a DTensor
    finite = math.isfinite(norm)
    if finite:
        optimizer.step()
        clip.observe(norm)
    optimizer.zero_grad(set_to_none=True)
    return norm, Update(finite, finite and norm > threshold, threshold)
