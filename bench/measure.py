"""Measurement helpers shared by the benchmarks: alternating timings and peak resident memory."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_rss_delta_mib(fn: Callable[[], object]) -> float:
    """Peak resident memory added while fn runs (Linux: VmHWM reset through clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current RSS
    base = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - base) / 1024


# Environment of the fresh memory processes: a fixed mmap threshold makes glibc return every freed
# buffer above 64 KiB to the OS, so the resident high-water mark is the live peak (without it the
# same run varied 2x between processes: bench_dit's 1024 px forward read 95-226 MiB).
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def peak_in_subprocess(argv: list[str]) -> float:
    """Run `python argv...` in a fresh process (MEMORY_ENV) that prints its peak as the last line (MiB).

    A fresh process per side keeps one side's allocator cache from hiding the other's peak.
    """
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, *argv], check=True, capture_output=True, text=True,
                         env={**os.environ, **MEMORY_ENV}).stdout
    return float(out.strip().splitlines()[-1])


def alternate(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run each fn in turn, `repeats` rounds after `warmup` rounds; wall seconds per run."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[name].append(dt)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """A one-line description of where the numbers were taken: the CPU, its vector extensions as torch
    dispatches them, native bf16 or not, threads and torch."""
    from sana_sprint_core.precision import cpu_has_bf16

    return (f"{cpu_model()} ({torch.backends.cpu.get_cpu_capability()}, native bf16 "
            f"{'yes' if cpu_has_bf16() else 'no'}), {os.cpu_count()} CPU threads, torch {torch.__version__} "
            f"({torch.get_num_threads()} intra-op threads)")
