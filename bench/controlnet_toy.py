"""Does a ControlNet steer Sprint? Every route on a toy where the control decides the structure (CPU).

    python -m bench.controlnet_toy [--quick] [--seeds 0,1,2] [--out FILE.json]

Data: 4-channel 8x8 "latents" (patch 2: 16 tokens) of one rectangle each. The rectangle (position and
size on the latent grid) is the structure: channel 0 is +a inside and -a outside; channels 1-3 hold a
random colour inside and another outside (the style, free); the caption (2 classes) fixes the sign of
channel 1 inside. The control is the rectangle's outline drawn as a 32x32 white-on-black image and
taken through the nodes' drawing path: `hed.scribble_from_drawing` -> `hed.to_control_image` ->
`dcae.encode` with a small random DC-AE (downscale 4, scaled to unit latent std).

Models, as in the real release:
  Sana teacher      a flow-matching DiT without QK-norm, time embedder on 1000 tau (trained from scratch)
  teacher CN        a 2-block nvlabs-wiring ControlNet trained on that teacher with the flow loss
                    (trainers.prepare.fm_step with the control latent), like NVIDIA's HED ControlNet for Sana
  Sprint teacher    the Sana teacher with QK-norm and dense time, fine-tuned (trainers.prepare.to_sprint_teacher)
  Sprint student    the real trainer, full mode, sCM + LADD from the Sprint teacher (no control)
Routes, each ControlNet on the frozen Sprint student (the trainer's ControlNet modes per seed):
  direct            the teacher CN applied as it is (what the shipped workflows do with NVIDIA's HED CN)
  distill/teacher   mode distill (sCM + LADD from Sana teacher + teacher CN), started from the teacher CN
  distill/backbone  mode distill, started from the student's first blocks with zero projections
  train             mode train: the denoising loss on the data, no teacher, from the student's blocks
  train/teacher     mode train started from the teacher CN
Metrics on the same noises and controls (held-out rectangles), at 1, 2 and 4 steps: adherence = the
mean IoU between the control's rectangle and the rectangle extracted from the sample (channel 0 > 0,
the toy generator's own read-out); SWD = sliced Wasserstein-1 distance to held-out data of the same
controls. References: teacher + teacher CN at 32 Euler steps, the data itself, and chance (the IoU of
a control with an unrelated rectangle). The teachers and the student are trained once (seed 0); the
ControlNet runs and the evaluation noise change with each seed.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench import distill_toy
from bench.distill_toy import TEXT_DIM, TOKENS, flow_fit, mean_sd, sliced_w1, subset_option, teacher_euler
from sana_sprint_core.controlnet import ControlInput, ControlledDiT, SanaControlNet
from sana_sprint_core.controlnet_loading import load_controlnet, save_controlnet
from sana_sprint_core.dcae import DCAE, DCAEConfig, encode
from sana_sprint_core.dit import SanaSprintDiT
from sana_sprint_core.dit_config import DiTConfig
from sana_sprint_core.dit_loading import load_dit, save_dit
from sana_sprint_core.hed import scribble_from_drawing, to_control_image
from sana_sprint_core.trigflow_model import TrigFlowModel
from trainers.config import config_from_dict
from trainers.controlnet import CONTROLNET_FILE
from trainers.distill import train
from trainers.export import STUDENT_FILE
from trainers.prepare import to_sprint_teacher
from trainers.steps import Batch
from trainers.validation import sample_latents

CHANNELS, SIDE, PIXELS_PER_LATENT, CLASSES = 4, 8, 4, 2  # captions: distill_toy's TOKENS x TEXT_DIM
CN_BLOCKS = 2
EVAL_W = 1.5
CFG_SCALES = [1.0, 1.5, 2.0]
STEPS = (1, 2, 4)
SANA = DiTConfig(hidden_size=64, num_layers=4, num_heads=2, cross_heads=2, in_channels=CHANNELS,
                 out_channels=CHANNELS, caption_channels=TEXT_DIM, patch_size=2, guidance_embeds=False,
                 qk_norm=False, time_input_scale=1000.0)
TOY_VAE = DCAEConfig(latent_channels=CHANNELS, widths=(8, 16, 32), encoder_depths=(1, 1, 1),
                     decoder_depths=(1, 1, 1), encoder_attention=(False,) * 3, decoder_attention=(False,) * 3,
                     multiscale_kernels=(), scaling_factor=1.0)
MODELS_DONE = "models.json"  # written under the work folder once its teachers and student are saved
ROUTES = {  # name -> ControlNet section of the trainer config (None: no training)
    "direct": None,
    "distill/teacher": {"mode": "distill", "init": "teacher"},
    "distill/backbone": {"mode": "distill", "init": "backbone"},
    "train": {"mode": "train", "init": "backbone"},
    "train/teacher": {"mode": "train", "init": "teacher"},
}


@dataclass
class Data:
    latents: torch.Tensor  # (n, C, 8, 8)
    labels: torch.Tensor  # (n,)
    masks: torch.Tensor  # (n, 8, 8) bool: the rectangle
    controls: torch.Tensor  # (n, C, 8, 8) control latents


def rectangles(n: int, g: torch.Generator) -> torch.Tensor:
    """(n, 8, 8) bool masks of one axis-aligned rectangle each, sides 2..5 latent pixels, anywhere on the grid."""
    h, w = torch.randint(2, 6, (n,), generator=g), torch.randint(2, 6, (n,), generator=g)
    top = (torch.rand(n, generator=g) * (SIDE - h + 1)).floor().long()
    left = (torch.rand(n, generator=g) * (SIDE - w + 1)).floor().long()
    idx = torch.arange(SIDE)
    rows = (idx[None] >= top[:, None]) & (idx[None] < (top + h)[:, None])
    cols = (idx[None] >= left[:, None]) & (idx[None] < (left + w)[:, None])
    return rows[:, :, None] & cols[:, None, :]


def outlines(masks: torch.Tensor) -> torch.Tensor:
    """The rectangles' 1-pixel outlines as white-on-black drawings (n, 3, 32, 32) in [0, 1]."""
    big = masks.float().repeat_interleave(PIXELS_PER_LATENT, 1).repeat_interleave(PIXELS_PER_LATENT, 2)[:, None]
    inner = -torch.nn.functional.max_pool2d(-big, 3, stride=1, padding=1)  # erode by one pixel
    return (big - inner).expand(-1, 3, -1, -1)


