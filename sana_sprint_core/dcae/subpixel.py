"""Nearest x2 up-sampling followed by a 3x3 convolution, computed at the input resolution.

Per axis, nearest x2 gives u[2i + a] = x[i]; a 3x3 "same" convolution then reads u at 2i + a - 1,
2i + a, 2i + a + 1, which are input pixels (i - 1, i, i) for a = 0 and (i, i, i + 1) for a = 1. So
output phase a is a 2-tap filter on x:
    a = 0: w0 * x[i - 1] + (w1 + w2) * x[i]        a = 1: (w0 + w1) * x[i] + w2 * x[i + 1]
(zero padding of u at the border is zero padding of x). In 2-D the four phases (a, b) are four
2x2 convolutions of x: 16 multiply-adds per input pixel and channel pair instead of the 36 of the
up-sampled 3x3 convolution (2.25x fewer), and the 4x up-sampled input is never materialised.
All four phases come from ONE 2x2 convolution with 4 * C_out filters and padding 1, whose output
(H + 1) x (W + 1) holds phase (a, b) at rows a .. a + H - 1 and columns b .. b + W - 1.

The result equals `conv3x3(interpolate(x, 2, "nearest"))` up to float rounding (the kernel taps are
summed before the products). DC-AE's UpBlock adds its channel-to-space shortcut in the same pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _tap_matrix(dtype: torch.dtype, device) -> Tensor:
    """(9, 16) 0/1 matrix: 3x3 tap (t, u) -> 2x2 tap (r, s) of phase (a, b), columns ordered (a, b, r, s)."""
    per_axis = torch.zeros(3, 2, 2, dtype=dtype, device=device)  # (3-tap, phase, 2-tap)
    per_axis[0, 0, 0] = per_axis[1, 0, 1] = per_axis[2, 0, 1] = 1  # a = 0: [t0, t1 + t2]
    per_axis[0, 1, 0] = per_axis[1, 1, 0] = per_axis[2, 1, 1] = 1  # a = 1: [t0 + t1, t2]
    return torch.einsum("tar,ubs->tuabrs", per_axis, per_axis).reshape(9, 16)


def phase_kernels(weight: Tensor) -> Tensor:
    """(C_out, C_in, 3, 3) -> (4 * C_out, C_in, 2, 2); filter (2a + b) * C_out + o is phase (a, b) of o."""
    c_out, c_in = weight.shape[:2]
    k = weight.reshape(c_out * c_in, 9) @ _tap_matrix(weight.dtype, weight.device)  # sums of 1, 2 or 4 taps
    k = k.view(c_out, c_in, 2, 2, 2, 2).permute(2, 3, 0, 1, 4, 5)  # (a, b, C_out, C_in, r, s)
    return k.reshape(4 * c_out, c_in, 2, 2)


def _phase_views(out: Tensor, c_out: int) -> Tensor:
    """out (B, C_out, 2H, 2W) -> a (B, H, 2, W, 2, C_out) view indexed [:, i, a, j, b, o] = out[:, o, 2i+a, 2j+b]."""
    b, _, h2, w2 = out.shape
    return out.permute(0, 2, 3, 1).unflatten(1, (h2 // 2, 2)).unflatten(3, (w2 // 2, 2))


def _shortcut_views(x: Tensor, c_out: int) -> list[list[Tensor]]:
    """The channel-to-space shortcut per phase: [a][b] -> (B, H, W, C_out) views of x (B, C_in, H, W).

    The shortcut repeats each input channel r = 4 C_out / C_in times and pixel-shuffles by 2, so phase
    (a, b) of output channel o reads input channel (4o + 2a + b) // r (r in 1, 2, 4).
    """
    r = 4 * c_out // x.shape[1]
    t = x.permute(0, 2, 3, 1)  # (B, H, W, C_in)
    if r == 4:
        return [[t, t], [t, t]]
    if r == 2:
        t = t.unflatten(-1, (c_out, 2))  # channel 2o + a
        return [[t[..., a], t[..., a]] for a in (0, 1)]
    t = t.unflatten(-1, (c_out, 2, 2))  # channel 4o + 2a + b
    return [[t[..., a, b] for b in (0, 1)] for a in (0, 1)]


def upsample_conv(x: Tensor, weight: Tensor, bias: Tensor | None, shortcut: bool = False) -> Tensor:
    """conv3x3(nearest_x2(x), weight, bias, padding 1) [+ channel-to-space shortcut of x], channels-last.

    x (B, C_in, H, W) -> (B, C_out, 2H, 2W). With `shortcut`, 4 C_out must be C_in, 2 C_in or 4 C_in.
    """
    b, c_in, height, width = x.shape
    c_out = weight.shape[0]
    if shortcut and (4 * c_out) % c_in or shortcut and 4 * c_out // c_in not in (1, 2, 4):
        raise ValueError(f"channel-to-space shortcut needs 4 * C_out / C_in in (1, 2, 4), "
                         f"got C_in {c_in}, C_out {c_out}")
    x = x.contiguous(memory_format=torch.channels_last)
    bias4 = None if bias is None else bias.repeat(4)
    y = F.conv2d(x, phase_kernels(weight), bias4, padding=1)  # (B, 4 C_out, H + 1, W + 1)
    phases = y.permute(0, 2, 3, 1).unflatten(-1, (2, 2, c_out))  # (B, H + 1, W + 1, a, b, C_out)
    out = torch.empty(b, c_out, 2 * height, 2 * width, dtype=y.dtype, device=y.device,
                      memory_format=torch.channels_last)
    grid = _phase_views(out, c_out)
    skip = _shortcut_views(x, c_out) if shortcut else None
    for a in (0, 1):
        for bb in (0, 1):
            src = phases[:, a : a + height, bb : bb + width, a, bb]  # (B, H, W, C_out)
            if skip is None:
                grid[:, :, a, :, bb].copy_(src)
            else:
                torch.add(src, skip[a][bb], out=grid[:, :, a, :, bb])
    return out
