"""Building blocks of DC-AE f32c32 (reference: sana_sprint_model.md sections 4.2-4.4).

Module and parameter names follow diffusers' `AutoencoderDC`, so its checkpoints load by identity
(the original efficientvit layout is renamed in `keymap.py`). Every layer takes `operations` (the
Linear/Conv2d classes, see ../ops.py), `dtype` and `device`.

Inference saves memory with in-place activations and residual adds; they are only used on tensors
that no autograd graph needs (`_inplace_ok`), so training through the model stays correct.

Fast paths (CPU fp32 inference, `_fast_ok`; switched per model with `set_fast_paths`): the RMS norm
takes its statistic with one fused vector norm and applies weight and bias in one pass, and the
UpBlock runs nearest-x2 + conv3x3 as sub-pixel 2x2 convolutions at the input resolution (subpixel.py).
They equal the plain path up to fp32 rounding (tests/test_acceleration.py states the tolerance).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..constants import DCAE_ATTN_EPS, DCAE_GLU_EXPAND, DCAE_NORM_EPS, DCAE_STAGE_FACTOR
from ..ops import factory_kwargs, resolve
from .subpixel import _phase_views, _shortcut_views, upsample_conv


def _inplace_ok(x: Tensor) -> bool:
    """True when `x` can be overwritten: no autograd graph goes through it."""
    return not (torch.is_grad_enabled() and x.requires_grad)


def _fast_ok(x: Tensor) -> bool:
    """The fast paths run where they were measured to pay: CPU fp32 tensors no autograd graph needs."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and _inplace_ok(x)


def set_fast_paths(model: nn.Module, enabled: bool) -> None:
    """Turn the CPU fp32 fast paths (RMS norm, sub-pixel up-sampling) of every layer on or off."""
    for module in model.modules():
        if isinstance(module, (RMSNorm2d, UpBlock)):
            module.fast = bool(enabled)


def _silu(x: Tensor) -> Tensor:
    """SiLU, in place on a fresh intermediate when autograd does not need it."""
    return F.silu(x, inplace=_inplace_ok(x))


def add_residual(out: Tensor, residual: Tensor) -> Tensor:
    """out + residual, accumulating into `out` (a fresh block output) when allowed."""
    return out.add_(residual) if _inplace_ok(out) else out + residual


def group_mean(x: Tensor, out_channels: int) -> Tensor:
    """Average consecutive channel groups: (B, G*out, H, W) -> (B, out, H, W) ("averaging" shortcut)."""
    return x.unflatten(1, (out_channels, -1)).mean(dim=2)


def space_to_channel_mean(x: Tensor, out_channels: int) -> Tensor:
    """Down-sample shortcut: pixel-unshuffle by 2 (C -> 4C channels), then group_mean to out_channels."""
    return group_mean(F.pixel_unshuffle(x, DCAE_STAGE_FACTOR), out_channels)


def channel_to_space_repeat(x: Tensor, out_channels: int) -> Tensor:
    """Up-sample shortcut: repeat each channel r = 4*out/C times, then pixel-shuffle by 2."""
    r = out_channels * DCAE_STAGE_FACTOR**2 // x.shape[1]
    return F.pixel_shuffle(x.repeat_interleave(r, dim=1), DCAE_STAGE_FACTOR)  # (B, out, 2H, 2W)


