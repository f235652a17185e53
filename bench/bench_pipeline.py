"""SANA-Sprint pipeline, paper Table 2 protocol: ours vs diffusers' SanaSprintPipeline, same weights, one process.

    .venv/bin/python bench/bench_pipeline.py                      # CPU default (about 15 min on 2 cores)
    .venv/bin/python bench/bench_pipeline.py --throughput-size 1024 --repeats 3 --decode-repeats 3   # full
    python bench/bench_pipeline.py --device cuda --dtype bf16 --full-depth --vocab 256000            # H100/H200

Latency at batch 1 and throughput at batch 10 (10 different prompts), for 1, 2 and 4 steps, split
into text encoding (Gemma-2 + prompt handling), transformer steps (the whole sampler: noise, TrigFlow
transform, DiT forwards, re-noising) and decoding (DC-AE + conversion to [0, 1] images). Ours and
diffusers run alternately, round by round (the order flips each round), on the same tensors; the
tables give medians and the ratio ours / diffusers. Peak memory per stage: on CPU the resident-set
growth of one run in a fresh process per side and stage (glibc's mmap threshold fixed at 64 KiB so
freed buffers leave the process; bench/measure.py); on CUDA torch.cuda.max_memory_allocated above
the memory held before the stage. Models: bench/pipeline_models.py (real widths, random weights).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import pipeline_models as pm  # noqa: E402
from bench.measure import machine, peak_in_subprocess, peak_rss_delta_mib  # noqa: E402
from sana_sprint_core.constants import (  # noqa: E402
    DEFAULT_GUIDANCE, LATENT_CHANNELS, LATENT_DOWNSCALE, MAX_TEXT_TOKENS, T_INTERMEDIATE_2STEP,
)
from sana_sprint_core.dcae import decode  # noqa: E402
from sana_sprint_core.sampler import sample  # noqa: E402
from sana_sprint_core.text_cache import PromptCache  # noqa: E402
from sana_sprint_core.text_encoder import encode_prompt  # noqa: E402

STAGES = ("text", "transformer", "decode")
SIDES = ("ours", "diffusers")
PROMPTS = ("a cat on the moon", "A red fox jumps over the lazy dog, photo, golden hour, 4k",
           "portrait of an old sailor, oil painting", "a bowl of ramen, studio light", "snowy mountain lake at dawn",
           "a robot reading a book in a library", "macro photo of a dew drop on a leaf",
           "an isometric pixel-art castle", "a watercolor map of an island", "neon street at night in the rain")


def diffusers_chi() -> list[str]:
    """diffusers' default complex human instruction (its pipeline's default argument)."""
    import inspect

    from diffusers import SanaSprintPipeline

    return inspect.signature(SanaSprintPipeline.__call__).parameters["complex_human_instruction"].default


class Sides:
    """Stage callables of both pipelines for one batch of prompts and one image size.

    Stage inputs: `embeds` and `latents` per side, from the previous stage (`chain`) or synthetic
    ones of the same shapes (`synthetic`, for the memory processes that build one stage's model).
    """

    def __init__(self, ours, ref, prompts: list[str], size: int, device: str):
        self.ours, self.ref, self.prompts, self.size, self.device = ours, ref, prompts, size, device
        self.chi = diffusers_chi()
        self.cache = PromptCache(len(prompts))
        self.embeds: dict = {}
        self.latents: dict = {}

    def chain(self) -> "Sides":
        with torch.inference_mode():
            self.embeds = {side: self.text(side) for side in SIDES}
            self.latents = {side: self.transformer(side, 1) for side in SIDES}
        return self

    def synthetic(self, caption_channels: int, dtype: torch.dtype) -> "Sides":
        g = torch.Generator().manual_seed(0)
        b, side = len(self.prompts), self.size // LATENT_DOWNSCALE
        embeds = torch.randn(b, MAX_TEXT_TOKENS, caption_channels, generator=g).to(self.device, dtype)
        mask = torch.ones(b, MAX_TEXT_TOKENS, dtype=torch.int64, device=self.device)
        latents = torch.randn(b, LATENT_CHANNELS, side, side, generator=g).to(self.device)
        self.embeds = {s: (embeds, mask) for s in SIDES}
        self.latents = {s: latents for s in SIDES}
        return self

    def text(self, side: str, cache: PromptCache | None = None):
        if side == "ours":
            o = pm.DIFFUSERS_PROMPTS
            return encode_prompt(self.ours.text_encoder, self.prompts, chi=o.chi, max_tokens=o.max_tokens,
                                 quote_style=o.quote_style, lowercase=o.lowercase, cache=cache)
        return self.ref.encode_prompt(self.prompts, device=torch.device(self.device),
                                      max_sequence_length=MAX_TEXT_TOKENS, complex_human_instruction=self.chi)

    def transformer(self, side: str, steps: int):
        embeds, mask = self.embeds[side]
        if side == "ours":
            return sample(self.ours.dit, embeds, mask, width=self.size, height=self.size, steps=steps, seed=0,
                          guidance=DEFAULT_GUIDANCE)
        return self.ref(prompt_embeds=embeds, prompt_attention_mask=mask, height=self.size, width=self.size,
                        num_inference_steps=steps, intermediate_timesteps=T_INTERMEDIATE_2STEP if steps == 2 else None,
                        guidance_scale=DEFAULT_GUIDANCE, generator=torch.Generator().manual_seed(0),
                        use_resolution_binning=False, output_type="latent", return_dict=False)[0]

    def decode(self, side: str):
        latents = self.latents[side]
        if side == "ours":
            return decode(self.ours.vae, latents)
        vae = self.ref.vae
        raw = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        return self.ref.image_processor.postprocess(raw, output_type="pt")

    def call(self, stage: str, side: str, steps: int = 1):
        """Run one stage under inference mode ("text_cached": ours through a warm prompt cache)."""
        with torch.inference_mode():
            if stage == "transformer":
                return self.transformer(side, steps)
            if stage == "text_cached":
                return self.text(side, self.cache)
            return getattr(self, stage)(side)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> tuple[float, float]:
    """(wall s, process CPU s) of one call, synchronised on CUDA."""
    _sync(device)
    w, c = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - w, time.process_time() - c


def alternate(sides: Sides, stage: str, steps: int, repeats: int, device: str) -> dict[str, list[tuple]]:
    """`repeats` rounds after one warm-up round; ours first in even rounds, diffusers first in odd ones."""
    out = {"ours": [], "diffusers": []}
    for r in range(repeats + 1):
        for side in ("ours", "diffusers") if r % 2 == 0 else ("diffusers", "ours"):
            t = timed(lambda: sides.call(stage, side, steps), device)
            if r:
                out[side].append(t)
    return out


def parity(sides: Sides) -> dict[str, float]:
    """Max |ours - diffusers| of embeddings, 1-step latents and images (both sides do the same work)."""
    diff = lambda a, b: (a.float() - b.float()).abs().max().item()
    return {"embeds": diff(sides.embeds["ours"][0], sides.embeds["diffusers"][0]),
            "latents_1step": diff(sides.latents["ours"], sides.latents["diffusers"]),
            "images": diff(sides.call("decode", "ours"), sides.call("decode", "diffusers"))}


def run_protocol(sides: Sides, args, label: str) -> list[dict]:
    """Timing rows of one batch/size setting: text (uncached, cached), transformer per step count, decode."""
    sides.call("text_cached", "ours")  # fills the prompt cache
    plan = [("text", 1, args.repeats), ("text_cached", 1, args.repeats)]
    plan += [("transformer", k, args.repeats) for k in _steps(args)] + [("decode", 1, args.decode_repeats)]
    rows = []
    for stage, steps, repeats in plan:
        t = alternate(sides, stage, steps, repeats, args.device)
        name = f"transformer, {steps} step{'s' if steps > 1 else ''}" if stage == "transformer" else stage
        row = {"setting": label, "stage": name, "batch": len(sides.prompts), "size": sides.size}
        for side in SIDES:
            row[f"{side}_wall"] = [round(w, 4) for w, _ in t[side]]
            row[f"{side}_cpu"] = [round(c, 4) for _, c in t[side]]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _steps(args) -> list[int]:
    return [int(k) for k in args.steps.split(",")]


def memory_child(args) -> None:
    """Fresh process: build one stage's models, run the stage once, print the peak of a second run (MiB)."""
    spec = _spec(args)
    ours, ref = pm.build_pair(spec, (args.stage,))
    sides = Sides(ours, ref, list(PROMPTS[: args.batch]), args.size, args.device)
    sides.synthetic(spec.dit_config().caption_channels, spec.dtype)
    fn = lambda: sides.call(args.stage, args.memory_of)
    fn()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        print((torch.cuda.max_memory_allocated() - base) / 2**20)
    else:
        print(peak_rss_delta_mib(fn))


def measure_memory(args) -> dict[str, dict[str, float]]:
    """Peak memory per stage and side, each in a fresh process (CPU) or in-process stats (CUDA)."""
    out = {}
    for stage in STAGES:
        out[stage] = {}
        for side in ("ours", "diffusers"):
            out[stage][side] = peak_in_subprocess([__file__, *args.argv, "--memory-of", side, "--stage", stage,
                                                   "--batch", str(args.latency_batch), "--size", str(args.size)])
            print(f"memory {stage} {side}: {out[stage][side]:.0f} MiB", flush=True)
    return out


def apply_levers(ours, ref, args) -> list[str]:
    """GPU levers on request: per-block torch.compile (ours, optionally diffusers too), CUDA graphs."""
    from sana_sprint_core.acceleration import CudaGraphTrigFlow, compile_dit

    levers = []
    if args.compile:
        compile_dit(ours.dit, mode=None if args.compile == "default" else args.compile)
        levers.append(f"compile ({args.compile})")
        if args.compile_diffusers:
            for block in ref.transformer.transformer_blocks:
                block.compile(fullgraph=False, dynamic=False,
                              **({} if args.compile == "default" else {"mode": args.compile}))
            levers.append("diffusers compiled too")
    if args.cuda_graph:
        ours.dit = CudaGraphTrigFlow(ours.dit)
        levers.append("CUDA graph per step")
    return levers


def _spec(args) -> pm.SetSpec:
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    return pm.SetSpec(preset=args.preset, dit_layers=None if args.full_depth else args.dit_layers,
                      gemma_layers=None if args.full_depth else args.gemma_layers, vocab=args.vocab,
                      device=args.device, dtype=dtype, smoke=args.smoke)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    ap.add_argument("--preset", default="sprint_1600m", choices=("sprint_1600m", "sprint_600m"))
    ap.add_argument("--dit-layers", type=int, default=2, help="DiT depth (CPU default 2; --full-depth: preset's)")
    ap.add_argument("--gemma-layers", type=int, default=2, help="Gemma-2 depth (gemma-2-2b: 26, --full-depth)")
    ap.add_argument("--full-depth", action="store_true", help="real depths: DiT preset and Gemma-2-2b's 26 layers")
    ap.add_argument("--vocab", type=int, default=None, help="Gemma embedding rows (256000 = real; default: tokenizer)")
    ap.add_argument("--size", type=int, default=1024, help="latency image side (pixels)")
    ap.add_argument("--latency-batch", type=int, default=1)
    ap.add_argument("--throughput-batch", type=int, default=10)
    ap.add_argument("--throughput-size", type=int, default=256, help="image side of the throughput runs")
    ap.add_argument("--steps", default="1,2,4")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds of text and transformer stages")
    ap.add_argument("--decode-repeats", type=int, default=2, help="timed rounds of the decode stage")
    ap.add_argument("--skip", default="", help="comma list of: latency, throughput, memory")
    ap.add_argument("--compile", default=None, metavar="MODE",
                    help="torch.compile our DiT per block (acceleration.compile_dit), e.g. default, max-autotune")
    ap.add_argument("--compile-diffusers", action="store_true", help="compile diffusers' blocks the same way")
    ap.add_argument("--cuda-graph", action="store_true", help="ours: replay a captured CUDA graph per step")
    ap.add_argument("--smoke", action="store_true", help="tiny models (tests: the script runs end to end)")
    ap.add_argument("--json", default=None, help="write all rows and the memory table to this file")
    ap.add_argument("--memory-of", choices=("ours", "diffusers"), help=argparse.SUPPRESS)
    ap.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    return ap


def report(rows: list[dict], memory: dict | None, meta: dict) -> str:
    """Markdown: per setting, medians and ratios per stage, end-to-end latency per step count; memory table."""
    med = lambda v: statistics.median(v)
    lines = [f"machine: {meta['machine']}; device {meta['device']}, {meta['dtype']}; load average "
             f"{meta['load_start']:.1f} at the start, {meta['load_end']:.1f} at the end; "
             f"ours with: {', '.join(meta.get('ours_levers') or ['no GPU levers'])}", ""]
    for setting in dict.fromkeys(r["setting"] for r in rows):
        part = [r for r in rows if r["setting"] == setting]
        lines += [f"**{setting}**", "", "| stage | ours (s) | diffusers (s) | ours / diffusers | CPU-time ratio |",
                  "|---|---|---|---|---|"]
        stage = {r["stage"]: r for r in part}
        for r in part:
            o, d = med(r["ours_wall"]), med(r["diffusers_wall"])
            cpu = med(r["ours_cpu"]) / med(r["diffusers_cpu"])
            note = " (ours: prompt-cache hit; diffusers has none)" if r["stage"] == "text_cached" else ""
            lines.append(f"| {r['stage']}{note} | {o:.3f} | {d:.3f} | {o / d:.2f} | {cpu:.2f} |")
        if "transformer, 1 step" in stage:  # the paper's 0.1 s figure: 1 step + decode
            one = {s: med(stage["transformer, 1 step"][f"{s}_wall"]) + med(stage["decode"][f"{s}_wall"]) for s in SIDES}
            lines.append(f"| transformer 1 step + decode | {one['ours']:.3f} | {one['diffusers']:.3f} | "
                         f"{one['ours'] / one['diffusers']:.2f} | |")
        for name in (k for k in stage if k.startswith("transformer")):
            tot = {s: sum(med(stage[k][f"{s}_wall"]) for k in ("text", name, "decode")) for s in SIDES}
            b = part[0]["batch"]
            rate = f"{b / tot['ours']:.3f} vs {b / tot['diffusers']:.3f} img/s"
            lines.append(f"| end to end, {name.split(', ')[1]} | {tot['ours']:.2f} | {tot['diffusers']:.2f} | "
                         f"{tot['ours'] / tot['diffusers']:.2f} | {rate} |")
        lines.append("")
    if memory:
        lines += ["| peak memory per stage (MiB) | ours | diffusers | ours / diffusers |", "|---|---|---|---|"]
        for st, v in memory.items():
            ratio = v["ours"] / max(v["diffusers"], 1e-9)
            lines.append(f"| {st} | {v['ours']:.0f} | {v['diffusers']:.0f} | {ratio:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.memory_of:
        memory_child(args)
        return ""
    torch.manual_seed(0)
    meta = {"machine": machine(), "device": args.device, "dtype": args.dtype, "load_start": os.getloadavg()[0]}
    spec = _spec(args)
    ours, ref = pm.build_pair(spec)
    meta["ours_levers"] = apply_levers(ours, ref, args)
    rows, skip = [], set(filter(None, args.skip.split(",")))
    settings = [("latency", args.latency_batch, args.size), ("throughput", args.throughput_batch, args.throughput_size)]
    for label, batch, size in settings:
        if label in skip:
            continue
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
        sides = Sides(ours, ref, prompts, size, args.device).chain()
        meta[f"parity_{label}"] = parity(sides)
        print(f"{label}: batch {batch}, {size}px; max |ours - diffusers| {meta[f'parity_{label}']}", flush=True)
        rows += run_protocol(sides, args, f"{label}: batch {batch}, {size}x{size}")
    memory = None if "memory" in skip else measure_memory(args)
    meta["load_end"] = os.getloadavg()[0]
    text = report(rows, memory, meta)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows, "memory": memory}, indent=1))
    return text


if __name__ == "__main__":
    main()
