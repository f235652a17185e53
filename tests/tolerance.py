"""The suite's rule for comparing float32 results (docs/testing.md, "Tolerances").

Two float32 computations of the same function (ours against diffusers, a fast path against the plain
one) differ only by rounding. That difference scales with the size of the values and with the number
of terms each output sums (a 3x3 convolution over 1024 channels sums ~9k products), and it changes with
the thread count and the CPU (oneDNN/MKL split reductions differently on AVX2, AVX-512 and AMX). So a
parity bound is relative to the largest value of the reference, never a bare absolute number:

    max |actual - expected| <= FP32_REL * max(1, max |expected|)

FP32_REL = 1e-5 is about 170 units of float32 round-off (2**-24 = 6e-8). The widest parity test (the
full-width DC-AE stage, values up to 4.8) measured 4.5e-6 at 1 thread, 8.8e-6 at 2 and 1.6e-5 at 2-4
threads on another AMD EPYC (AVX2): 0.9e-6 to 3.3e-6 of its scale, at least 3x inside the bound. The
floor of 1 keeps tensors of small values (|x| < 1) on an absolute 1e-5, as before.
"""

from __future__ import annotations

import torch

FP32_REL = 1e-5


def fp32_bound(expected: torch.Tensor, rel: float = FP32_REL) -> float:
    """The largest difference two float32 computations of `expected` may show."""
    return rel * max(1.0, float(expected.detach().abs().max()))


def assert_fp32_close(actual: torch.Tensor, expected: torch.Tensor, what: str = "", rel: float = FP32_REL) -> None:
    diff = float((actual.detach().float() - expected.detach().float()).abs().max())
    bound = fp32_bound(expected, rel)
    assert diff <= bound, f"{what}: max |diff| {diff:.3g} > {bound:.3g} ({rel:g} x max(1, max |expected|))"
