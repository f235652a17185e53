"""Run a spatial map (decoder or encoder) over overlapping tiles and blend the results.

Tiles are `tile` x `tile` input pixels, neighbours overlap by `overlap` pixels, and the last
tile of a row/column is moved back to end at the border, so every tile is full size (or the whole
side, when the side is shorter than a tile). The output of each tile is weighted by a separable
window and the weighted sum is divided by the summed weights (a partition of unity).

Window (per axis, on output pixels, O = overlap in output pixels): on each side that has a
neighbour the weight is 0 for the outer O/4 pixels, rises linearly over the next O/2 and is 1
beyond. A tile's outermost pixels are the ones most disturbed by the missing context (zero
padding at the cut), so they never contribute; any map whose receptive-field radius is at most
O/4 output pixels is reproduced exactly (up to rounding). Image borders keep weight 1.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Callable

import torch
from torch import Tensor


def check_tiling(tile: int, overlap: int, multiple_of: int, unit: str) -> None:
    """Raise ValueError unless 0 <= overlap < tile and both are multiples of `multiple_of`."""
    for name, value in (("tile", tile), ("overlap", overlap)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an int number of {unit}, got {value!r}")
        if value % multiple_of:
            lo = value // multiple_of * multiple_of
            raise ValueError(
                f"{name} must be a multiple of {multiple_of} {unit}, got {value}; "
                f"nearest valid: {lo} or {lo + multiple_of}"
            )
    if tile < max(1, multiple_of):
        raise ValueError(f"tile must be at least {max(1, multiple_of)} {unit}, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be >= 0 and smaller than tile ({tile} {unit}), got {overlap}")


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets along one side: steps of tile - overlap, the last tile flush with the end."""
    if size <= tile:
        return [0]
    return list(range(0, size - tile, tile - overlap)) + [size - tile]


def ramp(length: int, overlap: float, before: bool, after: bool, device=None) -> Tensor:
    """1-D blend weights of a tile (see module docstring); `before`/`after`: has a neighbour there."""
    w = torch.ones(length, dtype=torch.float32, device=device)
    if overlap <= 0:
        return w
    centre = torch.arange(length, dtype=torch.float32, device=device) + 0.5  # pixel centres
    rise = lambda dist: ((dist - overlap / 4) / (overlap / 2)).clamp(0.0, 1.0)
    if before:
        w = torch.minimum(w, rise(centre))
    if after:
        w = torch.minimum(w, rise(length - centre))
    return w


def _paste(acc: Tensor, wsum: Tensor, piece: Tensor, at: tuple[int, int], weights: tuple[Tensor, Tensor]) -> None:
    """acc[..., window] += piece * w, wsum[window] += w, with w the outer product of two ramps."""
    w = weights[0][:, None] * weights[1][None, :]  # (h, w)
    (r, c), (h, wd) = at, piece.shape[-2:]
    acc[..., r : r + h, c : c + wd].add_(piece.float() * w)
    wsum[r : r + h, c : c + wd].add_(w)


def tiled_map(fn: Callable[[Tensor], Tensor], x: Tensor, tile: int, overlap: int, ratio: Fraction) -> Tensor:
    """fn applied tile by tile to x (B, C, H, W); fn scales sides by `ratio`. Returns fp32 output."""
    height, width = x.shape[-2:]
    rows, cols = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    th, tw = min(tile, height), min(tile, width)
    out_overlap = float(overlap * ratio)
    acc = wsum = None
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            piece = fn(x[..., r : r + th, c : c + tw])
            expected = (int(th * ratio), int(tw * ratio))
            if tuple(piece.shape[-2:]) != expected:
                raise ValueError(f"tile map returned spatial size {tuple(piece.shape[-2:])}, expected {expected}")
            if acc is None:
                shape = (*piece.shape[:-2], int(height * ratio), int(width * ratio))
                acc = torch.zeros(shape, dtype=torch.float32, device=piece.device)
                wsum = torch.zeros(shape[-2:], dtype=torch.float32, device=piece.device)
            weights = (
                ramp(expected[0], out_overlap, i > 0, i < len(rows) - 1, piece.device),
                ramp(expected[1], out_overlap, j > 0, j < len(cols) - 1, piece.device),
            )
            _paste(acc, wsum, piece, (int(r * ratio), int(c * ratio)), weights)
            del piece
    return acc / wsum