def toy_vae(seed: int = 11) -> DCAE:
    """A small random DC-AE (downscale 4) whose latents of the toy's control images have unit std."""
    torch.manual_seed(seed)
    vae = DCAE(TOY_VAE).eval()
    with torch.no_grad():
        std = encode(vae, control_images(rectangles(256, torch.Generator().manual_seed(seed)))).std().item()
    scaled = DCAE(dataclasses.replace(TOY_VAE, scaling_factor=1.0 / std)).eval()
    scaled.load_state_dict(vae.state_dict(), strict=True)
    return scaled.requires_grad_(False)


def control_images(masks: torch.Tensor) -> torch.Tensor:
    """The nodes' drawing path up to the DC-AE: drawing -> scribble -> RGB control image at the image size."""
    side = SIDE * PIXELS_PER_LATENT
    return to_control_image(scribble_from_drawing(outlines(masks)), side, side)


def make_data(n: int, seed: int, vae: DCAE) -> Data:
    """Rectangles, their latents (module docstring) and their control latents."""
    g = torch.Generator().manual_seed(seed)
    masks = rectangles(n, g)
    labels = torch.arange(n) % CLASSES
    m = masks.float()[:, None]
    amp = (0.8 + 0.4 * torch.rand(n, generator=g))[:, None, None, None]
    inside, outside = torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g)
    inside[:, 0] = inside[:, 0].abs() * (1 - 2 * labels.float())  # the caption: sign of channel 1 inside
    colour = m * inside[:, :, None, None] + (1 - m) * outside[:, :, None, None]
    latents = torch.cat([amp * (2 * m - 1), colour], 1) + 0.05 * torch.randn(n, CHANNELS, SIDE, SIDE, generator=g)
    with torch.no_grad():
        controls = torch.cat([encode(vae, control_images(masks[i:i + 256])) for i in range(0, n, 256)])
    return Data(latents, labels, masks, controls)


