"""CUDA-only checks of the speed paths, for a machine with a GPU (never part of the CPU test suite).

    python -m bench.cuda_check

CUDA-graph sampling (sana_sprint_core.acceleration.CudaGraphTrigFlow) must give the eager sampler's
latents on a small random DiT, 4 steps, within float32 rounding (1e-5). Exits 1 with the difference
when it does not, 2 when no CUDA device is present.
"""

from __future__ import annotations

import sys

import torch

from sana_sprint_core.acceleration import CudaGraphTrigFlow
from sana_sprint_core.dit import SanaSprintDiT
from sana_sprint_core.dit_config import DiTConfig
from sana_sprint_core.sampler import sample

SMALL = DiTConfig(hidden_size=64, num_layers=2, num_heads=2, cross_heads=4, caption_channels=48)


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing checked", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    dit = SanaSprintDiT(SMALL).cuda().eval()
    embeds, mask = torch.randn(1, 7, 48, device="cuda"), torch.ones(1, 7, dtype=torch.int64, device="cuda")
    kw = dict(width=128, height=96, steps=4, seed=3)
    want = sample(dit, embeds, mask, **kw)
    got = sample(CudaGraphTrigFlow(dit), embeds, mask, **kw)
    diff = float((got - want).abs().max())
    print(f"CUDA graph vs eager, 4 steps: max |diff| {diff:.3g} ({torch.cuda.get_device_name()})")
    return 0 if diff <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
