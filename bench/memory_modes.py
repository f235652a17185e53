"""Peak GPU memory of SprintPipeline's low-VRAM modes at 1024 px, derived without a GPU (or measured on one).

    .venv/bin/python -m bench.memory_modes [--preset sprint_1600m] [--size 1024] [--dtype bf16|fp8_e4m3fn] [--json FILE]
    python -m bench.memory_modes --measure --device cuda      # on a CUDA machine: the real thing

Derivation (default): weights are counted exactly from the real architectures built on the meta
device (gemma-2-2b with its 256000-row embedding, the Sprint DiT preset, DC-AE f32c32). Activation
peaks come from a dry run: each stage runs once on fake tensors (torch FakeTensorMode: real shapes and
dtypes, no storage) while bench/distill_memory.LiveBytes adds up the bytes of every live tensor after
each op; the weights are registered first and subtracted, so the peak is activations + temporaries.
The stages: Gemma-2 on CHI + 300 tokens, one DiT forward (the sampler holds a few latents besides,
negligible), the DC-AE decode whole and in tiles (the GPU path: the CPU-only fast paths are off).
Mode peaks then follow from which weights share the device with which activations (offload.py):
  none           W_text + W_dit + W_vae + max(A_text, A_dit, A_decode)
  text_encoder   max(W_text + A_text, W_dit + W_vae + max(A_dit, A_decode))
  sequential     max(W_text + A_text, W_dit_part + A_dit, W_vae + A_decode), W_dit_part = largest streamed part
  + tiled        A_decode of the tiled decode instead
Not seen by the dry run: the CUDA context and cuBLAS workspaces (CUDA_OVERHEAD_GIB is added as a
stated allowance) and the caching allocator's rounding and fragmentation (reserved > allocated).
`--measure` runs the real pipeline (random weights) per mode and reports torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from bench.distill_memory import LiveBytes, to_fake
from sana_sprint_core.constants import LATENT_CHANNELS, LATENT_DOWNSCALE, MAX_TEXT_TOKENS
from sana_sprint_core.dcae import DCAE, DCAE_F32C32, decode
from sana_sprint_core.dcae.layers import set_fast_paths
from sana_sprint_core.dit import SanaSprintDiT
from sana_sprint_core.dit_config import PRESETS
from sana_sprint_core.offload import streamed_parts
from sana_sprint_core.precision import is_fp8
from sana_sprint_core.text_encoder import store_weights

GIB = 1024**3
# Allowance for what the dry run cannot see: the CUDA context (~0.3-0.5 GiB on an H100 with torch 2.x)
# and cuBLAS/cuDNN workspaces. A stated assumption, not a measurement.
CUDA_OVERHEAD_GIB = 0.6
# Tokens Gemma sees: the CHI (about 170 tokens with Gemma's tokenizer; an assumption, the tokenizer
# is not available offline) plus the 300-token prompt budget minus the 2 merged tokens.
CHI_TOKENS = 170
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp8_e4m3fn": torch.float8_e4m3fn}
MODES = ("none", "text_encoder", "sequential")


def nbytes(module: nn.Module) -> int:
    """Bytes of the parameters and buffers of a (meta or real) module."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def compute_of(dtype: torch.dtype) -> torch.dtype:
    """The GPU compute dtype of a storage dtype (precision.py: fp8 computes in bf16)."""
    return torch.bfloat16 if is_fp8(dtype) else dtype


def build(preset: str, dtype: torch.dtype) -> dict[str, nn.Module]:
    """The real architectures on the meta device in `dtype` (gemma-2-2b, the DiT preset, DC-AE f32c32).
    fp8: the DiT's weights and Gemma-2's Linear and embedding weights in fp8 (text_encoder.store_weights,
    norms in bf16), computing in bf16; the DC-AE in bf16 (no fp8 for it)."""
    from accelerate import init_empty_weights
    from transformers import Gemma2Config, Gemma2Model

    compute = compute_of(dtype)
    with init_empty_weights(include_buffers=False):
        text = Gemma2Model(Gemma2Config(attn_implementation="eager")).to(compute)
    if dtype != compute:
        store_weights(text, dtype, compute)
    with torch.device("meta"):
        dit = SanaSprintDiT(PRESETS[preset], dtype=dtype)
        vae = DCAE(DCAE_F32C32, dtype=compute)
    dit.compute_dtype = compute
    return {"text": text.eval(), "dit": dit.eval(), "vae": vae.eval()}


def _peak_activations(model: nn.Module, run) -> int:
    """Peak live bytes of `run()` (inside the caller's FakeTensorMode), minus the model's own weights."""
    tracker = LiveBytes(lambda live, current: {})
    for t in [*model.parameters(), *model.buffers()]:
        tracker.add(t)
    weights = tracker.current
    with tracker, torch.no_grad():
        run()
    return tracker.peak - weights


