"""LyCORIS updates (LoKr, LoHa) and full differences, beside lora_formats' low-rank Adapter.

Each has the same small interface: `out_in()` (the weight shape it updates, flattened to 2-D),
`delta(shape, strength)` (the float32 change of that weight) and `comfy(base)` (the keys ComfyUI's own
weight adapters read). The math follows LyCORIS' documented scheme:
  LoKr   delta = kron(W1, W2) * scale, W1 = lokr_w1 or lokr_w1_a @ lokr_w1_b, W2 likewise (a conv W2 is
         (b, d, k, k) and W1 is broadcast over the kernel); scale = alpha / r where r is the inner size
         of the last factor given as a product (w2 before w1), 1 when both factors are full or alpha is absent.
  LoHa   delta = (hada_w1_a @ hada_w1_b) * (hada_w2_a @ hada_w2_b) * alpha / r, r = rows of hada_w1_b
         (1 without alpha).
The Tucker forms (lokr_t2, hada_t1, hada_t2) are not read: a file with them is refused by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

LOKR_KEYS = ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b")
LOHA_KEYS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
TUCKER_KEYS = ("lokr_t2", "hada_t1", "hada_t2")


@dataclass
class _Lycoris:
    """The keys of one module's LyCORIS update (without `alpha`), and its alpha."""

    parts: dict[str, Tensor]
    alpha: float | None

    def comfy(self, base: str) -> dict[str, Tensor]:
        """ComfyUI reads LyCORIS keys as they are, under the module's name."""
        out = {f"{base}.{k}": v for k, v in self.parts.items()}
        if self.alpha is not None:
            out[f"{base}.alpha"] = torch.tensor(self.alpha)
        return out


@dataclass
class Kron(_Lycoris):
    """A LoKr update: kron(w1, w2) times its scale."""

    def _factor(self, n: int) -> tuple[Tensor, int | None]:
        p = self.parts
        if f"lokr_w{n}" in p:
            return p[f"lokr_w{n}"].float(), None
        a, b = p[f"lokr_w{n}_a"].float(), p[f"lokr_w{n}_b"].float()
        return (a @ b.flatten(1)).reshape(a.shape[0], *b.shape[1:]), b.shape[0]

    def _factors(self) -> tuple[Tensor, Tensor, float]:
        w1, r1 = self._factor(1)
        w2, r2 = self._factor(2)
        rank = r2 if r2 is not None else r1
        scale = self.alpha / rank if self.alpha is not None and rank is not None else 1.0
        if w2.ndim == 4:
            w1 = w1[:, :, None, None]
        return w1, w2, scale

    def out_in(self) -> tuple[int, int]:
        w1, w2, _ = self._factors()
        return w1.shape[0] * w2.shape[0], w1.shape[1] * math.prod(w2.shape[1:])

    def delta(self, shape: torch.Size, strength: float = 1.0) -> Tensor:
        w1, w2, scale = self._factors()
        return (torch.kron(w1, w2) * (strength * scale)).reshape(shape)


@dataclass
class Hadamard(_Lycoris):
    """A LoHa update: the elementwise product of two low-rank products, times alpha / rank."""

    def out_in(self) -> tuple[int, int]:
        return self.parts["hada_w1_a"].shape[0], self.parts["hada_w1_b"].flatten(1).shape[1]

    def delta(self, shape: torch.Size, strength: float = 1.0) -> Tensor:
        p = {k: v.float().flatten(1) for k, v in self.parts.items()}
        d = (p["hada_w1_a"] @ p["hada_w1_b"]) * (p["hada_w2_a"] @ p["hada_w2_b"])
        scale = self.alpha / self.parts["hada_w1_b"].shape[0] if self.alpha is not None else 1.0
        return (d * (strength * scale)).reshape(shape)


@dataclass
class Diff:
    """A full difference of one weight (a LyCORIS update on an NVlabs fused projection, cut into parts)."""

    diff: Tensor

    def out_in(self) -> tuple[int, int]:
        return self.diff.shape[0], self.diff.flatten(1).shape[1]

    def delta(self, shape: torch.Size, strength: float = 1.0) -> Tensor:
        return (self.diff.float() * strength).reshape(shape)

    def comfy(self, base: str) -> dict[str, Tensor]:
        return {f"{base}.diff": self.diff}


def lycoris_adapter(parts: dict[str, Tensor], alpha: float | None, name: str) -> Kron | Hadamard:
    """The LoKr or LoHa update of one module's keys; refused naming the module when incomplete."""
    tucker = sorted(k for k in parts if k in TUCKER_KEYS)
    if tucker:
        raise ValueError(f"{name}: the Tucker form ({', '.join(tucker)}) of LyCORIS is not supported; "
                         "train or convert without it (use_tucker false)")
    if any(k.startswith("lokr_") for k in parts):
        for n in (1, 2):
            if f"lokr_w{n}" not in parts and not {f"lokr_w{n}_a", f"lokr_w{n}_b"} <= set(parts):
                raise ValueError(f"{name}: LoKr needs lokr_w{n} or lokr_w{n}_a and lokr_w{n}_b, has {sorted(parts)}")
        return Kron(parts, alpha)
    missing = [k for k in LOHA_KEYS if k not in parts]
    if missing:
        raise ValueError(f"{name}: LoHa needs {', '.join(LOHA_KEYS)}, misses {', '.join(missing)}")
    return Hadamard(parts, alpha)
