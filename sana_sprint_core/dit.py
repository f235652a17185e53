"""The Sana / Sana-Sprint DiT: flow-velocity transformer (reference: sana_sprint_model.md 1.2)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .dit_config import DiTConfig
from .dit_layers import (
    ATTENTION_IMPLS,
    GLUMBConv,
    CaptionProjection,
    CrossAttention,
    LinearSelfAttention,
    RMSNorm,
    TimeGuidanceEmbed,
    mask_to_bias,
)
from .ops import factory_kwargs, resolve


def layer_norm(x: Tensor, eps: float) -> Tensor:
    """LayerNorm over the last dim without affine parameters."""
    return F.layer_norm(x, (x.shape[-1],), eps=eps)


class BlockInputs(NamedTuple):
    """What every block sees besides the image tokens (handed to a `block_hook`)."""

    y: Tensor  # (B, L, D) projected, normalised caption
    bias: Tensor | None  # (B, 1, 1, L) additive caption-mask bias
    t0: Tensor  # (B, 6D) adaLN-single conditioning
    hw: tuple[int, int]  # token grid (H/p, W/p)


# hook(i, h, inputs) runs after block i with its output h (B, N, D); it returns residuals for later
# block inputs ({j: tokens}, j > i) or None. The NVlabs ControlNet starts its stream this way.
BlockHook = Callable[[int, Tensor, BlockInputs], "Mapping[int, Tensor] | None"]


class SanaBlock(nn.Module):
    """adaLN-single block: modulated linear self-attn, plain cross-attn, modulated GLUMBConv."""

    def __init__(self, cfg: DiTConfig, *, operations=None, dtype=None, device=None):
        super().__init__()
        mk = dict(operations=operations, dtype=dtype, device=device)
        dim, self.eps = cfg.hidden_size, cfg.norm_eps
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim, **factory_kwargs(dtype, device)) / dim**0.5)
        self.attn1 = LinearSelfAttention(dim, cfg.num_heads, cfg.qk_norm, cfg.linear_attn_eps, **mk)
        self.attn2 = CrossAttention(dim, cfg.cross_heads, cfg.qk_norm, **mk)
        self.ff = GLUMBConv(dim, cfg.mlp_hidden, **mk)

    def forward(self, x: Tensor, y: Tensor, bias: Tensor | None, t0: Tensor, hw: tuple[int, int]) -> Tensor:
        """x (B, N, D) image tokens, y (B, L, D) caption, t0 (B, 6D) adaLN-single conditioning."""
        # cast at use: a host's low-VRAM offload may leave this non-leaf parameter on another device
        table = self.scale_shift_table.to(device=t0.device, dtype=t0.dtype)
        mod = table[None] + t0.unflatten(1, (6, -1))  # (B, 6, D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)
        h = (layer_norm(x, self.eps) * (1 + scale_msa) + shift_msa).to(x.dtype)
        x = x + gate_msa * self.attn1(h)
        x = x + self.attn2(x, y, bias)
        h = layer_norm(x, self.eps) * (1 + scale_mlp) + shift_mlp
        h = h.unflatten(1, hw).permute(0, 3, 1, 2)  # (B, D, H, W) as a channels-last view, no copy
        ff = self.ff(h).permute(0, 2, 3, 1).flatten(1, 2)  # (B, N, D); free when the convs kept channels-last
        return x + gate_mlp * ff


class SanaSprintDiT(nn.Module):
    """Predicts the flow-matching velocity v = eps - x0 at flow time tau (B,) in [0, 1]."""

    def __init__(self, config: DiTConfig, *, operations=None, dtype=None, device=None):
        super().__init__()
        self.config = config
        ops, kw = resolve(operations), factory_kwargs(dtype, device)
        mk = dict(operations=operations, dtype=dtype, device=device)
        dim, p = config.hidden_size, config.patch_size
        self.patch_embed = nn.Module()
        self.patch_embed.proj = ops.Conv2d(config.in_channels, dim, p, stride=p, **kw)
        self.time_embed = TimeGuidanceEmbed(dim, config.guidance_embeds, **mk)
        self.caption_projection = CaptionProjection(config.caption_channels, dim, **mk)
        self.caption_norm = RMSNorm(dim, 1e-5, **kw)
        self.transformer_blocks = nn.ModuleList(SanaBlock(config, **mk) for _ in range(config.num_layers))
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim, **kw) / dim**0.5)
        self.proj_out = ops.Linear(dim, p * p * config.out_channels, **kw)
        self.gradient_checkpointing = False

    @property
    def dtype(self) -> torch.dtype:
        """The storage dtype of the weights."""
        return self.proj_out.weight.dtype

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the layers compute in (inputs are cast to it): set by the loader when it differs
        from the storage dtype (fp8 weights; bf16 weights on a CPU without bf16: precision.py)."""
        return getattr(self, "_compute_dtype", None) or self.dtype

    @compute_dtype.setter
    def compute_dtype(self, dtype: torch.dtype | None) -> None:
        self._compute_dtype = dtype

    def embed_conditions(self, timestep: Tensor, guidance: Tensor | None, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(t0, c) from flow time tau and the raw guidance scale (scaled here by the config)."""
        cfg = self.config
        t_in = timestep * cfg.time_input_scale
        g_in = None if guidance is None else guidance * cfg.guidance_embed_scale
        return self.time_embed(t_in, g_in, dtype)

    def forward(
        self,
        x: Tensor,
        timestep: Tensor,
        context: Tensor,
        context_mask: Tensor | None = None,
        guidance: Tensor | None = None,
        block_residuals: Mapping[int, Tensor] | None = None,
        block_hook: BlockHook | None = None,
    ) -> Tensor:
        """x (B, C, H, W), timestep tau (B,), context (B, L, caption_channels), mask (B, L) -> (B, C, H, W).

        `block_residuals` maps a block index i to tokens (B, N, D) added to the input of block i
        (the ControlNet injection point); i == num_layers is the input of the final layer.
        `block_hook` (see BlockHook) may add more residuals after each block.
        """
        b, _, height, width = x.shape
        p = self.config.patch_size
        hw = (height // p, width // p)
        # (B, N, D), n = row * W + col; contiguous, so the whole residual stream is token-major
        h = self.patch_embed.proj(x).flatten(2).transpose(1, 2).contiguous()
        t0, c = self.embed_conditions(timestep, guidance, h.dtype)
        y = self.caption_norm(self.caption_projection(context))
        bias = mask_to_bias(context_mask, h.dtype)
        depth = len(self.transformer_blocks)
        residuals = _checked_residuals({}, block_residuals, -1, depth)
        for i, block in enumerate(self.transformer_blocks):
            if i in residuals:
                h = h + residuals.pop(i)
            h = self._run_block(block, h, y, bias, t0, hw)
            if block_hook is not None:
                residuals = _checked_residuals(residuals, block_hook(i, h, BlockInputs(y, bias, t0, hw)), i, depth)
        if depth in residuals:
            h = h + residuals.pop(depth)
        return self.unpatchify(self.final_layer(h, c), hw)

    def _run_block(self, block, h, y, bias, t0, hw):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, h, y, bias, t0, hw, use_reentrant=False)
        return block(h, y, bias, t0, hw)

    def final_layer(self, h: Tensor, c: Tensor) -> Tensor:
        """T2I final layer: modulated by c (time + CFG embedding, before t_block), then Linear."""
        table = self.scale_shift_table.to(device=c.device, dtype=c.dtype)  # cast at use, as in SanaBlock
        shift, scale = (table[None] + c[:, None]).chunk(2, dim=1)  # (B, 1, D) each
        return self.proj_out(layer_norm(h, 1e-6) * (1 + scale) + shift)

    def unpatchify(self, h: Tensor, hw: tuple[int, int]) -> Tensor:
        """(B, N, p*p*C) -> (B, C, H*p, W*p)."""
        p, c = self.config.patch_size, self.config.out_channels
        h = h.reshape(h.shape[0], hw[0], hw[1], p, p, c).permute(0, 5, 1, 3, 2, 4)  # (B, C, h, p, w, p)
        return h.reshape(h.shape[0], c, hw[0] * p, hw[1] * p)


def _checked_residuals(
    into: dict[int, Tensor], new: Mapping[int, Tensor] | None, after: int, depth: int
) -> dict[int, Tensor]:
    """`into` plus `new` (summed where both have an index); new indices must lie in (after, depth]."""
    if not new:
        return into
    bad = sorted(i for i in new if not after < i <= depth)
    if bad:
        raise ValueError(f"residual block indices {bad} are out of range: expected {after + 1}..{depth} "
                         f"(block inputs; {depth} = the final layer's input) for a {depth}-layer DiT")
    out = dict(into)
    for i, r in new.items():
        out[i] = out[i] + r if i in out else r
    return out


def set_cross_attention(model: nn.Module, impl: str) -> None:
    """Choose the cross-attention kernel of every block: "sdpa" (fused) or "math" (fp32, JVP-safe)."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"cross-attention impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
    for module in model.modules():
        if isinstance(module, CrossAttention):
            module.impl = impl
