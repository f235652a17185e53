"""Command line: `python -m sana_sprint_core generate --models-dir models --prompt "..." --out out.png`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .constants import DEFAULT_GUIDANCE, MAX_STEPS, T_INTERMEDIATE_2STEP, T_MAX
from .offload import OFFLOAD_MODES

_DTYPES = ("auto", "fp32", "bf16", "fp16", "fp8_e4m3fn", "fp8_e5m2")  # precision.STORAGE_DTYPES, plus auto
_TILED = {"auto": "auto", "on": True, "off": False}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m sana_sprint_core", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="text to image, written as PNG",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g.add_argument("--prompt", action="append", required=True, help="repeat for a batch")
    g.add_argument("--out", default="sprint.png", help="PNG path; a batch adds _0, _1, ...")
    g.add_argument("--models-dir", default="models",
                   help="ComfyUI-style models/ folder with diffusion_models/, text_encoders/, vae/")
    g.add_argument("--dit", help="DiT file or folder (overrides --models-dir)")
    g.add_argument("--text-encoder", help="Gemma-2 folder or file (overrides --models-dir)")
    g.add_argument("--vae", help="DC-AE folder or file (overrides --models-dir)")
    g.add_argument("--width", type=int, default=1024, help="pixels, a multiple of 32 up to 4096")
    g.add_argument("--height", type=int, default=1024, help="pixels, a multiple of 32 up to 4096")
    g.add_argument("--steps", type=int, default=None, help=f"1 to {MAX_STEPS} (default 2; not with --timesteps)")
    g.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE, help="distilled guidance scale, >= 0")
    g.add_argument("--seed", type=int, default=0, help="noise seed (CPU generator: same image on every machine)")
    g.add_argument("--timesteps", help="explicit TrigFlow times, e.g. 1.5708,1.3,0 (sets the steps)")
    g.add_argument("--max-timestep", type=float, default=T_MAX, help="first TrigFlow time of the schedule")
    g.add_argument("--intermediate-timestep", type=float, default=T_INTERMEDIATE_2STEP,
                   help="middle time of the 2-step schedule")
    g.add_argument("--device", default="cuda" if _cuda() else "cpu", help="cpu, cuda or cuda:N")
    g.add_argument("--dtype", choices=_DTYPES, default="auto",
                   help="storage dtype of the DiT and Gemma-2 weights (fp8: half of bf16's memory). auto: as stored on "
                        "CUDA, bf16 on the CPU. Each model computes in bf16 on CUDA (fp8 too) and in fp32 on a CPU "
                        "without native bf16 (docs/benchmarks.md)")
    g.add_argument("--offload", choices=OFFLOAD_MODES, default="none",
                   help="low VRAM: text_encoder = Gemma on the GPU only to encode; sequential = also the DiT "
                        "block by block and the DC-AE only to decode (leanest; see docs/benchmarks.md)")
    g.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]",
                   help="a LoRA (diffusers/PEFT, kohya, OneTrainer or ComfyUI keys; SANA or NVlabs names) merged "
                        "at STRENGTH (default 1, may be negative); repeat to stack")
    g.add_argument("--tiled-decode", choices=sorted(_TILED), default="auto",
                   help="decode in tiles: auto = only after running out of memory")
    return ap


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _load(args):
    from .model_files import find_model, missing_models_message
    from .pipeline import SprintPipeline

    paths = {"dit": args.dit, "text_encoder": args.text_encoder, "vae": args.vae}
    for kind, path in paths.items():
        paths[kind] = path or find_model(args.models_dir, kind)
    missing = [kind for kind, path in paths.items() if path is None]
    if missing:
        raise FileNotFoundError(missing_models_message(args.models_dir, missing))
    return SprintPipeline.from_files(paths["dit"], paths["text_encoder"], paths["vae"], dtype=args.dtype,
                                     device=args.device, offload=args.offload)


def _timesteps(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(t) for t in text.split(",")]
    except ValueError:
        raise ValueError(f"--timesteps takes TrigFlow times separated by commas, e.g. 1.5708,1.3,0; got {text!r}") \
            from None


def check_args(args) -> list[float] | None:
    """Every argument checked before a model is loaded (loading takes minutes with real weights)."""
    import torch

    from .sampler import check_guidance, check_image_size, check_timesteps, sprint_timesteps

    if args.timesteps is not None and args.steps is not None:
        raise ValueError("--steps and --timesteps both given; --timesteps sets the steps (n + 1 times for n steps): "
                         "drop one of them")
    if any(not p.strip() for p in args.prompt):
        raise ValueError("--prompt is empty; give the text to draw")
    check_image_size(args.width, args.height)
    check_guidance(args.guidance)
    times = _timesteps(args.timesteps)
    if times is not None:
        check_timesteps(times)
    else:
        args.steps = 2 if args.steps is None else args.steps
        sprint_timesteps(args.steps, max_timestep=args.max_timestep, intermediate_timestep=args.intermediate_timestep)
    from .lora_formats import parse_lora_arg

    args.loras = [parse_lora_arg(text) for text in args.lora]
    missing = [path for path, _ in args.loras if not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"--lora: no such file: {', '.join(missing)}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise ValueError(f"--device {args.device!r} is not a torch device; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: this torch ({torch.__version__}) sees no CUDA GPU; use --device cpu "
                         "or install a CUDA build of torch")
    return times


def generate(args) -> list:
    from .pipeline import save_png

    times = check_args(args)
    pipe = _load(args)
    if args.loras:
        from .lora_formats import apply_lora_files

        apply_lora_files(pipe.dit, args.loras)
    t0 = time.perf_counter()
    images = pipe(args.prompt, width=args.width, height=args.height, steps=args.steps, guidance=args.guidance,
                  seed=args.seed, timesteps=times, max_timestep=args.max_timestep,
                  intermediate_timestep=args.intermediate_timestep, tiled_decode=_TILED[args.tiled_decode])
    paths = save_png(images, args.out)
    print(f"wrote {', '.join(map(str, paths))} in {time.perf_counter() - t0:.2f} s")
    return paths


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        generate(args)
    except (FileNotFoundError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
