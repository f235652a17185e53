"""Typed configuration of DC-AE (deep compression autoencoder) models.

Defaults are dc-ae-f32c32-sana-1.0 / 1.1 (reference section 4.1: efficientvit `dc_ae.py` and the
diffusers converter agree). `load_vae` infers a config from a checkpoint's keys and shapes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..constants import DCAE_HEAD_DIM, DCAE_SCALE, DCAE_STAGE_FACTOR, LATENT_CHANNELS

_F32C32_WIDTHS = (128, 256, 512, 512, 1024, 1024)
_F32C32_ATTENTION = (False, False, False, True, True, True)  # ResBlock x3, EViTS5_GLU x3
UPSAMPLES = ("interpolate", "pixel_shuffle")
OUT_ACTS = ("relu", "silu")


@dataclass(frozen=True)
class DCAEConfig:
    """Architecture of a DC-AE: one entry per stage in the tuples (stage 0 = full resolution)."""

    in_channels: int = 3
    latent_channels: int = LATENT_CHANNELS
    widths: tuple[int, ...] = _F32C32_WIDTHS  # channels of each stage, encoder and decoder
    encoder_depths: tuple[int, ...] = (2, 2, 2, 3, 3, 3)  # blocks per encoder stage
    decoder_depths: tuple[int, ...] = (3, 3, 3, 3, 3, 3)  # blocks per decoder stage
    encoder_attention: tuple[bool, ...] = _F32C32_ATTENTION  # EfficientViT (True) or ResBlock stage
    decoder_attention: tuple[bool, ...] = _F32C32_ATTENTION
    attention_head_dim: int = DCAE_HEAD_DIM
    multiscale_kernels: tuple[int, ...] = (5,)  # one aggregation branch per kernel, every EViT block
    scaling_factor: float = DCAE_SCALE  # diffusion latent = encoder output * scaling_factor
    # Decoder variants of DC-AE-Lite (dc-ai/dc-ae-lite-f32c32: the SANA 1.0/1.1 encoder, a ResBlock-only
    # decoder of depths (0, 3, 5, 4, 4, 4)): up-sampling by a conv to 4x channels + pixel shuffle instead
    # of nearest x2 + conv, and SiLU instead of ReLU before the output conv. A decoder stage 0 of depth 0
    # has no blocks: its up-sampling conv is then the output conv (diffusers' AutoencoderDC does so).
    decoder_upsample: str = "interpolate"  # diffusers upsample_block_type: interpolate or pixel_shuffle
    decoder_out_act: str = "relu"  # diffusers decoder_conv_act_fn: relu or silu

    def __post_init__(self):
        for name in ("widths", "encoder_depths", "decoder_depths", "encoder_attention",
                     "decoder_attention", "multiscale_kernels"):
            object.__setattr__(self, name, tuple(getattr(self, name)))  # lists from JSON -> tuples
        self._check_lengths()
        self._check_positive()
        self._check_divisibility()

    def _check_lengths(self) -> None:
        n = len(self.widths)
        if n < 1:
            raise ValueError("DCAEConfig.widths must name at least one stage, got ()")
        for name in ("encoder_depths", "decoder_depths", "encoder_attention", "decoder_attention"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"DCAEConfig.{name} has {len(getattr(self, name))} entries, expected one per stage "
                    f"({n}, the length of widths {self.widths})"
                )

    def _check_positive(self) -> None:
        for name in ("in_channels", "latent_channels", "attention_head_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"DCAEConfig.{name} must be positive, got {getattr(self, name)}")
        for name in ("widths", "encoder_depths"):
            if any(v <= 0 for v in getattr(self, name)):
                raise ValueError(f"DCAEConfig.{name} entries must be positive, got {getattr(self, name)}")
        if any(v <= 0 for v in self.decoder_depths[1:]) or self.decoder_depths[0] < 0:
            raise ValueError(f"DCAEConfig.decoder_depths entries must be positive (stage 0 may be 0), got "
                             f"{self.decoder_depths}")
        for name, choices in (("decoder_upsample", UPSAMPLES), ("decoder_out_act", OUT_ACTS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"DCAEConfig.{name} must be one of {choices}, got {getattr(self, name)!r}")
        if any(k <= 0 or k % 2 == 0 for k in self.multiscale_kernels):
            raise ValueError(f"DCAEConfig.multiscale_kernels must be odd and positive, got {self.multiscale_kernels}")
        if not self.scaling_factor > 0:
            raise ValueError(f"DCAEConfig.scaling_factor must be positive, got {self.scaling_factor}")

    def _check_divisibility(self) -> None:
        w, area = self.widths, DCAE_STAGE_FACTOR**2
        for i in range(len(w) - 1):
            if (area * w[i]) % w[i + 1]:
                raise ValueError(
                    f"DCAEConfig.widths: {area} x {w[i]} (stage {i}) must be a multiple of {w[i + 1]} "
                    f"(stage {i + 1}) for the averaging/duplicating shortcuts; got widths {w}"
                )
        if w[-1] % self.latent_channels:
            raise ValueError(
                f"DCAEConfig: last width {w[-1]} must be a multiple of latent_channels {self.latent_channels}"
            )
        for i, width in enumerate(w):
            attn = self.encoder_attention[i] or self.decoder_attention[i]
            if attn and width % self.attention_head_dim:
                raise ValueError(
                    f"DCAEConfig: stage {i} width {width} is not a multiple of attention_head_dim "
                    f"{self.attention_head_dim}"
                )

    @property
    def num_stages(self) -> int:
        return len(self.widths)

    @property
    def downscale(self) -> int:
        """Image pixels per latent pixel along each side (32 for f32c32)."""
        return DCAE_STAGE_FACTOR ** (self.num_stages - 1)

    @classmethod
    def from_dict(cls, values: dict) -> "DCAEConfig":
        """Build from a dict, rejecting unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown DCAEConfig keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict:
        """Plain dict of the fields (tuples stay tuples)."""
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "DCAEConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


# dc-ae-f32c32-sana-1.0 and -1.1 share this architecture; 1.1 only retrained the decoder.
DCAE_F32C32 = DCAEConfig()
# DC-AE-Lite (dc-ai/dc-ae-lite-f32c32, mit-han-lab/dc-ae-lite-f32c32-sana-1.1-diffusers): the same encoder,
# a ResBlock-only decoder of depths (0, 3, 5, 4, 4, 4) with pixel-shuffle up-sampling and a SiLU output.
DCAE_LITE_F32C32 = DCAEConfig(decoder_depths=(0, 3, 5, 4, 4, 4), decoder_attention=(False,) * 6,
                              decoder_upsample="pixel_shuffle", decoder_out_act="silu")