def activation_peaks(models: dict, size: int, dtype: torch.dtype, tile: int = 16, overlap: int = 4) -> dict:
    """A_text, A_dit, A_decode and A_decode_tiled in bytes (each stage once on fake tensors)."""
    side = size // LATENT_DOWNSCALE
    tokens = CHI_TOKENS + MAX_TEXT_TOKENS - 2
    text_model, dit, vae = models["text"], models["dit"], models["vae"]
    set_fast_paths(vae, False)  # the GPU path
    compute = compute_of(dtype)
    with FakeTensorMode(allow_non_fake_inputs=True):
        for model in models.values():
            to_fake(model)
        ids = torch.zeros(1, tokens, dtype=torch.int64)
        x = torch.randn(1, LATENT_CHANNELS, side, side, dtype=compute)
        ctx = torch.randn(1, MAX_TEXT_TOKENS, dit.config.caption_channels, dtype=compute)
        mask, z = torch.ones(1, MAX_TEXT_TOKENS, dtype=torch.int64), torch.randn(1, LATENT_CHANNELS, side, side)
        return {
            "text": _peak_activations(text_model, lambda: text_model(input_ids=ids, attention_mask=torch.ones_like(ids),
                                                                      use_cache=False)),
            "dit": _peak_activations(dit, lambda: dit(x, torch.rand(1), ctx, mask, torch.tensor([4.5]))),
            "decode": _peak_activations(vae, lambda: decode(vae, z)),
            "decode_tiled": _peak_activations(vae, lambda: decode(vae, z, tiled=True, tile=tile, overlap=overlap)),
        }


def mode_peaks(weights: dict, acts: dict) -> dict[str, float]:
    """Peak device bytes per mode (+ tiled decode), by the formulas of the module docstring."""
    w_text, w_dit, w_vae, w_part = weights["text"], weights["dit"], weights["vae"], weights["dit_part"]
    out = {}
    for tiled in (False, True):
        a_dec = acts["decode_tiled" if tiled else "decode"]
        suffix = " + tiled decode" if tiled else ""
        out["none" + suffix] = w_text + w_dit + w_vae + max(acts["text"], acts["dit"], a_dec)
        out["text_encoder" + suffix] = max(w_text + acts["text"], w_dit + w_vae + max(acts["dit"], a_dec))
        out["sequential" + suffix] = max(w_text + acts["text"], w_part + acts["dit"], w_vae + a_dec)
    return out


def derive(preset: str, size: int, dtype_name: str) -> dict:
    """Weights (exact), activation peaks (dry run) and mode peaks, in GiB."""
    dtype = DTYPES[dtype_name]
    models = build(preset, dtype)
    weights = {k: nbytes(m) for k, m in models.items()}
    weights["dit_part"] = max(nbytes(p) for p in streamed_parts(models["dit"]))
    acts = activation_peaks(models, size, dtype)
    peaks = mode_peaks(weights, acts)
    gib = lambda d: {k: round(v / GIB, 3) for k, v in d.items()}
    return {"preset": preset, "size": size, "dtype": dtype_name, "method": "dry run", "weights_gib": gib(weights),
            "activations_gib": gib(acts), "peak_gib": gib(peaks), "cuda_overhead_gib": CUDA_OVERHEAD_GIB,
            "peak_with_overhead_gib": {k: round(v / GIB + CUDA_OVERHEAD_GIB, 2) for k, v in peaks.items()}}


def measure(preset: str, size: int, dtype_name: str, device: str = "cuda") -> dict:
    """Run the real pipeline (random weights, real depths) once per mode; peak allocated and reserved bytes."""
    from bench.pipeline_models import SetSpec, build_pair
    from sana_sprint_core.pipeline import SprintPipeline

    spec = SetSpec(preset=preset, dit_layers=None, gemma_layers=None, vocab=256000, device="cpu",
                   dtype=DTYPES[dtype_name])
    ours, _ = build_pair(spec)
    out = {}
    for mode in MODES:
        for tiled in (False, True):
            models = (ours.text_encoder.model, ours.dit, ours.vae)
            if mode == "none":
                for m in models:
                    m.to(device)
            pipe = SprintPipeline(ours.dit, ours.text_encoder, ours.vae, offload=mode, device=device)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            pipe("a cat on the moon", width=size, height=size, steps=2, tiled_decode=tiled)
            torch.cuda.synchronize()
            key = mode + (" + tiled decode" if tiled else "")
            out[key] = {"allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 3),
                        "reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 3)}
            print(key, out[key], flush=True)
            pipe.offloader.remove_hooks()
            for m in models:
                m.to("cpu")
            torch.cuda.empty_cache()
    return {"preset": preset, "size": size, "dtype": dtype_name, "method": "measured",
            "device": torch.cuda.get_device_name(), "peak": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("sprint_1600m", "sprint_600m"), default="sprint_1600m")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--measure", action="store_true", help="run the real pipeline per mode (needs CUDA)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    args = parser.parse_args()
    if args.measure and not torch.cuda.is_available():
        parser.error("--measure needs a CUDA device; without one the default dry run derives the peaks")
    result = measure(args.preset, args.size, args.dtype, args.device) if args.measure else \
        derive(args.preset, args.size, args.dtype)
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
