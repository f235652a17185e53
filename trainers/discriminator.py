"""LADD discriminator: small heads on frozen teacher features (reference 6.6).

The teacher DiT runs as the feature network; forward hooks on `transformer_blocks[i]` collect the
token features (B, N, D) of the chosen blocks, and one head per block turns them into token-wise
logits. Heads follow StyleGAN-T's discriminator head as adapted by SANA-Sprint (LADD Sec. 3):
spectral-norm 1-D convolutions, local batch norm over groups of <= 8 samples, LeakyReLU(0.2).
Only the heads are trained; the teacher is shared with the distillation (no second copy).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from sana_sprint_core.constants import DISC_HEAD_BLOCKS
from sana_sprint_core.constants import DISC_LEAKY_SLOPE as LEAKY_SLOPE
from sana_sprint_core.constants import DISC_RESIDUAL_KERNEL as RESIDUAL_KERNEL
from sana_sprint_core.constants import DISC_VIRTUAL_BATCH as VIRTUAL_BATCH


class BatchNormLocal(nn.Module):
    """Batch norm with statistics per group of samples: ceil(B / virtual_bs) groups.

    Mean and biased variance over (group samples, tokens) per channel; affine weight and bias.
    No running statistics: train and eval behave the same.
    """

    def __init__(self, channels: int, virtual_bs: int = VIRTUAL_BATCH, eps: float = 1e-5):
        super().__init__()
        self.virtual_bs, self.eps = virtual_bs, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, N) -> (B, C, N)."""
        groups = math.ceil(x.shape[0] / self.virtual_bs)
        out = []
        for part in x.tensor_split(groups, dim=0):  # near-equal groups (equal when B % groups == 0)
            mean = part.mean(dim=(0, 2), keepdim=True)  # (1, C, 1)
            var = part.var(dim=(0, 2), keepdim=True, unbiased=False)
            out.append((part - mean) * torch.rsqrt(var + self.eps))
        x = torch.cat(out, dim=0)
        return x * self.weight[None, :, None] + self.bias[None, :, None]


def spectral_conv1d(c_in: int, c_out: int, kernel: int) -> nn.Module:
    """Conv1d (circular padding k // 2, bias) with spectral normalisation of its weight (1 power iteration)."""
    conv = nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2, padding_mode="circular")
    return spectral_norm(conv, n_power_iterations=1, eps=1e-12, dim=0)


class _ConvBlock(nn.Module):
    """SpectralConv1d -> BatchNormLocal -> LeakyReLU(0.2)."""

    def __init__(self, dim: int, kernel: int):
        super().__init__()
        self.conv = spectral_conv1d(dim, dim, kernel)
        self.norm = BatchNormLocal(dim)
        self.act = nn.LeakyReLU(LEAKY_SLOPE)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))


class DiscHead(nn.Module):
    """Token-wise logits from one block's features: (B, N, D) -> (B, N)."""

    def __init__(self, dim: int):
        super().__init__()
        self.block = _ConvBlock(dim, 1)
        self.residual = _ConvBlock(dim, RESIDUAL_KERNEL)
        self.cls = spectral_conv1d(dim, 1, 1)

    def forward(self, feats: Tensor) -> Tensor:
        h = self.block(feats.transpose(1, 2).float())  # (B, D, N)
        h = (self.residual(h) + h) / math.sqrt(2.0)  # StyleGAN-T ResidualBlock
        return self.cls(h).squeeze(1)  # (B, N)


class Discriminator(nn.Module):
    """One DiscHead per hooked teacher block; logits of all heads concatenated (B, heads * N)."""

    def __init__(self, dim: int, blocks: Sequence[int]):
        super().__init__()
        if len(set(blocks)) != len(blocks) or not blocks:
            raise ValueError(f"discriminator head blocks must be distinct and non-empty, got {list(blocks)}")
        self.blocks = [int(b) for b in blocks]
        self.heads = nn.ModuleDict({str(b): DiscHead(dim) for b in self.blocks})

    def forward(self, *feature_sets: dict[int, Tensor]) -> tuple[Tensor, ...]:
        """Each feature set (block index -> (B, N, D)) -> logits (B, len(blocks) * N).

        Several sets (real, fake) go through one call (one DDP forward) but are normalised apart.
        """
        return tuple(torch.cat([self.heads[str(b)](f[b]) for b in self.blocks], dim=1) for f in feature_sets)


def check_head_blocks(blocks: Sequence[int], num_layers: int) -> None:
    """Raise naming the bad indices unless every block index is in [0, num_layers)."""
    bad = [b for b in blocks if not 0 <= b < num_layers]
    if bad:
        raise ValueError(f"distill.head_blocks {list(blocks)} has indices {bad} outside the teacher's "
                         f"{num_layers} blocks (valid: 0..{num_layers - 1})")


def fit_head_blocks(num_layers: int) -> list[int]:
    """DISC_HEAD_BLOCKS when the teacher has them all; a shallower teacher gets the same relative
    depths, block b of 19 -> round(b / 19 * (num_layers - 1)), duplicates dropped (our rule)."""
    blocks = list(DISC_HEAD_BLOCKS)
    if max(blocks) < num_layers:
        return blocks
    last = max(blocks)
    return sorted({round(b / last * (num_layers - 1)) for b in blocks})


@contextmanager
def block_features(dit: nn.Module, blocks: Sequence[int]) -> Iterator[dict[int, Tensor]]:
    """Collect the outputs (B, N, D) of dit.transformer_blocks[i] for i in `blocks` during the body.

    The first output per block is kept (a gradient-checkpoint recompute does not overwrite it).
    """
    feats: dict[int, Tensor] = {}
    handles = []
    for b in blocks:
        def hook(_module, _args, output, b=b):
            feats.setdefault(b, output)
        handles.append(dit.transformer_blocks[b].register_forward_hook(hook))
    try:
        yield feats
    finally:
        for h in handles:
            h.remove()


def teacher_features(teacher: Callable[..., Tensor], dit: nn.Module, blocks: Sequence[int], *args,
                     **kwargs) -> dict[int, Tensor]:
    """Run `teacher(*args, **kwargs)` and return the hooked block features of `dit` (the teacher's DiT;
    for a ControlledDiT its base blocks, so the features carry the control)."""
    with block_features(dit, blocks) as feats:
        teacher(*args, **kwargs)
    missing = [b for b in blocks if b not in feats]
    if missing:
        raise RuntimeError(f"teacher forward did not run blocks {missing}")
    return dict(feats)
