"""Quality of the cheap weight dtypes at the real size: a 2-step Sprint sample of the 1.6B DiT with
random weights, stored in bf16 / fp8_e4m3fn / fp8_e5m2, against the same weights in fp32.

    .venv-test/bin/python -m bench.precision_quality [--preset sprint_1600m] [--size 512]

Random weights N(0, 1/fan_in) (norm weights 1 + N(0, 0.1^2)), a random 300-token caption, the same noise;
each storage dtype computes as precision.compute_dtype says on this CPU. Reports the relative RMS and
the max abs difference of the latents (docs/benchmarks.md, "Weight dtypes"), with the machine.
"""

from __future__ import annotations

import argparse

import torch

from bench.measure import machine
from bench.random_weights import fill_random
from sana_sprint_core import precision
from sana_sprint_core.dit import SanaSprintDiT
from sana_sprint_core.dit_config import PRESETS
from sana_sprint_core.dit_loading import dit_from_state_dict
from sana_sprint_core.precision import STORAGE_DTYPES
from sana_sprint_core.sampler import sample


def random_dit(preset: str, seed: int = 0) -> SanaSprintDiT:
    with torch.device("meta"):
        dit = SanaSprintDiT(PRESETS[preset])
    return fill_random(dit.to_empty(device="cpu"), seed).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="sprint_1600m", choices=("sprint_1600m", "sprint_600m"))
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--compute", choices=("auto", "fp32"), default="auto",
                    help="fp32: compute as on a CPU without native bf16, whatever this CPU has")
    args = ap.parse_args()
    if args.compute == "fp32":
        precision.cpu_has_bf16 = lambda: False
    torch.set_grad_enabled(False)
    ref = random_dit(args.preset)
    g = torch.Generator().manual_seed(1)
    text = torch.randn(1, 300, ref.config.caption_channels, generator=g)
    mask = torch.ones(1, 300, dtype=torch.int64)
    kw = dict(width=args.size, height=args.size, steps=2, seed=3)
    want = sample(ref, text, mask, **kw)
    print(f"machine: {machine()}")
    print(f"| {args.preset}, {args.size} px, 2 steps | compute | latent rel. RMS error | latent max abs error |")
    print("|---|---|---:|---:|")
    state = ref.state_dict()
    for name in ("bf16", "fp8_e4m3fn", "fp8_e5m2"):
        dtype = STORAGE_DTYPES[name]
        dit = dit_from_state_dict(state, ref.config, dtype=dtype)
        dit.compute_dtype = precision.compute_dtype(dtype, "cpu")
        got = sample(dit, text, mask, **kw)
        rel = ((got - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt()).item()
        print(f"| {name} | {str(dit.compute_dtype).removeprefix('torch.')} | {rel:.4f} | "
              f"{(got - want).abs().max().item():.3f} |", flush=True)
        del dit


if __name__ == "__main__":
    main()
