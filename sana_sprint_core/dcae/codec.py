"""Public encode / decode between images in [0, 1] and diffusion latents.

Units, defined here and nowhere else:
  images   (B, 3, H, W) float in [0, 1]; the autoencoder itself sees x = 2 * image - 1.
  latents  (B, C_lat, H/f, W/f) in DIFFUSION units: z = encoder(x) * scaling_factor, and the
           decoder sees z / scaling_factor (diffusers `AutoencoderDC` + SanaPipeline convention).
Both functions move inputs to the autoencoder's device and dtype and return float32 tensors on
that device. They run under the caller's grad mode (wrap in torch.no_grad() for inference).
"""

from __future__ import annotations

import logging
from fractions import Fraction

import torch
from torch import Tensor

from ..constants import (
    DCAE_DECODE_OVERLAP,
    DCAE_DECODE_TILE,
    DCAE_ENCODE_OVERLAP,
    DCAE_ENCODE_TILE,
    IMAGE_RANGE_TOLERANCE,
)
from .model import DCAE
from .tiling import check_tiling, tiled_map

logger = logging.getLogger(__name__)

# torch.OutOfMemoryError exists from torch 2.5; older versions only have the CUDA one.
_OOM_ERRORS = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), torch.cuda.OutOfMemoryError)


def _placement(vae: DCAE) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of the autoencoder's weights."""
    p = next(vae.parameters())
    return p.device, p.dtype


def _check_4d(name: str, t: Tensor, channels: int, what: str) -> None:
    """Raise unless t is a floating (B, channels, H, W) tensor."""
    if not isinstance(t, Tensor) or t.ndim != 4 or not t.is_floating_point():
        got = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{name} must be a float tensor (B, {channels}, H, W) of {what}, got {got}")
    if t.shape[1] != channels:
        hint = "; channels-last? use .movedim(-1, 1)" if t.shape[-1] == channels else ""
        raise ValueError(f"{name} must have {channels} channels at dim 1 (B, {channels}, H, W), got {tuple(t.shape)}{hint}")


def _latents_in(vae: DCAE, latents: Tensor) -> Tensor:
    """Diffusion latents -> decoder input z / scaling_factor, on the model's device and dtype."""
    _check_4d("latents", latents, vae.config.latent_channels, "diffusion latents")
    device, dtype = _placement(vae)
    return latents.to(device=device, dtype=torch.float32).div(vae.config.scaling_factor).to(dtype)


def _images_in(vae: DCAE, images: Tensor) -> Tensor:
    """Images in [0, 1] -> encoder input 2 * image - 1, on the model's device and dtype."""
    _check_4d("images", images, vae.config.in_channels, "RGB values in [0, 1]")
    f = vae.config.downscale
    for side, size in zip(("height", "width"), images.shape[-2:]):
        if size % f or size == 0:
            lo = size // f * f
            raise ValueError(f"image {side} must be a multiple of {f}, got {size}; nearest valid: {lo or f} or {lo + f}")
    lo, hi = float(images.min()), float(images.max())
    if lo < -IMAGE_RANGE_TOLERANCE or hi > 1 + IMAGE_RANGE_TOLERANCE:
        raise ValueError(f"images must hold values in [0, 1], got min {lo:.4g}, max {hi:.4g}")
    device, dtype = _placement(vae)
    return images.to(device=device, dtype=torch.float32).mul(2).sub(1).to(dtype)


def _images_out(raw: Tensor) -> Tensor:
    """Decoder output in [-1, 1] -> float32 images in [0, 1]."""
    return raw.float().add(1).div(2).clamp(0, 1)


def _latents_out(vae: DCAE, raw: Tensor) -> Tensor:
    """Encoder output -> float32 diffusion latents."""
    return raw.float().mul(vae.config.scaling_factor)


def _run(full, tiled_fn, tiled, what: str) -> Tensor:
    """full() / tiled_fn() by `tiled`; "auto" retries with tiles after an out-of-memory error."""
    if tiled is True:
        return tiled_fn()
    if tiled is False:
        return full()
    try:
        return full()
    except _OOM_ERRORS as e:  # handled below, outside the except block, so the frames are freed
        logger.warning("DC-AE %s ran out of memory (%s); retrying in tiles", what, str(e).splitlines()[0])
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return tiled_fn()


def _check_tiled_arg(tiled) -> None:
    if not (tiled is True or tiled is False or tiled == "auto"):
        raise ValueError(f"tiled must be False, True or 'auto', got {tiled!r}")


def decode(
    vae: DCAE, latents: Tensor, *, tiled: bool | str = False, tile: int = DCAE_DECODE_TILE,
    overlap: int = DCAE_DECODE_OVERLAP,
) -> Tensor:
    """Diffusion latents (B, C_lat, h, w) -> images (B, 3, h*f, w*f), float32 in [0, 1].

    tiled: False, True, or "auto" (whole image first, tiles after an out-of-memory error).
    tile, overlap: tile side and overlap in LATENT pixels (see `decode_tiled`).
    """
    _check_tiled_arg(tiled)
    check_tiling(tile, overlap, 1, "latent pixels")
    z = _latents_in(vae, latents)
    ratio = Fraction(vae.config.downscale)
    raw = _run(lambda: vae.decoder(z), lambda: tiled_map(vae.decoder, z, tile, overlap, ratio), tiled, "decode")
    return _images_out(raw)


def decode_tiled(vae: DCAE, latents: Tensor, tile: int = DCAE_DECODE_TILE, overlap: int = DCAE_DECODE_OVERLAP) -> Tensor:
    """`decode` in overlapping tiles of `tile` x `tile` latent pixels (overlap in latent pixels).

    Lower peak memory; seams are blended (tiling.py). The result equals `decode` when one tile
    covers the latent, and differs slightly otherwise (the decoder's attention is global).
    """
    return decode(vae, latents, tiled=True, tile=tile, overlap=overlap)


def encode(
    vae: DCAE, images: Tensor, *, tiled: bool | str = False, tile: int = DCAE_ENCODE_TILE,
    overlap: int = DCAE_ENCODE_OVERLAP,
) -> Tensor:
    """Images (B, 3, H, W) in [0, 1], H and W multiples of f -> diffusion latents, float32.

    tiled: False, True or "auto"; tile, overlap: in IMAGE pixels, multiples of f (see `encode_tiled`).
    """
    _check_tiled_arg(tiled)
    check_tiling(tile, overlap, vae.config.downscale, "image pixels")
    x = _images_in(vae, images)
    ratio = Fraction(1, vae.config.downscale)
    raw = _run(lambda: vae.encoder(x), lambda: tiled_map(vae.encoder, x, tile, overlap, ratio), tiled, "encode")
    return _latents_out(vae, raw)


def encode_tiled(vae: DCAE, images: Tensor, tile: int = DCAE_ENCODE_TILE, overlap: int = DCAE_ENCODE_OVERLAP) -> Tensor:
    """`encode` in overlapping tiles of `tile` x `tile` image pixels (both multiples of f)."""
    return encode(vae, images, tiled=True, tile=tile, overlap=overlap)
