"""Exponential moving average (EMA) of the trained weights: what is exported, previewed and validated.

Decay of update n (1-based): d_n = min(max_decay, (1 + n) / (10 + n)). Its averaging horizon
1 / (1 - d_n) = (10 + n) / 9 spans about the last 11 % of the updates so far, until the cap
(max_decay 0.999: about the last 1000 updates) is reached. Why this rule: on the toys of
docs/training.md the raw weights at the end of a run were worse than an average over its last
checkpoints (and than the 80 % checkpoint), and a fixed decay of 0.999 would still sit near the
initial weights in a run of a few hundred updates, the size of a personalisation run.
The shadow weights are fp32 copies of the trainable tensors (all of them in full mode; adapters and
new heads in LoRA mode), kept on their device; they go into every checkpoint, so a resumed run
averages exactly as an uninterrupted one.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor


def ema_decay(n: int, max_decay: float) -> float:
    """d_n = min(max_decay, (1 + n) / (10 + n)) for update n >= 1 (see the module doc)."""
    return min(max_decay, (1 + n) / (10 + n))


class Ema:
    """Shadow copies of named parameters; `update(n)` after update n, `swapped()` to use them."""

    def __init__(self, params: dict[str, Tensor], max_decay: float):
        self.params = params
        self.max_decay = max_decay
        self.shadow = {name: p.detach().float().clone() for name, p in params.items()}

    @torch.no_grad()
    def update(self, n: int) -> None:
        """shadow <- d_n shadow + (1 - d_n) param."""
        weight = 1.0 - ema_decay(n, self.max_decay)
        for name, p in self.params.items():
            self.shadow[name].lerp_(p.detach().float(), weight)

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.shadow)

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Tensor], source: str = "the checkpoint") -> None:
        """Strict: the same names and shapes as the trained tensors."""
        if set(state) != set(self.shadow):
            diff = sorted(set(state) ^ set(self.shadow))[:8]
            raise ValueError(f"{source}: EMA tensors do not match this run's trainable tensors; "
                             f"differing names: {diff}")
        for name, value in state.items():
            self.shadow[name].copy_(value)

    @contextmanager
    @torch.no_grad()
    def swapped(self):
        """Within the block the parameters hold the EMA weights; the trained ones are put back after."""
        saved = {name: p.detach().clone() for name, p in self.params.items()}
        for name, p in self.params.items():
            p.copy_(self.shadow[name].to(p.dtype))
        try:
            yield
        finally:
            for name, p in self.params.items():
                p.copy_(saved[name])

    @torch.no_grad()
    def copy_to_params(self) -> None:
        """The parameters take the EMA weights for good (the end of a run: outputs are the EMA)."""
        for name, p in self.params.items():
            p.copy_(self.shadow[name].to(p.dtype))
