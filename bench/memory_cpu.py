"""Measured CPU memory of a real-size 1.6B generation, per weight storage dtype, next to the dry run.

    .venv-test/bin/python -m bench.memory_cpu [--dtype bf16] [--size 1024] [--preset sprint_1600m]

One fresh process per dtype (run the command once per dtype). Real architectures with random weights:
gemma-2-2b (transformers' Gemma2Model, 256000-row embedding), the Sprint DiT preset, DC-AE f32c32;
stored as `precision.plan(dtype, "cpu")` says (auto = bf16 storage). Measured on Linux from
/proc/self/status: the resident memory each model's weights add (VmRSS after building it, minus
before), and for each stage the peak resident memory it adds over what was resident before
(VmHWM reset through clear_refs): Gemma-2 encoding a CHI + 300-token prompt, one DiT step at the
size, the DC-AE decode. The stage peaks are activations + temporaries + the cast-at-use copies of
the compute path (a bf16 or fp8 weight cast to fp32 per layer on a CPU without native bf16). Then
the mode peaks by bench/memory_modes.py's formulas from the measured numbers, to compare with its
dry run (GPU, bf16 compute). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import json

import torch

from bench.measure import _status_kib, machine, peak_rss_delta_mib
from bench.memory_modes import CHI_TOKENS, mode_peaks
from bench.random_weights import fill_random
from sana_sprint_core import precision
from sana_sprint_core.constants import LATENT_CHANNELS, LATENT_DOWNSCALE, MAX_TEXT_TOKENS
from sana_sprint_core.dcae import DCAE, DCAE_F32C32, decode
from sana_sprint_core.dit import SanaSprintDiT
from sana_sprint_core.dit_config import PRESETS
from sana_sprint_core.offload import streamed_parts
from sana_sprint_core.sampler import sample
from sana_sprint_core.text_encoder import store_weights

GIB = 1024**3


def _resident(build) -> tuple[object, float]:
    gc.collect()
    before = _status_kib("VmRSS")
    model = build()
    gc.collect()
    return model, (_status_kib("VmRSS") - before) * 1024


def _gemma(storage, compute):
    from transformers import Gemma2Config, Gemma2Model

    with torch.device("meta"):
        model = Gemma2Model(Gemma2Config(attn_implementation="eager")).to(compute)
    model.to_empty(device="cpu")
    fill_random(model, 0)
    if storage != compute:
        store_weights(model, storage, compute)
    return model.eval().requires_grad_(False)


def _dit(preset, storage, compute):
    with torch.device("meta"):
        dit = SanaSprintDiT(PRESETS[preset], dtype=storage)
    dit.to_empty(device="cpu")
    fill_random(dit, 1)
    dit.compute_dtype = compute
    return dit.eval().requires_grad_(False)


def _vae(dtype):
    with torch.device("meta"):
        vae = DCAE(DCAE_F32C32, dtype=dtype)
    vae.to_empty(device="cpu")
    fill_random(vae, 2)
    return vae.eval().requires_grad_(False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="auto", help="auto (bf16), bf16, fp8_e4m3fn, fp32 (needs about 19 GB)")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--preset", default="sprint_1600m", choices=("sprint_1600m", "sprint_600m"))
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    plan = precision.plan(args.dtype, "cpu")
    text, w_text = _resident(lambda: _gemma(plan.text_encoder, plan.text_encoder_compute))
    dit, w_dit = _resident(lambda: _dit(args.preset, plan.dit, plan.dit_compute))
    vae, w_vae = _resident(lambda: _vae(plan.vae))
    tokens = CHI_TOKENS + MAX_TEXT_TOKENS - 2
    ids = torch.randint(0, 1000, (1, tokens))
    acts = {"text": peak_rss_delta_mib(lambda: text(input_ids=ids, attention_mask=torch.ones_like(ids),
                                                    use_cache=False)) * 2**20}
    ctx = torch.randn(1, MAX_TEXT_TOKENS, dit.config.caption_channels)
    mask = torch.ones(1, MAX_TEXT_TOKENS, dtype=torch.int64)
    acts["dit"] = peak_rss_delta_mib(lambda: sample(dit, ctx, mask, width=args.size, height=args.size, steps=1,
                                                    seed=0)) * 2**20
    side = args.size // LATENT_DOWNSCALE
    z = torch.randn(1, LATENT_CHANNELS, side, side)
    acts["decode"] = peak_rss_delta_mib(lambda: decode(vae, z)) * 2**20
    acts["decode_tiled"] = peak_rss_delta_mib(lambda: decode(vae, z, tiled=True, tile=16, overlap=4)) * 2**20
    weights = {"text": w_text, "dit": w_dit, "vae": w_vae,
               "dit_part": max(sum(t.nbytes for t in part.parameters()) for part in streamed_parts(dit))}
    gib = lambda d: {k: round(v / GIB, 3) for k, v in d.items()}  # noqa: E731
    print(json.dumps({"preset": args.preset, "size": args.size, "dtype": args.dtype, "method": "measured CPU RSS",
                      "storage": {"text": str(plan.text_encoder), "dit": str(plan.dit), "vae": str(plan.vae)},
                      "compute": {"text": str(plan.text_encoder_compute), "dit": str(plan.dit_compute)},
                      "weights_gib": gib(weights), "activations_gib": gib(acts),
                      "peak_gib": gib(mode_peaks(weights, acts)), "machine": machine()}))


if __name__ == "__main__":
    main()