def add_channel_to_space(out: Tensor, x: Tensor) -> Tensor:
    """out + channel_to_space_repeat(x, C_out), added into `out` without materialising the shortcut.

    pixel_shuffle puts channel k = 4o + 2a + b of its input at out[o, 2i+a, 2j+b]; after
    repeat_interleave(r) that channel is x[k // r]. For r in (1, 2, 4), k // r = (4/r) o + (2a+b) // r,
    i.e. x viewed as (B, C_out, A, Bb, H, W) with (A, Bb) = (2, 2), (2, 1) or (1, 1), broadcast.
    """
    b, c_out, height, width = out.shape
    f = DCAE_STAGE_FACTOR  # the derivation above is for f = 2 (4 sub-pixels)
    r = f * f * c_out // x.shape[1]
    if f != 2 or r not in (1, 2, 4) or (f * f * c_out) % x.shape[1] or not _inplace_ok(out):
        return out + channel_to_space_repeat(x, c_out)
    if out.is_contiguous():
        grid = out.view(b, c_out, height // f, f, width // f, f).permute(0, 1, 3, 5, 2, 4)  # (B, C_out, a, b, H, W)
        src = x.reshape(b, c_out, f if r <= 2 else 1, f if r == 1 else 1, height // f, width // f)
        grid.add_(src)
        return out
    if not out.is_contiguous(memory_format=torch.channels_last):
        return out + channel_to_space_repeat(x, c_out)
    grid, skip = _phase_views(out, c_out), _shortcut_views(x, c_out)  # the same sums through (B, H, W, C) views
    for a in (0, 1):
        for bb in (0, 1):
            grid[:, :, a, :, bb].add_(skip[a][bb])
    return out


class RMSNorm2d(nn.Module):
    """y = x / sqrt(mean_c x^2 + eps) * w + b over the channel dim of (B, C, H, W), stats in fp32.

    efficientvit's "trms2d" (TritonRMSNorm2d): an RMS norm with weight and bias.
    """

    def __init__(self, channels: int, eps: float = DCAE_NORM_EPS, *, dtype=None, device=None):
        super().__init__()
        kw = factory_kwargs(dtype, device)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels, **kw))
        self.bias = nn.Parameter(torch.zeros(channels, **kw))

    fast = True  # see set_fast_paths

    def forward(self, x: Tensor) -> Tensor:
        if self.fast and _fast_ok(x) and self.weight.dtype == x.dtype:
            return self._fast_forward(x)
        mean_sq = x.float().pow(2).mean(dim=1, keepdim=True)  # (B, 1, H, W)
        out = (x * torch.rsqrt(mean_sq + self.eps)).to(x.dtype)  # normalised in fp32 (half inputs promote)
        w = self.weight.to(x.dtype)[:, None, None]  # (C, 1, 1)
        b = self.bias.to(x.dtype)[:, None, None]
        return out.mul_(w).add_(b) if _inplace_ok(out) else torch.addcmul(b, out, w)

    def _fast_forward(self, x: Tensor) -> Tensor:
        """Same formula: sum of squares by one fused norm kernel, weight and bias in one addcmul pass."""
        mean_sq = torch.linalg.vector_norm(x, dim=1, keepdim=True).square_().div_(x.shape[1])  # (B, 1, H, W)
        out = x * mean_sq.add_(self.eps).rsqrt_()
        return torch.addcmul(self.bias[:, None, None], out, self.weight[:, None, None], out=out)


class ResBlock(nn.Module):
    """x + RMSNorm(Conv3x3(SiLU(Conv3x3(x))), the second conv without bias (efficientvit ResBlock)."""

    def __init__(self, channels: int, *, operations=None, dtype=None, device=None):
        super().__init__()
        ops, kw = resolve(operations), factory_kwargs(dtype, device)
        self.conv1 = ops.Conv2d(channels, channels, 3, padding=1, **kw)
        self.conv2 = ops.Conv2d(channels, channels, 3, padding=1, bias=False, **kw)
        self.norm = RMSNorm2d(channels, **kw)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv2(_silu(self.conv1(x)))
        return add_residual(self.norm(h), x)


def relu_linear_attention(q: Tensor, k: Tensor, v: Tensor, eps: float = DCAE_ATTN_EPS) -> Tensor:
    """out_n = sum_m v_m (k_m . q_n) / (sum_m k_m . q_n + eps), q and k already ReLU'd; in fp32.

    q, k, v: (B, h, d, N), channels first as in efficientvit's LiteMLA. A row of ones under v
    makes one matmul give the numerator and the normaliser (EfficientViT, Cai et al. 2023, Eq. 2).
    """
    q, k, v = q.float(), k.float(), v.float()
    v_pad = F.pad(v, (0, 0, 0, 1), value=1.0)  # (B, h, d+1, N)
    vk = v_pad @ k.transpose(-1, -2)  # (B, h, d+1, d)
    out = vk @ q  # (B, h, d+1, N)
    return out[:, :, :-1] / (out[:, :, -1:] + eps)


