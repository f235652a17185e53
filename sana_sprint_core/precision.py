"""Storage dtype (what the weights are kept in) versus compute dtype (what the layers run in).

A model's weights may be stored in a dtype the device cannot or should not compute in: fp8
(torch.float8_e4m3fn / float8_e5m2: half the memory of bf16), or bf16 on a CPU without native bf16
instructions, where bf16 matrix products are emulated and many times slower than fp32 (Gemma-2
encoding took about 21 minutes in bf16 on an AVX2-only EPYC). The layers of `ops.py` then cast each
weight to the compute dtype when they use it (one weight at a time, so the extra memory is the
largest single weight), and the models cast their inputs to `compute_dtype`.

The rule (`compute_dtype`): fp32 computes in fp32. On CUDA, bf16 and fp16 compute as stored and fp8
computes in bf16 (fp16 on GPUs without bf16). On the CPU, fp32 unless the CPU has native bf16
(AVX512-BF16 or AMX; then bf16 and fp8 compute in bf16); fp16 always computes in fp32 on the CPU.
`auto_storage` picks what "auto" stores: as the file is on CUDA; bf16 on the CPU for the DiT and
Gemma-2 (half of fp32's memory: the three models of a 1.6B pipeline need about 18 GB in fp32, too
much for a 16 GB machine) with the compute rule above.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FP8_DTYPES = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
STORAGE_DTYPES = {**COMPUTE_DTYPES, **FP8_DTYPES}
_LONG_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
               "float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}


def storage_dtype(dtype: torch.dtype | str, what: str = "dtype") -> torch.dtype:
    """A storage dtype from a torch dtype or a name (fp32, bf16, fp16, fp8_e4m3fn, fp8_e5m2)."""
    resolved = dtype if isinstance(dtype, torch.dtype) else None
    if isinstance(dtype, str):
        resolved = STORAGE_DTYPES.get(dtype.lower()) or _LONG_NAMES.get(dtype.lower())
    if resolved not in STORAGE_DTYPES.values():
        raise ValueError(f"{what} must be one of {', '.join(STORAGE_DTYPES)}, got {dtype!r}")
    return resolved


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype in FP8_DTYPES.values()


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX512-BF16 or AMX), as oneDNN reports it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _cuda_bf16(device: torch.device) -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def compute_dtype(storage: torch.dtype, device: torch.device | str) -> torch.dtype:
    """The dtype layers with `storage` weights compute in on `device` (module doc)."""
    device = torch.device(device)
    if storage == torch.float32:
        return torch.float32
    if device.type == "cuda":
        if is_fp8(storage):
            return torch.bfloat16 if _cuda_bf16(device) else torch.float16
        return storage
    if device.type == "cpu":
        return torch.bfloat16 if storage != torch.float16 and cpu_has_bf16() else torch.float32
    return storage if not is_fp8(storage) else torch.float32


def auto_storage(device: torch.device | str) -> torch.dtype | None:
    """What "auto" stores on `device`: the file's dtype on CUDA (None: the loader keeps it), bf16 on
    the CPU (and other devices)."""
    return None if torch.device(device).type == "cuda" else torch.bfloat16


@dataclass(frozen=True)
class Plan:
    """Storage and compute dtypes of the three models of a pipeline (None storage: keep the file's)."""

    dit: torch.dtype | None
    dit_compute: torch.dtype | None
    text_encoder: torch.dtype
    text_encoder_compute: torch.dtype
    vae: torch.dtype | None


def plan(requested: torch.dtype | str | None, device: torch.device | str) -> Plan:
    """The dtypes of a pipeline for a requested storage dtype (None or "auto": `auto_storage`).

    DiT: the storage dtype, computing per `compute_dtype` (None on CUDA: the file's dtype, computed as
    stored). Gemma-2: the same, but bf16 where fp16 is asked (it overflows fp16 activations). DC-AE:
    the requested dtype when it is fp32/bf16 (fp16 overflows it too), else bf16 on CUDA and fp32
    elsewhere (it is small: fp8 storage is not offered for it)."""
    device = torch.device(device)
    storage = auto_storage(device) if requested in (None, "auto") else storage_dtype(requested)
    dit_compute = None if storage is None else compute_dtype(storage, device)
    te = torch.bfloat16 if storage in (None, torch.float16) else storage
    vae = torch.float32 if storage == torch.float32 or device.type != "cuda" else torch.bfloat16
    return Plan(storage, dit_compute, te, compute_dtype(te, device), vae)