def extract(latents: torch.Tensor) -> torch.Tensor:
    """The toy generator's read-out of the structure: the rectangle is where channel 0 is positive."""
    return latents[:, 0] > 0


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over samples of |a and b| / |a or b| (masks (n, 8, 8))."""
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).clamp(min=1).float()
    return (inter / union).mean().item()


def class_texts() -> tuple[torch.Tensor, torch.Tensor]:
    """The 2 classes' caption embeddings and the empty prompt's (distill_toy's generator)."""
    return distill_toy.class_texts(classes=CLASSES)


def batch_of(data: Data, idx, texts, null, control: bool) -> Batch:
    controls = data.controls[idx] if control else None
    return distill_toy.batch_of(data.latents[idx], data.labels[idx], texts, null, controls)


def flow_train(model, params, data: Data, texts, null, steps: int, lr: float, seed: int, control: bool) -> None:
    """distill_toy.flow_fit on the toy's data (with the control latents when `control`), batch 32."""
    flow_fit(model, params, lambda idx: batch_of(data, idx, texts, null, control), data.latents.shape[0], steps, lr,
             seed)


def train_models(data: Data, texts, null, sizes: dict, work: Path) -> dict:
    """Sana teacher, its ControlNet, the Sprint teacher (saved under work) and the Sprint student."""
    torch.manual_seed(0)
    sana = SanaSprintDiT(SANA)
    flow_train(sana, list(sana.parameters()), data, texts, null, sizes["teacher_steps"], 1e-3, 0, False)
    sana.eval().requires_grad_(False)
    net = SanaControlNet.from_base(sana, CN_BLOCKS, "nvlabs").train()
    flow_train(ControlledDiT(sana, net), list(net.parameters()), data, texts, null, sizes["cn_steps"], 1e-3, 1, True)
    net.eval().requires_grad_(False)
    sprint_teacher = to_sprint_teacher(copy.deepcopy(sana)).requires_grad_(True)
    flow_train(sprint_teacher, list(sprint_teacher.parameters()), data, texts, null, sizes["prepare_steps"], 3e-4, 2,
               False)
    save_dit(sana, work / "sana_teacher.safetensors")
    save_controlnet(net, work / "teacher_cn.safetensors")
    save_dit(sprint_teacher.eval(), work / "sprint_teacher.safetensors")
    student_run = train(config_from_dict(run_config(work, "student", sizes["student_updates"], 0, ladd=True, model={
        "teacher": str(work / "sprint_teacher.safetensors"), "mode": "full"}, data={"cache_dir": str(work / "cache")})))
    student = load_dit(student_run / STUDENT_FILE).eval().requires_grad_(False)
    return {"sana": sana, "teacher_cn": net, "student": student}


def run_config(work: Path, name: str, updates: int, seed: int, ladd: bool, **sections) -> dict:
    """A toy trainer config: fp32, no checkpoints or validation, recipe defaults otherwise."""
    steps = 2 * updates if ladd else updates
    cfg = {
        "model": {"weights_dtype": "fp32", "gradient_checkpointing": False},
        "distill": {"scm": True, "ladd": ladd, "cfg_scales": CFG_SCALES, "head_blocks": [0, 1, 2],
                    "tangent_warmup_steps": steps // 5},
        "optim": {"lr": 3e-4, "disc_lr": 3e-4},
        "train": {"output_dir": str(work / name), "max_steps": steps, "batch_size": 32, "mixed_precision": "no",
                  "save_every": 0, "validate_every": 0, "export_dtype": "fp32", "seed": seed},
    }
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    return cfg


def write_cache(folder: Path, data: Data, texts, null, control: bool) -> Path:
    return distill_toy.write_cache(folder, data.latents, data.labels, texts, null, data.controls if control else None)


def train_route(work: Path, name: str, updates: int, seed: int) -> SanaControlNet:
    """One ControlNet route on the frozen student through the real trainer; returns the exported ControlNet."""
    section = ROUTES[name]
    ladd = section["mode"] == "distill"
    cfg = run_config(work, f"{name.replace('/', '-')}-{updates}-{seed}", updates, seed, ladd,
                     model={"teacher": str(work / "sana_teacher.safetensors") if ladd else ""},
                     data={"cache_dir": str(work / "control_cache")},
                     controlnet={**section, "backbone": str(work / "student.safetensors"), "num_blocks": CN_BLOCKS,
                                 "teacher_controlnet": str(work / "teacher_cn.safetensors")
                                 if section["init"] == "teacher" else ""},
                     distill={"scm": ladd, "ladd": ladd})
    out = train(config_from_dict(cfg))
    return load_controlnet(out / CONTROLNET_FILE, dtype=torch.float32).eval().requires_grad_(False)


def scores(x: torch.Tensor, held: Data) -> dict:
    return {"iou": iou(extract(x), held.masks), "swd": sliced_w1(x, held.latents)}


@torch.no_grad()
def evaluate(models: dict, nets: dict, texts, null, held: Data, seed: int) -> dict:
    """route -> {f"{metric}_{steps}": value}; the same noise and controls for every route."""
    n = held.latents.shape[0]
    noise = torch.randn(n, CHANNELS, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))
    text, mask = texts[held.labels], torch.ones(n, TOKENS, dtype=torch.int64)
    control = {"control": ControlInput(held.controls)}
    reference = teacher_euler(ControlledDiT(models["sana"], models["teacher_cn"]), noise, text, null, EVAL_W, 32,
                              control)
    out = {"teacher + teacher CN, 32 steps": {f"{k}_32": v for k, v in scores(reference, held).items()}}
    students = {"student, no ControlNet": (models["student"], {})}
    for name, net in nets.items():
        students[f"student + {name}"] = (ControlledDiT(models["student"], net), control)
    for name, (dit, kwargs) in students.items():
        row = out.setdefault(name, {})
        for k in STEPS:
            x = sample_latents(TrigFlowModel(dit), noise, text, mask, EVAL_W, k,
                               torch.Generator().manual_seed(seed + k), kwargs)
            row.update({f"{m}_{k}": v for m, v in scores(x, held).items()})
    return out


def run(quick: bool, seeds: list[int], routes: list[str], cn_updates: int | None = None,
        work: Path | None = None) -> dict:
    """Train (or, when `work` holds them, reuse) the models, then each route per seed; the result dict."""
    torch.set_num_threads(1)  # tiny models: one thread is fastest on a busy 2-core machine
    sizes = dict(teacher_steps=200, cn_steps=100, prepare_steps=50, student_updates=40, cn_updates=30, n_eval=128) \
        if quick else dict(teacher_steps=2000, cn_steps=1500, prepare_steps=500, student_updates=600, cn_updates=400,
                           n_eval=512)
    sizes["cn_updates"] = cn_updates or sizes["cn_updates"]
    t0 = time.time()
    vae = toy_vae()
    texts, null = class_texts()
    work = work or Path(tempfile.mkdtemp(prefix="controlnet_toy_"))
    models = saved_models(work) if (work / MODELS_DONE).exists() else new_models(work, vae, texts, null, sizes)
    seconds = {"models": round(time.time() - t0, 1)}
    per_seed = []
    for seed in seeds:
        nets = {name: models["teacher_cn"] if name == "direct" else
                train_route(work, name, sizes["cn_updates"], seed) for name in routes}
        held = make_data(sizes["n_eval"], 1000 + seed, vae)
        per_seed.append(evaluate(models, nets, texts, null, held, seed))
    held = make_data(sizes["n_eval"], 1000, vae)
    unrelated = make_data(sizes["n_eval"], 2000, vae)
    references = {"data (its own rectangle)": iou(extract(held.latents), held.masks),
                  "chance (an unrelated rectangle)": iou(held.masks, unrelated.masks),
                  "SWD floor (two held-out data sets)": sliced_w1(unrelated.latents, held.latents)}
    seconds["total"] = round(time.time() - t0, 1)
    return {"sizes": sizes, "seeds": seeds, "rows": summarise(per_seed), "references": references,
            "per_seed": per_seed, "seconds": seconds, "work": str(work)}


def new_models(work: Path, vae: DCAE, texts, null, sizes: dict) -> dict:
    """Caches and models of the toy, trained and saved under `work` (MODELS_DONE marks them complete)."""
    data = make_data(4096, 0, vae)
    write_cache(work / "cache", data, texts, null, control=False)
    write_cache(work / "control_cache", data, texts, null, control=True)
    models = train_models(data, texts, null, sizes, work)
    save_dit(models["student"], work / "student.safetensors")
    (work / MODELS_DONE).write_text(json.dumps(sizes))
    return models


def saved_models(work: Path) -> dict:
    """The models an earlier run saved under `work` (`--work`)."""
    load = lambda name: load_dit(work / name).eval().requires_grad_(False)  # noqa: E731
    teacher_cn = load_controlnet(work / "teacher_cn.safetensors", dtype=torch.float32).eval().requires_grad_(False)
    return {"sana": load("sana_teacher.safetensors"), "teacher_cn": teacher_cn, "student": load("student.safetensors")}


def summarise(per_seed: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds of every route's metrics."""
    rows = []
    for name in per_seed[0]:
        row = {"route": name}
        for key in per_seed[0][name]:
            row[key] = mean_sd([s[name][key] for s in per_seed])
        rows.append(row)
    return rows


def markdown(result: dict) -> str:
    cell = lambda v: f"{v[0]:.3f} ± {v[1]:.3f}" if v[1] else f"{v[0]:.3f}"  # noqa: E731
    cols = [f"{m}_{k}" for m in ("iou", "swd") for k in STEPS]
    head = [f"{'IoU' if c.startswith('iou') else 'SWD'}, {c.split('_')[1]} step{'s' * (c[-1] != '1')}" for c in cols]
    lines = ["| route | " + " | ".join(head) + " |", "|---|" + "---:|" * len(cols)]
    for r in result["rows"]:
        if "iou_32" in r:
            lines.append(f"| {r['route']} (IoU, SWD) | {cell(r['iou_32'])} | | | {cell(r['swd_32'])} | | |")
        else:
            lines.append(f"| {r['route']} | " + " | ".join(cell(r[c]) for c in cols) + " |")
    lines.append("")
    lines += [f"- {k}: {v:.3f}" for k, v in result["references"].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few-minute smoke version (numbers not meaningful)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of the ControlNet runs (default 0,1,2)")
    parser.add_argument("--routes", default=",".join(ROUTES), help=f"comma-separated subset of: {', '.join(ROUTES)}")
    parser.add_argument("--cn-updates", type=int, default=None, help="ControlNet updates per route (default 400)")
    parser.add_argument("--work", type=Path, default=None,
                        help="work folder: reuses the teachers and student an earlier run saved there")
    parser.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    args = parser.parse_args()
    routes = subset_option("--routes", args.routes, ROUTES)
    if args.cn_updates is not None and args.cn_updates < 1:
        raise SystemExit(f"--cn-updates must be at least 1, got {args.cn_updates}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--seeds {args.seeds!r}: give comma-separated integers, e.g. 0,1,2") from None
    if not seeds:
        raise SystemExit("--seeds is empty; give at least one seed, e.g. 0")
    result = run(args.quick, seeds, routes, args.cn_updates, args.work)
    print(markdown(result))
    print(json.dumps({"seconds": result["seconds"], "sizes": result["sizes"]}))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
