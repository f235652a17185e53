"""The layer classes the core builds its models from, swappable by a host.

ComfyUI (and other hosts) pass their own namespace with `Linear` and `Conv2d` classes (manual cast,
fp8 storage, ...). The core never names `torch.nn.Linear` directly in a model.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def linear_as_conv1x1(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x @ W^T + b computed as a 1x1 convolution over a channels-last view (no copies for contiguous x).

    On x86 CPU builds of torch the oneDNN convolution runs this 1.2-2x faster than the GEMM behind
    F.linear at the DiT's sizes (bench/bench_linear.py); the result differs only by fp32 rounding.
    A non-contiguous x is copied first: a feature-strided x would make the convolution NCHW and its
    output feature-strided too, which slows every later elementwise op (docs/benchmarks.md).
    """
    lead, features = x.shape[:-1], x.shape[-1]
    h = x.contiguous().reshape(1, 1, -1, features).permute(0, 3, 1, 2)  # (1, in, 1, M), channels-last view
    y = F.conv2d(h, weight[:, :, None, None], bias)  # (1, out, 1, M), channels-last
    return y.permute(0, 2, 3, 1).reshape(*lead, weight.shape[0])


# Below this many rows the GEMM is as fast (bench/bench_linear.py: 1 row is slower as a convolution).
_MIN_ROWS = 16
# oneDNN reorders the weight into its blocked layout on every call: a transient copy of the weight.
# Above this size that copy would outweigh the saving in peak memory (Gemma-2's 2304 x 9216 MLP
# weights: +81 MiB per call, against a 17 MiB output); they keep F.linear. The DiT's and DC-AE's
# matrices are at most 2304 x 2240 (19.7 MiB) and keep the fast path.
_MAX_WEIGHT_BYTES = 32 * 2**20


def _conv_path(x: Tensor, weight: Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.ndim >= 2 and x.numel() >= _MIN_ROWS * x.shape[-1]
            and weight.numel() * weight.element_size() <= _MAX_WEIGHT_BYTES)


class Linear(nn.Linear):
    """nn.Linear (same parameters and keys) with the CPU fp32 fast path of `linear_as_conv1x1`."""

    def forward(self, x: Tensor) -> Tensor:
        if _conv_path(x, self.weight):
            return linear_as_conv1x1(x, self.weight, self.bias)
        return super().forward(x)


# The default namespace: torch layers, Linear with the CPU fast path.
default_operations = SimpleNamespace(Linear=Linear, Conv2d=nn.Conv2d)


def resolve(operations):
    """Return `operations` or the default namespace when it is None."""
    return default_operations if operations is None else operations


def factory_kwargs(dtype, device) -> dict:
    """The dtype/device keyword arguments every layer constructor takes."""
    return {"dtype": dtype, "device": device}