def relu_quadratic_attention(q: Tensor, k: Tensor, v: Tensor, eps: float = DCAE_ATTN_EPS) -> Tensor:
    """The same attention with the N x N map made explicit, normalised over keys in fp32.

    Used for tiny maps (N <= head dim), as efficientvit's LiteMLA and diffusers do. (B, h, d, N).
    """
    scores = k.transpose(-1, -2) @ q  # (B, h, N_keys, N_queries)
    s32 = scores.float()
    scores = (s32 / (s32.sum(dim=2, keepdim=True) + eps)).to(v.dtype)
    return v @ scores  # (B, h, d, N)


class MultiscaleProjection(nn.Module):
    """Aggregates q/k/v over a k x k neighbourhood: depthwise kxk conv, then grouped 1x1 conv.

    proj_out has 3*heads groups, i.e. it mixes the channels inside each head_dim-wide slice.
    """

    def __init__(self, channels: int, heads: int, kernel: int, *, operations=None, dtype=None, device=None):
        super().__init__()
        ops, kw = resolve(operations), factory_kwargs(dtype, device)
        self.proj_in = ops.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=channels, bias=False, **kw)
        self.proj_out = ops.Conv2d(channels, channels, 1, groups=3 * heads, bias=False, **kw)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj_out(self.proj_in(x))


