"""The layer classes the core builds its models from, swappable by a host.

ComfyUI (and other hosts) pass their own namespace with `Linear` and `Conv2d` classes (manual cast,
fp8 storage, ...). The core never names `torch.nn.Linear` directly in a model.
"""

from __future__ import annotations

import os
import sys
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def linear_as_conv1x1(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x @ W^T + b computed as a 1x1 convolution over a channels-last view (no copies for contiguous x).

    On some x86 CPUs the oneDNN convolution runs this 1.2-2x faster than the GEMM behind F.linear at the
    DiT's sizes, on others slower (bench/bench_linear.py; `conv_linear_faster` measures which); the
    result differs only by fp32 rounding.
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


# Environment override of the CPU linear path: "conv" or "gemm" (default: measured, `conv_linear_faster`).
LINEAR_PATH_ENV = "SANA_SPRINT_CPU_LINEAR"


_MEASURED: dict[str, bool] = {}  # the process-wide result of conv_linear_faster


def conv_linear_faster() -> bool:
    """Whether the oneDNN 1x1-convolution path beats F.linear for fp32 on this CPU, measured once per
    process: a 512 x 1152 -> 1152 product (the 0.6B DiT's width), best of 3 runs of each (well under a
    second on a quiet CPU).
    Which one wins depends on the CPU: 1.2-2x faster on the machine of bench/bench_linear.py, 3x
    slower on an AVX2-only EPYC (docs/benchmarks.md). SANA_SPRINT_CPU_LINEAR=conv or gemm fixes it."""
    if "conv" not in _MEASURED:  # decided once per process: this runs on every fp32 CPU Linear call
        forced = os.environ.get(LINEAR_PATH_ENV, "").strip().lower()
        _MEASURED["conv"] = forced == "conv" if forced in ("conv", "gemm") else _measure_conv_linear()
    return _MEASURED["conv"]


def _measure_conv_linear() -> bool:
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(1, 512, 1152, generator=g), torch.randn(1152, 1152, generator=g) * 0.03
    b = torch.zeros(1152)
    best = {}
    with torch.inference_mode():
        for name, fn in (("gemm", lambda: F.linear(x, w, b)), ("conv", lambda: linear_as_conv1x1(x, w, b))):
            fn()  # warm-up (oneDNN primitive creation)
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            best[name] = min(times)
    return best["conv"] < best["gemm"]


def _conv_path(x: Tensor, weight: Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.ndim >= 2 and x.numel() >= _MIN_ROWS * x.shape[-1]
            and weight.numel() * weight.element_size() <= _MAX_WEIGHT_BYTES and _conv_faster())


def _conv_faster() -> bool:
    """conv_linear_faster, except inside torch.compile (no measuring there): the result measured so far.
    Dynamo can only be compiling when it is imported, so the cheaper module check comes first."""
    if "torch._dynamo" in sys.modules and torch.compiler.is_compiling():
        return _MEASURED.get("conv", False)
    return conv_linear_faster()


def cast_to(x: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """The weight and bias in x's dtype: unchanged when they already are, else a temporary copy (weights
    stored in fp8, or bf16 computed in fp32 on a CPU without bf16: precision.py)."""
    if weight.dtype == x.dtype:
        return weight, bias
    return weight.to(x.dtype), None if bias is None else bias.to(x.dtype)


class Linear(nn.Linear):
    """nn.Linear (same parameters and keys) computing in the input's dtype (weights cast at use when
    stored in another), with the CPU fp32 fast path of `linear_as_conv1x1`."""

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = cast_to(x, self.weight, self.bias)
        if _conv_path(x, weight):
            return linear_as_conv1x1(x, weight, bias)
        return F.linear(x, weight, bias)


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters and keys) computing in the input's dtype, weights cast at use."""

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = cast_to(x, self.weight, self.bias)
        return self._conv_forward(x, weight, bias)


# The default namespace: torch layers that compute in the input's dtype, Linear with the CPU fast path.
default_operations = SimpleNamespace(Linear=Linear, Conv2d=Conv2d)


def resolve(operations):
    """Return `operations` or the default namespace when it is None."""
    return default_operations if operations is None else operations


def factory_kwargs(dtype, device) -> dict:
    """The dtype/device keyword arguments every layer constructor takes."""
    return {"dtype": dtype, "device": device}
