"""Scribble pad images: the PNG that the pad's canvas uploads -> ComfyUI IMAGE and MASK tensors.

The canvas (web/sana_sprint_scribble.js) writes white strokes on black as an 8-bit grey PNG of the
pad's width x height into ComfyUI's input folder. Any other image works too: it is read as its
luminance composited over black (transparent = black), and resized to the pad's size if it differs.

    grey = read_scribble(path, width=1024, height=768)   # (768, 1024) float32 in [0, 1]
    image, mask = scribble_outputs(grey)                  # (1, 768, 1024, 3) and (1, 768, 1024)
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .constants import LATENT_DOWNSCALE, SCRIBBLE_PAD_MAX_SIZE, SCRIBBLE_PAD_MIN_SIZE

_CHUNK = 1 << 20  # bytes read at a time when hashing a file


def check_pad_size(width: int, height: int) -> None:
    """ValueError unless both sides are multiples of 32 within the pad's bounds."""
    for name, side in (("width", width), ("height", height)):
        if not SCRIBBLE_PAD_MIN_SIZE <= side <= SCRIBBLE_PAD_MAX_SIZE or side % LATENT_DOWNSCALE:
            raise ValueError(f"scribble pad {name} must be a multiple of {LATENT_DOWNSCALE} in "
                             f"[{SCRIBBLE_PAD_MIN_SIZE}, {SCRIBBLE_PAD_MAX_SIZE}], got {side}")


def _open(source: bytes | str | Path) -> Image.Image:
    """The decoded image; FileNotFoundError for a missing file, ValueError for a non-image."""
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise FileNotFoundError(f"scribble file {name} does not exist")
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        image.load()
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"scribble file {name} is not a readable image (expected a PNG): {e}") from e
    return image


def _luminance_over_black(image: Image.Image) -> np.ndarray:
    """(H, W) float32 in [0, 1]: ITU-R 601 luma, multiplied by alpha when the image has one."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    rgba = image.convert("RGBA") if has_alpha else None
    grey = np.asarray((rgba or image).convert("L"), dtype=np.float32) / 255.0
    if rgba is not None:
        grey = grey * (np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0)
    return grey


def read_scribble(source: bytes | str | Path, width: int, height: int) -> torch.Tensor:
    """The scribble as (height, width) float32 in [0, 1], resized (bilinear) when its size differs."""
    check_pad_size(width, height)
    image = _open(source)
    grey = _luminance_over_black(image)
    if grey.shape != (height, width):
        resized = Image.fromarray(grey).resize((width, height), Image.Resampling.BILINEAR)
        grey = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    return torch.from_numpy(np.ascontiguousarray(grey))


def empty_scribble(width: int, height: int) -> torch.Tensor:
    """An empty pad: (height, width) zeros."""
    check_pad_size(width, height)
    return torch.zeros(height, width, dtype=torch.float32)


def scribble_outputs(grey: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W) in [0, 1] -> IMAGE (1, H, W, 3) with the value in every channel, MASK (1, H, W)."""
    if grey.ndim != 2:
        raise ValueError(f"expected a (H, W) scribble, got shape {tuple(grey.shape)}")
    image = grey[None, :, :, None].expand(1, *grey.shape, 3).contiguous()  # (1, H, W, 3)
    return image, grey[None].clone()


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex); ComfyUI re-runs the pad when this changes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()
