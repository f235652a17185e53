"""DC-AE-Lite's decoder against the f32c32 decoder on this CPU: decode time of the same latent.

    .venv-test/bin/python -m bench.bench_dcae_lite [--latent 32] [--runs 3] [--dtype fp32]

Both decoders at their real sizes (sana_sprint_core.dcae.DCAE_F32C32 and DCAE_LITE_F32C32) with seeded
random weights N(0, 1/fan_in), built by the core; alternate runs after a warm-up, median wall time of
each and the ratio lite / f32c32. NVIDIA's docs give 0.06 s against 0.12 s on a GPU; this is the CPU.
Prints a markdown row for docs/benchmarks.md, with the machine it ran on.
"""

from __future__ import annotations

import argparse

import torch

from bench.measure import alternate, machine, median
from bench.random_weights import fill_random
from sana_sprint_core.dcae import DCAE_F32C32, DCAE_LITE_F32C32, Decoder
from sana_sprint_core.precision import storage_dtype


def random_decoder(config, dtype: torch.dtype, seed: int) -> Decoder:
    with torch.device("meta"):
        decoder = Decoder(config, dtype=dtype)
    return fill_random(decoder.to_empty(device="cpu"), seed).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latent", type=int, default=32, help="latent side (32 = a 1024 px image)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dtype", default="fp32", help="fp32 or bf16")
    args = ap.parse_args()
    dtype = storage_dtype(args.dtype)
    decoders = {"f32c32": random_decoder(DCAE_F32C32, dtype, 0), "lite": random_decoder(DCAE_LITE_F32C32, dtype, 1)}
    params = {k: sum(p.numel() for p in d.parameters()) / 1e6 for k, d in decoders.items()}
    z = torch.randn(1, 32, args.latent, args.latent, generator=torch.Generator().manual_seed(2), dtype=dtype)
    with torch.inference_mode():
        times = alternate({k: (lambda d=d: d(z)) for k, d in decoders.items()}, repeats=args.runs)
    full, lite = median(times["f32c32"]), median(times["lite"])
    print(f"machine: {machine()}")
    side = args.latent
    print(f"| decoder | parameters (M) | decode, latent {side}x{side} {args.dtype} (s) | lite / f32c32 |")
    print("|---|---:|---:|---:|")
    print(f"| f32c32 | {params['f32c32']:.0f} | {full:.2f} | |")
    print(f"| lite | {params['lite']:.0f} | {lite:.2f} | {lite / full:.2f} |")


if __name__ == "__main__":
    main()
