"""F.linear vs the 1x1-convolution path of ops.Linear on CPU at the DiT's matmul sizes.

    .venv/bin/python bench/bench_linear.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.measure import alternate, machine, median  # noqa: E402
from sana_sprint_core.ops import linear_as_conv1x1  # noqa: E402

# (tokens, in, out): self-attn q/k/v/out at 1024px, caption k/v, caption projection, time embed
SIZES = ((1024, 2240, 2240), (300, 2240, 2240), (300, 2304, 2240), (1, 2240, 13440))


def main():
    torch.manual_seed(0)
    print(f"machine: {machine()}")
    print("| tokens x in -> out | F.linear (ms) | conv 1x1 (ms) | ratio |")
    print("|---|---|---|---|")
    with torch.inference_mode():
        for m, d, o in SIZES:
            x, w, b = torch.randn(1, m, d), torch.randn(o, d) * 0.02, torch.randn(o)
            t = alternate({"lin": lambda: F.linear(x, w, b), "conv": lambda: linear_as_conv1x1(x, w, b)}, repeats=7)
            lin, conv = median(t["lin"]) * 1e3, median(t["conv"]) * 1e3
            print(f"| {m} x {d} -> {o} | {lin:.1f} | {conv:.1f} | {conv / lin:.2f} |")


if __name__ == "__main__":
    main()
