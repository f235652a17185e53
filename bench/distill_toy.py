"""Does the trainer distil? A tiny flow-matching teacher on synthetic data, then sCM / LADD / sCM+LADD students.

    python -m bench.distill_toy [--quick] [--out FILE.json]

Data: 4 classes of 4x4x4 "latents"; each class is a smooth pattern (a class-specific 2-D wave per
channel) times a random amplitude, shifted by a random phase, plus small noise, so samples lie near a
2-parameter manifold per class (clearly multi-modal, unit scale). The caption of a class is a fixed
random token sequence; the empty prompt is a separate one (CFG's unconditional input).

1. Teacher: a SanaSprintDiT (QK-norm, dense time, no CFG embedder) trained from scratch with the
   trainer's flow-matching step (trainers.prepare.fm_step, caption dropout 0.1).
2. Students: the real trainer (trainers.distill.train, full mode) on a cache of the data, once with
   sCM only, once with LADD only, once with both, with the same number of student (G) updates each
   (LADD runs alternate G and D iterations, so they run twice as many iterations).
3. Evaluation at guidance w = EVAL_W, the same noise for everyone: teacher Euler with 1 and 32 steps
   (real CFG), students with 1, 2, 4 sCM steps. Reported: SWD = sliced Wasserstein-1 distance
   between generated and held-out data of the same class (mean over classes; lower is closer to the
   data) and RMSE to the teacher's 32-step sample from the same noise. Multistep consistency sampling
   re-noises with fresh noise between steps, so its 2- and 4-step samples are other samples of the
   distribution, not the ODE solution of the first noise: for them SWD is the meaningful column.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from sana_sprint_core.dit import SanaSprintDiT
from sana_sprint_core.dit_config import DiTConfig
from sana_sprint_core.dit_loading import load_dit, save_dit
from sana_sprint_core.trigflow_model import TrigFlowModel
from trainers.config import PrepareConfig, config_from_dict
from trainers.distill import STUDENT_FILE, train
from trainers.precompute import CacheWriter
from trainers.prepare import fm_step
from trainers.steps import Batch, Draws
from trainers.validation import sample_latents

CLASSES, CHANNELS, SIDE, TOKENS, TEXT_DIM = 4, 4, 4, 4, 16
EVAL_W = 1.5
CONFIG = DiTConfig(hidden_size=64, num_layers=3, num_heads=2, cross_heads=2, in_channels=CHANNELS,
                   out_channels=CHANNELS, caption_channels=TEXT_DIM, guidance_embeds=False, qk_norm=True)


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents (n, 4, 4, 4), labels (n,)): class waves x amplitude, random phase, small noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % CLASSES
    yy, xx = torch.meshgrid(torch.arange(SIDE) / SIDE, torch.arange(SIDE) / SIDE, indexing="ij")
    amp = 0.6 + 0.8 * torch.rand(n, generator=g)
    phase = 2 * math.pi * torch.rand(n, generator=g)
    out = torch.empty(n, CHANNELS, SIDE, SIDE)
    for ch in range(CHANNELS):
        fy = (labels % 2 + 1 + ch % 2).float()[:, None, None]
        fx = (labels // 2 + 1 + ch // 2).float()[:, None, None]
        out[:, ch] = torch.sin(2 * math.pi * (fy * yy + fx * xx) + phase[:, None, None] + ch)
    out = out * amp[:, None, None, None] * math.sqrt(2.0)
    return out + 0.05 * torch.randn(out.shape, generator=g), labels


def class_texts(seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption embeddings (CLASSES, TOKENS, TEXT_DIM) and the empty-prompt embedding (TOKENS, TEXT_DIM)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(CLASSES, TOKENS, TEXT_DIM, generator=g), torch.randn(TOKENS, TEXT_DIM, generator=g)


def batch_of(latents, labels, texts, null) -> Batch:
    b = latents.shape[0]
    ones = torch.ones(b, TOKENS, dtype=torch.int64)
    return Batch(latents, texts[labels], ones, null[None].expand(b, -1, -1), ones)


def train_teacher(latents, labels, texts, null, steps: int, batch: int, seed: int = 0) -> SanaSprintDiT:
    """Flow-matching teacher from scratch (the trainer's fm_step), AdamW 1e-3 with cosine decay."""
    torch.manual_seed(seed)
    dit = SanaSprintDiT(CONFIG)
    opt = torch.optim.AdamW(dit.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    draws, g = Draws(torch.Generator().manual_seed(seed), "cpu"), torch.Generator().manual_seed(seed + 1)
    cfg = PrepareConfig(caption_dropout=0.1)
    for _ in range(steps):
        idx = torch.randint(latents.shape[0], (batch,), generator=g)
        fm_step(dit, batch_of(latents[idx], labels[idx], texts, null), cfg, draws, torch.float32)
        torch.nn.utils.clip_grad_norm_(dit.parameters(), 1.0)
        opt.step(), sched.step(), opt.zero_grad()
    return dit.eval().requires_grad_(False)


def write_cache(folder: Path, latents, labels, texts, null) -> Path:
    writer = CacheWriter(folder, {"toy": True})
    for i in range(latents.shape[0]):
        writer.add(f"toy{i}", latents[i], texts[labels[i]], torch.ones(TOKENS, dtype=torch.int64))
    writer.finish(null, torch.ones(TOKENS, dtype=torch.int64))
    return folder


def distill(kind: str, work: Path, g_steps: int, batch: int) -> SanaSprintDiT:
    """Run the real trainer (full mode) with sCM, LADD or both for `g_steps` student updates."""
    steps = g_steps if kind == "scm" else 2 * g_steps
    cfg = {
        "model": {"teacher": str(work / "teacher.safetensors"), "mode": "full", "weights_dtype": "fp32",
                  "gradient_checkpointing": False},
        "data": {"cache_dir": str(work / "cache")},
        "distill": {"scm": kind != "ladd", "ladd": kind != "scm", "cfg_scales": [1.0, 1.5, 2.0],
                    "head_blocks": [0, 1, 2], "tangent_warmup_steps": steps // 5},
        "optim": {"lr": 3e-4, "disc_lr": 3e-4, "grad_clip": 1.0},
        "train": {"output_dir": str(work / kind), "max_steps": steps, "batch_size": batch, "mixed_precision": "no",
                  "save_every": steps, "validate_every": 0, "export_dtype": "fp32", "seed": 3},
    }
    out = train(config_from_dict(cfg))
    return load_dit(out / STUDENT_FILE)


@torch.no_grad()
def teacher_euler(dit, noise, text, null, w: float, steps: int) -> torch.Tensor:
    """Flow-matching Euler from tau = 1 to 0 with real CFG: v = v_u + w (v_c - v_u)."""
    b = noise.shape[0]
    x, ones = noise.clone(), torch.ones(b, TOKENS, dtype=torch.int64)
    taus = torch.linspace(1.0, 0.0, steps + 1)
    for t, t_next in zip(taus[:-1], taus[1:]):
        tau = torch.full((b,), float(t))
        v_c = dit(x, tau, text, ones)
        v_u = dit(x, tau, null[None].expand(b, -1, -1), ones)
        x = x - (t - t_next) * (v_u + w * (v_c - v_u))
    return x


def sliced_w1(a: torch.Tensor, b: torch.Tensor, projections: int = 256, seed: int = 0) -> float:
    """Sliced Wasserstein-1 distance between two equal-size sample sets (flattened), random directions."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a[0].numel(), projections, generator=g)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, pb = (a.flatten(1) @ dirs).sort(dim=0).values, (b.flatten(1) @ dirs).sort(dim=0).values
    return (pa - pb).abs().mean().item()


def evaluate(samples: dict, reference, held_out, held_labels, labels) -> list[dict]:
    """SWD to held-out data per class (mean) and RMSE to the teacher's many-step samples."""
    rows = []
    for name, x in samples.items():
        swd = sum(sliced_w1(x[labels == c], held_out[held_labels == c]) for c in range(CLASSES)) / CLASSES
        rmse = (x - reference).pow(2).mean().sqrt().item()
        rows.append({"sampler": name, "swd_to_data": round(swd, 4), "rmse_to_teacher_32": round(rmse, 4)})
    return rows


def generate_all(teacher, students, texts, null, n: int, seed: int = 123):
    """Samples of every sampler from the same noise; the noise order is fixed by `seed`."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % CLASSES
    noise = torch.randn(n, CHANNELS, SIDE, SIDE, generator=g)
    text, mask = texts[labels], torch.ones(n, TOKENS, dtype=torch.int64)
    out = {"teacher Euler 1 step": teacher_euler(teacher, noise, text, null, EVAL_W, 1),
           "teacher Euler 32 steps": teacher_euler(teacher, noise, text, null, EVAL_W, 32)}
    for kind, student in students.items():
        model = TrigFlowModel(student.eval())
        for k in (1, 2, 4):
            out[f"student {kind} {k} step"] = sample_latents(model, noise, text, mask, EVAL_W, k,
                                                             torch.Generator().manual_seed(seed + k))
    return out, labels


def run(quick: bool) -> dict:
    torch.set_num_threads(1)  # tiny models: one thread is fastest on a busy 2-core machine
    sizes = dict(teacher_steps=300, student_updates=60, batch=16, n_eval=256) if quick else \
        dict(teacher_steps=1500, student_updates=1000, batch=32, n_eval=512)
    t0 = time.time()
    latents, labels = make_data(4096, seed=0)
    held_out, held_labels = make_data(sizes["n_eval"], seed=1)
    texts, null = class_texts()
    teacher = train_teacher(latents, labels, texts, null, sizes["teacher_steps"], 32)
    work = Path(tempfile.mkdtemp(prefix="distill_toy_"))
    save_dit(teacher, work / "teacher.safetensors")
    write_cache(work / "cache", latents, labels, texts, null)
    t_teacher = time.time() - t0
    students = {kind: distill(kind, work, sizes["student_updates"], sizes["batch"]) for kind in ("scm", "ladd", "scm+ladd")}
    samples, eval_labels = generate_all(teacher, students, texts, null, sizes["n_eval"])
    rows = evaluate(samples, samples["teacher Euler 32 steps"], held_out, held_labels, eval_labels)
    floor = sum(sliced_w1(make_data(sizes["n_eval"], seed=2)[0][held_labels == c], held_out[held_labels == c])
                for c in range(CLASSES)) / CLASSES
    return {"sizes": sizes, "rows": rows, "swd_data_vs_data": round(floor, 4), "eval_guidance": EVAL_W,
            "seconds": {"teacher": round(t_teacher, 1), "total": round(time.time() - t0, 1)}}


def markdown(result: dict) -> str:
    lines = ["| sampler | SWD to data (lower better) | RMSE to teacher 32-step (same noise) |", "|---|---:|---:|"]
    lines += [f"| {r['sampler']} | {r['swd_to_data']} | {r['rmse_to_teacher_32']} |" for r in result["rows"]]
    lines.append(f"| (held-out data vs more data: SWD floor) | {result['swd_data_vs_data']} | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few-minute smoke version (numbers not meaningful)")
    parser.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    args = parser.parse_args()
    result = run(args.quick)
    print(markdown(result))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
