"""Building blocks of the Sana DiT (reference: sana_sprint_model.md section 1).

Module and parameter names follow diffusers' `SanaTransformer2DModel`, so its checkpoints load by
identity; NVlabs names are mapped in `dit_loading.py`. Every layer takes `operations` (the layer
classes, see ops.py), `dtype` and `device`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .constants import MASK_BIAS, TIME_FREQ_DIM
from .ops import factory_kwargs, resolve
from .precision import is_fp8


def at_least_fp32(t: Tensor) -> Tensor:
    """Upcast half types to fp32 and keep fp64 (so float64 checks stay exact)."""
    return t if t.dtype == torch.float64 else t.float()


def sinusoid_embedding(t: Tensor, dim: int = TIME_FREQ_DIM, max_period: float = 10000.0) -> Tensor:
    """[cos(t w_i), sin(t w_i)] with w_i = max_period^(-i / (dim/2)), i < dim/2 (cos first), >= fp32."""
    half = dim // 2
    t = at_least_fp32(t)
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=t.dtype, device=t.device) / half)
    args = t[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * w over the last dim; the statistic is taken in fp32."""

    def __init__(self, dim: int, eps: float, *, dtype=None, device=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, **factory_kwargs(dtype, device)))

    def forward(self, x: Tensor) -> Tensor:
        x32 = at_least_fp32(x)
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        w = self.weight
        # the product in the wider of the two dtypes; an fp8-stored weight in x's (it has no arithmetic)
        dtype = x.dtype if is_fp8(w.dtype) else torch.promote_types(x.dtype, w.dtype)
        return (normed.to(dtype) * w.to(dtype)).to(x.dtype)


