"""DC-AE f32c32 decode on CPU: ours vs diffusers' AutoencoderDC, same random weights, one process.

    .venv/bin/python bench/bench_dcae.py --latent 32 --runs 3 --tile 20 --overlap 8

Builds the real f32c32 architecture (312 M parameters) with seeded random weights; our model
shares the diffusers tensors (assigned, not copied). After a small warm-up decode of each, runs
alternate ours / diffusers; reports the median wall time of each, their ratio, and the peak resident-memory
growth of each run (Linux VmHWM after resetting it, minus the RSS just before the run, after gc
and malloc_trim; bench/measure.py). Then one tiled decode of ours, measured the same way.
Prints a markdown table (docs/benchmarks.md, "DC-AE decode").
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.measure import machine, peak_rss_delta_mib  # noqa: E402
from sana_sprint_core.dcae import DCAE_F32C32, build_from_state_dict, decode, decode_tiled  # noqa: E402


def diffusers_f32c32(seed: int):
    """diffusers AutoencoderDC with the dc-ae-f32c32-sana config, random weights N(0, 1/fan_in)."""
    from diffusers import AutoencoderDC

    cfg = DCAE_F32C32
    kinds = tuple("EfficientViTBlock" if a else "ResBlock" for a in cfg.decoder_attention)
    ms = tuple(cfg.multiscale_kernels if a else () for a in cfg.decoder_attention)
    with torch.device("meta"):
        model = AutoencoderDC(
            in_channels=3, latent_channels=cfg.latent_channels, attention_head_dim=cfg.attention_head_dim,
            encoder_block_types=kinds, decoder_block_types=kinds, encoder_block_out_channels=cfg.widths,
            decoder_block_out_channels=cfg.widths, encoder_layers_per_block=cfg.encoder_depths,
            decoder_layers_per_block=cfg.decoder_depths, encoder_qkv_multiscales=ms, decoder_qkv_multiscales=ms,
            upsample_block_type="interpolate", downsample_block_type="Conv", decoder_norm_types="rms_norm",
            decoder_act_fns="silu", scaling_factor=cfg.scaling_factor,
        )
    model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim > 1:
                p.copy_(noise / p[0].numel() ** 0.5)
            else:
                p.copy_((1.0 if ".norm" in name and name.endswith("weight") else 0.0) + 0.1 * noise)
    return model.eval()


def _trim() -> None:
    """Return freed heap memory to the OS (glibc), so each run starts from a low RSS."""
    gc.collect()
    if platform.system() == "Linux":
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def measure(fn) -> tuple[float, float]:
    """(seconds, peak RSS growth in MiB) of one call of fn() under no_grad."""
    _trim()
    seconds = []

    def timed():
        t0 = time.perf_counter()
        with torch.no_grad():
            fn()
        seconds.append(time.perf_counter() - t0)

    mib = peak_rss_delta_mib(timed)
    return seconds[0], mib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latent", type=int, default=32, help="latent side (32 = 1024x1024 image)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs of each, alternating")
    ap.add_argument("--tile", type=int, default=20, help="tiled decode: tile side in latent pixels")
    ap.add_argument("--overlap", type=int, default=8, help="tiled decode: overlap in latent pixels")
    ap.add_argument("--warmup-latent", type=int, default=8, help="latent side of the warm-up runs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"load average at the start {os.getloadavg()[0]:.2f}", flush=True)

    ref = diffusers_f32c32(args.seed)
    ours = build_from_state_dict(dict(ref.state_dict()), DCAE_F32C32)  # shares the tensors
    z = torch.randn(1, DCAE_F32C32.latent_channels, args.latent, args.latent, generator=torch.Generator().manual_seed(1))
    scale = DCAE_F32C32.scaling_factor
    outputs: dict[str, torch.Tensor] = {}
    runs = {
        "ours": lambda z: decode(ours, z),
        "diffusers": lambda z: ((ref.decode(z / scale).sample + 1) / 2).clamp(0, 1),
    }
    with torch.no_grad():  # warm-up at a small size (creates the kernels; a full-size one costs minutes)
        for fn in runs.values():
            fn(z[..., : args.warmup_latent, : args.warmup_latent])
    times: dict[str, list[float]] = {k: [] for k in runs}
    mems: dict[str, list[float]] = {k: [] for k in runs}
    for i in range(args.runs):
        for name in runs if i % 2 == 0 else reversed(list(runs)):
            keep = i == 0  # the first output of each is kept for the parity number
            t, m = measure(lambda: outputs.__setitem__(name, runs[name](z)) if keep else runs[name](z))
            times[name].append(t)
            mems[name].append(m)
            print(f"run {i} {name}: {t:.2f} s, peak +{m:.0f} MiB", flush=True)
    diff = (outputs["ours"] - outputs["diffusers"]).abs().max().item()
    outputs.clear()
    t_tiled, m_tiled = measure(lambda: decode_tiled(ours, z, tile=args.tile, overlap=args.overlap))
    print(f"tiled ours: {t_tiled:.2f} s, peak +{m_tiled:.0f} MiB", flush=True)
    _report(args, times, mems, t_tiled, m_tiled, diff)


def _report(args, times, mems, t_tiled, m_tiled, diff) -> None:
    med = {k: statistics.median(v) for k, v in times.items()}
    mem = {k: max(v) for k, v in mems.items()}
    side = args.latent * DCAE_F32C32.downscale
    print(f"\nDC-AE f32c32 decode, latent 1x32x{args.latent}x{args.latent} -> {side}x{side} image, fp32; {machine()}")
    print(f"max |ours - diffusers| = {diff:.2e}; load average at the end {os.getloadavg()[0]:.2f}\n")
    print("| decode | median wall time (s) | runs (s) | peak RSS growth (MiB) |")
    print("|---|---|---|---|")
    for k in times:
        print(f"| {k} | {med[k]:.2f} | {', '.join(f'{t:.2f}' for t in times[k])} | {mem[k]:.0f} |")
    print(f"| ours, tiled {args.tile}/{args.overlap} | {t_tiled:.2f} | 1 run | {m_tiled:.0f} |")
    print(f"\nours / diffusers median time ratio: {med['ours'] / med['diffusers']:.3f}; "
          f"peak memory ratio {mem['ours'] / mem['diffusers']:.3f}; tiled / untiled peak {m_tiled / mem['ours']:.3f}")


if __name__ == "__main__":
    main()
