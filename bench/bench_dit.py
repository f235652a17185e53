"""DiT forward, ours vs diffusers, at the real Sprint 1.6B width with reduced depth (issue 2).

    .venv/bin/python bench/bench_dit.py --layers 2 --repeats 5
    .venv/bin/python bench/bench_dit.py --layers 2 --repeats 5 --compile default   # + ours under torch.compile

Both models hold identical random weights; runs alternate in one process; fp32 on CPU by default.
`--compile MODE` adds a third side: a second copy of ours on the same tensors with every block compiled
(acceleration.compile_dit, inductor); its first call (the compile) is timed separately.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.measure import alternate, machine, median, peak_in_subprocess, peak_rss_delta_mib  # noqa: E402
from sana_sprint_core.dit import SanaSprintDiT  # noqa: E402
from sana_sprint_core.dit_config import PRESETS  # noqa: E402


def build(preset: str, layers: int, dtype):
    import diffusers

    cfg = PRESETS[preset].replace(num_layers=layers)
    ref = diffusers.SanaTransformer2DModel(
        num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim, num_layers=layers,
        num_cross_attention_heads=cfg.cross_heads, cross_attention_head_dim=cfg.cross_head_dim,
        cross_attention_dim=cfg.hidden_size, caption_channels=cfg.caption_channels, sample_size=32,
        interpolation_scale=None, guidance_embeds=True, qk_norm="rms_norm_across_heads",
    ).to(dtype).eval()
    ours = SanaSprintDiT(cfg, dtype=dtype, device="meta")
    ours.load_state_dict(ref.state_dict(), strict=True, assign=True)
    return ours.eval(), ref, cfg


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="sprint_1600m")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--size", type=int, default=1024, help="image side in pixels (latent = size/32)")
    ap.add_argument("--tokens", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--compile", default=None, metavar="MODE", help="also time ours compiled (e.g. default)")
    ap.add_argument("--memory-of", choices=["ours", "diffusers"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    ours, ref, cfg = build(args.preset, args.layers, dtype)
    side = args.size // 32
    x = torch.randn(1, 32, side, side, dtype=dtype)
    ctx = torch.randn(1, args.tokens, cfg.caption_channels, dtype=dtype)
    mask = torch.ones(1, args.tokens, dtype=torch.int64)
    tau, g = torch.tensor([0.8]), torch.tensor([4.5])

    def run_ours():
        return ours(x, tau, ctx, mask, g)

    def run_ref():
        return ref(x, encoder_hidden_states=ctx, timestep=tau, guidance=g * 0.1, encoder_attention_mask=mask,
                   return_dict=False)[0]

    with torch.inference_mode():
        if args.memory_of:  # child process: one warm-up, then the peak of one forward
            fn = run_ours if args.memory_of == "ours" else run_ref
            fn()
            print(peak_rss_delta_mib(fn))
            return
        diff = (run_ours().float() - run_ref().float()).abs().max().item()
        sides = {"ours": run_ours, "diffusers": run_ref}
        if args.compile:
            sides["ours compiled"] = compiled_side(ref, cfg, dtype, args.compile, run_ours, (x, tau, ctx, mask, g))
        times = alternate(sides, repeats=args.repeats)
    child = [__file__, "--preset", args.preset, "--layers", str(args.layers), "--size", str(args.size),
             "--tokens", str(args.tokens), "--dtype", args.dtype, "--memory-of"]
    mem = {side: peak_in_subprocess(child + [side]) for side in ("ours", "diffusers")}
    t_o, t_d = median(times["ours"]), median(times["diffusers"])
    print(f"machine: {machine()}")
    print(f"config: {args.preset} width {cfg.hidden_size}, {args.layers} layers, {side}x{side} latent, "
          f"{args.tokens} tokens, {args.dtype}, {args.repeats} alternating runs; max |ours - diffusers| = {diff:.2e}")
    print("| model | median forward (s) | peak RSS added by a forward (MiB, fresh process) |")
    print("|---|---|---|")
    print(f"| ours | {t_o:.3f} | {mem['ours']:.0f} |")
    print(f"| diffusers | {t_d:.3f} | {mem['diffusers']:.0f} |")
    print(f"| ratio ours/diffusers | {t_o / t_d:.3f} | {mem['ours'] / max(mem['diffusers'], 1e-9):.3f} |")
    if args.compile:
        t_c = median(times["ours compiled"])
        print(f"ours compiled ({args.compile}): median {t_c:.3f} s, {t_c / t_o:.3f} of ours eager, "
              f"{t_c / t_d:.3f} of diffusers")


def compiled_side(ref, cfg, dtype, mode: str, run_ours, inputs):
    """A forward of a second copy of ours (diffusers' tensors, blocks compiled); prints compile time and
    the difference to eager."""
    import time

    from sana_sprint_core.acceleration import compile_dit

    dit = SanaSprintDiT(cfg, dtype=dtype, device="meta")
    dit.load_state_dict(ref.state_dict(), strict=True, assign=True)
    compile_dit(dit.eval(), mode=None if mode == "default" else mode)
    run = lambda: dit(*inputs)
    t0 = time.perf_counter()
    out = run()
    print(f"compile ({mode}) + first forward: {time.perf_counter() - t0:.1f} s; "
          f"max |compiled - eager| = {(out.float() - run_ours().float()).abs().max().item():.2e}")
    return run


if __name__ == "__main__":
    main()