class EmbedMLP(nn.Module):
    """Linear -> SiLU -> Linear from the 256-d sinusoid to the model width (t and CFG embedders)."""

    def __init__(self, in_dim: int, dim: int, *, operations=None, dtype=None, device=None):
        super().__init__()
        ops, kw = resolve(operations), factory_kwargs(dtype, device)
        self.linear_1 = ops.Linear(in_dim, dim, **kw)
        self.linear_2 = ops.Linear(dim, dim, **kw)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class TimeGuidanceEmbed(nn.Module):
    """c = MLP_t(sin(tau)) [+ MLP_g(sin(g))]; t0 = Linear(SiLU(c)) -> 6D adaLN-single table."""

    def __init__(self, dim: int, guidance: bool, *, operations=None, dtype=None, device=None):
        super().__init__()
        ops, kw = resolve(operations), factory_kwargs(dtype, device)
        mlp = dict(operations=operations, dtype=dtype, device=device)
        self.timestep_embedder = EmbedMLP(TIME_FREQ_DIM, dim, **mlp)
        self.guidance_embedder = EmbedMLP(TIME_FREQ_DIM, dim, **mlp) if guidance else None
        self.linear = ops.Linear(dim, 6 * dim, **kw)

    def forward(self, t: Tensor, g: Tensor | None, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Returns (t0 (B, 6D), c (B, D)); `t` and `g` are the embedder inputs (already scaled)."""
        c = self.timestep_embedder(sinusoid_embedding(t).to(dtype))
        if self.guidance_embedder is not None:
            if g is None:
                raise ValueError("this DiT has a guidance (CFG) embedder: pass `guidance`, e.g. 4.5")
            c = c + self.guidance_embedder(sinusoid_embedding(g).to(dtype))
        return self.linear(F.silu(c)), c


class CaptionProjection(nn.Module):
    """Linear(caption_channels -> D) -> GELU(tanh) -> Linear(D -> D)."""

    def __init__(self, in_dim: int, dim: int, *, operations=None, dtype=None, device=None):
        super().__init__()
        ops, kw = resolve(operations), factory_kwargs(dtype, device)
        self.linear_1 = ops.Linear(in_dim, dim, **kw)
        self.linear_2 = ops.Linear(dim, dim, **kw)

    def forward(self, y: Tensor) -> Tensor:
        return self.linear_2(F.gelu(self.linear_1(y), approximate="tanh"))


def relu_linear_attention(q: Tensor, k: Tensor, v: Tensor, eps: float) -> Tensor:
    """out_n = sum_j v_j (k_j . q_n) / (sum_j k_j . q_n + eps) with phi = ReLU, in fp32.

    q, k, v: (B, h, N, d). A ones column appended to v makes one matmul give both the numerator
    and the normaliser (SANA Sec. 2.2, "ReLU linear attention").
    """
    q, k, v = at_least_fp32(F.relu(q)), at_least_fp32(F.relu(k)), at_least_fp32(v)
    v_pad = F.pad(v, (0, 1), value=1.0)  # (B, h, N, d+1)
    kv = k.transpose(-1, -2) @ v_pad  # (B, h, d, d+1)
    out = q @ kv  # (B, h, N, d+1)
    return out[..., :-1] / (out[..., -1:] + eps)


class LinearSelfAttention(nn.Module):
    """LiteLA: q, k, v (no bias) -> optional RMSNorm across heads -> ReLU linear attention -> out."""

    def __init__(self, dim: int, heads: int, qk_norm: bool, eps: float, *, operations=None, dtype=None, device=None):
        super().__init__()
        ops, kw = resolve(operations), factory_kwargs(dtype, device)
        self.heads, self.eps = heads, eps
        self.to_q = ops.Linear(dim, dim, bias=False, **kw)
        self.to_k = ops.Linear(dim, dim, bias=False, **kw)
        self.to_v = ops.Linear(dim, dim, bias=False, **kw)
        self.norm_q = RMSNorm(dim, 1e-5, **kw) if qk_norm else None
        self.norm_k = RMSNorm(dim, 1e-5, **kw) if qk_norm else None
        self.to_out = nn.ModuleList([ops.Linear(dim, dim, **kw)])

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        if self.norm_q is not None:
            q, k = self.norm_q(q), self.norm_k(k)
        split = lambda t: t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, N, D) -> (B, h, N, d)
        out = relu_linear_attention(split(q), split(k), split(v), self.eps)
        out = out.transpose(1, 2).flatten(2).to(x.dtype)  # (B, N, D)
        out = self.to_out[0](out)
        return out.clip(-65504, 65504) if out.dtype == torch.float16 else out


def mask_to_bias(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """(B, L) keep-mask -> additive bias (B, 1, 1, L) of (1 - m) * -10000."""
    if mask is None:
        return None
    return ((1.0 - mask.to(dtype)) * MASK_BIAS)[:, None, None, :]


def softmax_attention_fp32(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
    """softmax(q k^T / sqrt(d) + bias) v written out in fp32 (NVlabs' "vanilla" path for sCM).

    Unlike fused SDPA kernels it supports forward-mode AD (torch.func.jvp), which the sCM loss needs.
    """
    q32, k32, v32 = at_least_fp32(q), at_least_fp32(k), at_least_fp32(v)
    scores = (q32 @ k32.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, h, N, L)
    if bias is not None:
        scores = scores + bias.to(scores.dtype)
    return (scores.softmax(dim=-1) @ v32).to(q.dtype)


# Cross-attention kernels: fused SDPA for inference, explicit fp32 softmax for JVP training.
ATTENTION_IMPLS = ("sdpa", "math")


class CrossAttention(nn.Module):
    """Softmax attention from image tokens to caption tokens, with optional q/k RMSNorm."""

    impl = "sdpa"  # see ATTENTION_IMPLS; set per instance with dit.set_cross_attention()

    def __init__(self, dim: int, heads: int, qk_norm: bool, *, operations=None, dtype=None, device=None):
        super().__init__()
        ops, kw = resolve(operations), factory_kwargs(dtype, device)
        self.heads = heads
        self.to_q = ops.Linear(dim, dim, **kw)
        self.to_k = ops.Linear(dim, dim, **kw)
        self.to_v = ops.Linear(dim, dim, **kw)
        self.norm_q = RMSNorm(dim, 1e-5, **kw) if qk_norm else None
        self.norm_k = RMSNorm(dim, 1e-5, **kw) if qk_norm else None
        self.to_out = nn.ModuleList([ops.Linear(dim, dim, **kw)])

    def forward(self, x: Tensor, y: Tensor, bias: Tensor | None) -> Tensor:
        q, k, v = self.to_q(x), self.to_k(y), self.to_v(y)
        if self.norm_q is not None:
            q, k = self.norm_q(q), self.norm_k(k)
        split = lambda t: t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, h, L, d)
        if self.impl == "math":
            out = softmax_attention_fp32(split(q), split(k), split(v), bias)
        else:
            out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=bias)
        return self.to_out[0](out.transpose(1, 2).flatten(2))


class GLUMBConv(nn.Module):
    """Mix-FFN: 1x1 (D -> 2H) + SiLU, 3x3 depthwise, a * SiLU(gate), 1x1 (H -> D, no bias)."""

    def __init__(self, dim: int, hidden: int, *, operations=None, dtype=None, device=None):
        super().__init__()
        ops, kw = resolve(operations), factory_kwargs(dtype, device)
        self.conv_inverted = ops.Conv2d(dim, 2 * hidden, 1, **kw)
        self.conv_depth = ops.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden, **kw)
        self.conv_point = ops.Conv2d(hidden, dim, 1, bias=False, **kw)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_depth(F.silu(self.conv_inverted(x)))
        a, gate = h.chunk(2, dim=1)
        return self.conv_point(a * F.silu(gate))
