"""Typed configuration of the Sana / Sana-Sprint DiT and the presets of the released models."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .constants import GEMMA_HIDDEN, GUIDANCE_EMBED_SCALE, LATENT_CHANNELS

# Linear self-attention head width of every Sana model (`linear_head_dim: 32`).
LINEAR_HEAD_DIM = 32


@dataclass(frozen=True)
class DiTConfig:
    """Architecture of a Sana DiT; defaults are the Sprint 1.6B model."""

    hidden_size: int = 2240
    num_layers: int = 20
    num_heads: int = 70  # linear self-attention heads (head dim hidden_size // num_heads)
    cross_heads: int = 20  # softmax cross-attention heads
    in_channels: int = LATENT_CHANNELS
    out_channels: int = LATENT_CHANNELS
    caption_channels: int = GEMMA_HIDDEN
    mlp_ratio: float = 2.5
    patch_size: int = 1
    qk_norm: bool = True  # RMSNorm over the whole width on q and k (self and cross)
    guidance_embeds: bool = True  # Sprint's CFG embedder
    time_input_scale: float = 1.0  # the embedder sees tau * this: 1 = dense Sprint time, 1000 = Sana
    guidance_embed_scale: float = GUIDANCE_EMBED_SCALE
    linear_attn_eps: float = 1e-15  # diffusers' value; NVlabs' block uses 1e-8
    norm_eps: float = 1e-6

    def __post_init__(self):
        for name in ("hidden_size", "num_layers", "num_heads", "cross_heads", "patch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"DiTConfig.{name} must be positive, got {getattr(self, name)}")
        for heads in ("num_heads", "cross_heads"):
            if self.hidden_size % getattr(self, heads):
                raise ValueError(
                    f"DiTConfig.hidden_size {self.hidden_size} is not divisible by {heads}={getattr(self, heads)}"
                )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def cross_head_dim(self) -> int:
        return self.hidden_size // self.cross_heads

    @property
    def mlp_hidden(self) -> int:
        """GLUMBConv hidden width, int(D * mlp_ratio) as both codebases compute it."""
        return int(self.hidden_size * self.mlp_ratio)

    @classmethod
    def from_dict(cls, values: dict) -> "DiTConfig":
        """Build from a dict, rejecting unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown DiTConfig keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "DiTConfig":
        return dataclasses.replace(self, **changes)


_SPRINT_1600M = DiTConfig()
_SPRINT_600M = DiTConfig(hidden_size=1152, num_layers=28, num_heads=36, cross_heads=16)

# Released architectures (reference table 1.1). Teachers are the QK-norm, dense-time flow models
# without the CFG embedder; "sana_*" are the original Sana flow models (integer 1000*tau time).
PRESETS: dict[str, DiTConfig] = {
    "sprint_1600m": _SPRINT_1600M,
    "sprint_600m": _SPRINT_600M,
    "teacher_1600m": _SPRINT_1600M.replace(guidance_embeds=False),
    "teacher_600m": _SPRINT_600M.replace(guidance_embeds=False),
    "sana_1600m": _SPRINT_1600M.replace(guidance_embeds=False, qk_norm=False, time_input_scale=1000.0),
    "sana_600m": _SPRINT_600M.replace(guidance_embeds=False, qk_norm=False, time_input_scale=1000.0),
}