class MultiscaleLinearAttention(nn.Module):
    """efficientvit LiteMLA with its residual: x + RMSNorm(to_out(attention(qkv, ms(qkv)))).

    to_q/to_k/to_v are the three row blocks of the original 1x1 `qkv` conv. Their concatenation
    (3C channels) is cut into heads of 3*head_dim consecutive channels, each head taking
    q, k, v = its channels [0:d], [d:2d], [2d:3d] -- a positional split, not the to_q/to_k/to_v
    one (reference 4.3). Each multiscale branch adds another `heads` heads the same way.
    """

    def __init__(
        self, channels: int, head_dim: int, kernels: tuple[int, ...], *, operations=None, dtype=None, device=None
    ):
        super().__init__()
        ops, kw = resolve(operations), factory_kwargs(dtype, device)
        self.head_dim = head_dim
        heads = channels // head_dim
        self.to_q = ops.Linear(channels, channels, bias=False, **kw)
        self.to_k = ops.Linear(channels, channels, bias=False, **kw)
        self.to_v = ops.Linear(channels, channels, bias=False, **kw)
        self.to_qkv_multiscale = nn.ModuleList(
            MultiscaleProjection(3 * channels, heads, k, operations=operations, **kw) for k in kernels
        )
        self.to_out = ops.Linear(channels * (1 + len(kernels)), channels, bias=False, **kw)
        self.norm_out = RMSNorm2d(channels, **kw)

    def _multiscale_qkv(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 3C*(1+len(kernels)), H, W): the [q|k|v] rows, then each branch."""
        t = x.movedim(1, -1)  # (B, H, W, C)
        qkv = torch.cat([self.to_q(t), self.to_k(t), self.to_v(t)], dim=-1).movedim(-1, 1)  # (B, 3C, H, W)
        if not self.to_qkv_multiscale:
            return qkv
        return torch.cat([qkv] + [ms(qkv) for ms in self.to_qkv_multiscale], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        b, _, height, width = x.shape
        n, d = height * width, self.head_dim
        qkv = self._multiscale_qkv(x)
        linear = n > d  # efficientvit/diffusers use the explicit map when H*W <= head_dim
        if linear:
            qkv = qkv.float()
        heads = qkv.reshape(b, -1, 3 * d, n)  # (B, heads_total, 3d, N)
        q, k, v = F.relu(heads[:, :, :d]), F.relu(heads[:, :, d : 2 * d]), heads[:, :, 2 * d :]
        attend = relu_linear_attention if linear else relu_quadratic_attention
        out = attend(q, k, v).to(x.dtype).reshape(b, -1, height, width)  # (B, heads_total*d, H, W)
        out = self.to_out(out.movedim(1, -1)).movedim(-1, 1)  # (B, C, H, W)
        return add_residual(self.norm_out(out), x)


class GLUMBConv(nn.Module):
    """x + RMSNorm(1x1(a * SiLU(g))), [a, g] = dw3x3(SiLU(1x1(x))), hidden 4C (efficientvit GLUMBConv)."""

    def __init__(self, channels: int, *, operations=None, dtype=None, device=None):
        super().__init__()
        ops, kw = resolve(operations), factory_kwargs(dtype, device)
        hidden = DCAE_GLU_EXPAND * channels
        self.conv_inverted = ops.Conv2d(channels, 2 * hidden, 1, **kw)
        self.conv_depth = ops.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden, **kw)
        self.conv_point = ops.Conv2d(hidden, channels, 1, bias=False, **kw)
        self.norm = RMSNorm2d(channels, **kw)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_depth(_silu(self.conv_inverted(x)))  # (B, 2*hidden, H, W)
        a, gate = h.chunk(2, dim=1)
        h = self.conv_point(a * _silu(gate))
        return add_residual(self.norm(h), x)


class EfficientViTBlock(nn.Module):
    """Context (multiscale linear attention) then local (GLUMBConv) module, each residual."""

    def __init__(
        self, channels: int, head_dim: int, kernels: tuple[int, ...], *, operations=None, dtype=None, device=None
    ):
        super().__init__()
        mods = dict(operations=operations, dtype=dtype, device=device)
        self.attn = MultiscaleLinearAttention(channels, head_dim, kernels, **mods)
        self.conv_out = GLUMBConv(channels, **mods)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_out(self.attn(x))


class DownBlock(nn.Module):
    """Conv3x3 stride 2 (C_in -> C_out) + the pixel-unshuffle channel-averaging shortcut."""

    def __init__(self, in_channels: int, out_channels: int, *, operations=None, dtype=None, device=None):
        super().__init__()
        ops, kw = resolve(operations), factory_kwargs(dtype, device)
        self.out_channels = out_channels
        self.conv = ops.Conv2d(in_channels, out_channels, 3, stride=DCAE_STAGE_FACTOR, padding=1, **kw)

    def forward(self, x: Tensor) -> Tensor:
        return add_residual(self.conv(x), space_to_channel_mean(x, self.out_channels))


class UpBlock(nn.Module):
    """x2 up-sampling from C_in to C_out channels plus the channel-duplicating pixel-shuffle shortcut.

    interpolate (DC-AE f32c32): nearest x2 then Conv3x3. pixel_shuffle (DC-AE-Lite): Conv3x3 to 4 C_out
    channels at the input resolution, then pixel shuffle. shortcut=False: the conv alone (the output
    conv of a decoder whose stage 0 has no blocks).
    """

    def __init__(self, in_channels: int, out_channels: int, *, pixel_shuffle: bool = False, shortcut: bool = True,
                 operations=None, dtype=None, device=None):
        super().__init__()
        ops, kw = resolve(operations), factory_kwargs(dtype, device)
        self.out_channels, self.pixel_shuffle, self.shortcut = out_channels, pixel_shuffle, shortcut
        conv_out = out_channels * DCAE_STAGE_FACTOR**2 if pixel_shuffle else out_channels
        self.conv = ops.Conv2d(in_channels, conv_out, 3, padding=1, **kw)

    fast = True  # see set_fast_paths

    def forward(self, x: Tensor) -> Tensor:
        if self.pixel_shuffle:
            out = F.pixel_shuffle(self.conv(x), DCAE_STAGE_FACTOR)
        elif self._subpixel_ok(x):  # the same conv at the input resolution, shortcut added in the same pass
            return upsample_conv(x, self.conv.weight, self.conv.bias, shortcut=True)
        else:
            out = self.conv(F.interpolate(x, scale_factor=DCAE_STAGE_FACTOR, mode="nearest"))  # frees the 4x input
        return add_channel_to_space(out, x) if self.shortcut else out

    def _subpixel_ok(self, x: Tensor) -> bool:
        """Fast path only for the core's own Conv2d (a host's casting layer keeps its own forward)."""
        conv, ratio = self.conv, 4 * self.out_channels / x.shape[1]
        plain = type(conv) in (nn.Conv2d, ops.Conv2d) and conv.weight.dtype == x.dtype
        return self.fast and self.shortcut and plain and _fast_ok(x) and DCAE_STAGE_FACTOR == 2 and ratio in (1, 2, 4)
