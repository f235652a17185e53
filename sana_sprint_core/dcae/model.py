"""DC-AE encoder, decoder and the autoencoder holding both (reference sections 4.2 and 4.4).

State-dict keys are those of diffusers' `AutoencoderDC`:
  encoder.conv_in, encoder.down_blocks.{i}.{j}.*, encoder.conv_out,
  decoder.conv_in, decoder.up_blocks.{i}.{j}.*, decoder.norm_out, decoder.conv_out.
Encoder stage i holds its blocks at j < depth_i, then the DownBlock at j = depth_i (not in the last
stage); decoder stage i holds the UpBlock at j = 0 (not in the last stage), then its blocks.
The raw modules work in the autoencoder's own units: images in [-1, 1], unscaled latents. The
public `encode`/`decode` (codec.py) add the [0, 1] mapping and the scaling factor.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import factory_kwargs, resolve
from .config import DCAEConfig
from .layers import DownBlock, EfficientViTBlock, ResBlock, RMSNorm2d, UpBlock, add_residual, group_mean


def _stage_blocks(cfg: DCAEConfig, stage: int, depth: int, attention: bool, mods: dict) -> list[nn.Module]:
    """The `depth` ResBlocks or EfficientViT blocks of one stage."""
    width = cfg.widths[stage]
    if attention:
        return [EfficientViTBlock(width, cfg.attention_head_dim, cfg.multiscale_kernels, **mods) for _ in range(depth)]
    return [ResBlock(width, **mods) for _ in range(depth)]


class Encoder(nn.Module):
    """Image (B, in, H, W) in [-1, 1] -> unscaled latent (B, latent, H/f, W/f), f = config.downscale."""

    def __init__(self, config: DCAEConfig, *, operations=None, dtype=None, device=None):
        super().__init__()
        ops, kw = resolve(operations), factory_kwargs(dtype, device)
        mods = dict(operations=operations, **kw)
        w, last = config.widths, config.num_stages - 1
        self.latent_channels = config.latent_channels
        self.conv_in = ops.Conv2d(config.in_channels, w[0], 3, padding=1, **kw)
        stages = []
        for i in range(config.num_stages):
            blocks = _stage_blocks(config, i, config.encoder_depths[i], config.encoder_attention[i], mods)
            if i < last:
                blocks.append(DownBlock(w[i], w[i + 1], **mods))
            stages.append(nn.Sequential(*blocks))
        self.down_blocks = nn.ModuleList(stages)
        self.conv_out = ops.Conv2d(w[-1], config.latent_channels, 3, padding=1, **kw)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for stage in self.down_blocks:
            h = stage(h)
        # Output shortcut: the mean of each group of width/latent consecutive channels.
        return add_residual(self.conv_out(h), group_mean(h, self.latent_channels))


class Decoder(nn.Module):
    """Unscaled latent (B, latent, h, w) -> image (B, in, h*f, w*f) in about [-1, 1]."""

    def __init__(self, config: DCAEConfig, *, operations=None, dtype=None, device=None):
        super().__init__()
        ops, kw = resolve(operations), factory_kwargs(dtype, device)
        mods = dict(operations=operations, **kw)
        w, last = config.widths, config.num_stages - 1
        self.repeats = w[-1] // config.latent_channels
        self.conv_in = ops.Conv2d(config.latent_channels, w[-1], 3, padding=1, **kw)
        depths, shuffle = config.decoder_depths, config.decoder_upsample == "pixel_shuffle"
        stages = []
        for i in range(config.num_stages):
            blocks = [UpBlock(w[i + 1], w[i], pixel_shuffle=shuffle, **mods)] if i < last and depths[i] else []
            blocks += _stage_blocks(config, i, depths[i], config.decoder_attention[i], mods)
            stages.append(nn.Sequential(*blocks))
        self.up_blocks = nn.ModuleList(stages)  # run from the last (coarsest) stage to stage 0
        channels = w[0] if depths[0] else w[1]  # stage 0 without blocks: the output conv up-samples
        self.norm_out = RMSNorm2d(channels, **kw)
        self.out_act = F.silu if config.decoder_out_act == "silu" else F.relu
        if depths[0]:
            self.conv_out = ops.Conv2d(channels, config.in_channels, 3, padding=1, **kw)
        else:
            self.conv_out = UpBlock(channels, config.in_channels, pixel_shuffle=shuffle, shortcut=False, **mods)

    def forward(self, z: Tensor) -> Tensor:
        # Input shortcut: each latent channel repeated width/latent times, consecutively.
        h = add_residual(self.conv_in(z), z.repeat_interleave(self.repeats, dim=1))
        for stage in reversed(self.up_blocks):
            h = stage(h)
        return self.conv_out(self.out_act(self.norm_out(h), inplace=True))  # norm output: a fresh tensor


class DCAE(nn.Module):
    """The autoencoder: `.encoder`, `.decoder` and the `.config` they were built from."""

    def __init__(self, config: DCAEConfig, *, operations=None, dtype=None, device=None):
        super().__init__()
        mods = dict(operations=operations, dtype=dtype, device=device)
        self.config = config
        self.encoder = Encoder(config, **mods)
        self.decoder = Decoder(config, **mods)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruct raw images in [-1, 1] (encoder then decoder, no scaling)."""
        return self.decoder(self.encoder(x))
