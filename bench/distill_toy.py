"""Does the trainer distil? A tiny flow-matching teacher on synthetic data, then sCM / LADD / sCM+LADD students.

    python -m bench.distill_toy [--quick] [--students scm,ladd,...] [--out FILE.json]

Data: 4 classes of 4x4x4 "latents"; each class is a smooth pattern (a class-specific 2-D wave per
channel) times a random amplitude, shifted by a random phase, plus small noise, so samples lie near a
2-parameter manifold per class (clearly multi-modal, unit scale). The caption of a class is a fixed
random token sequence; the empty prompt is a separate one (CFG's unconditional input).

1. Teacher: a SanaSprintDiT (QK-norm, dense time, no CFG embedder) trained from scratch with the
   trainer's flow-matching step (trainers.prepare.fm_step, caption dropout 0.1).
2. Students: the real trainer (trainers.distill.train, full mode) on a cache of the data: sCM only,
   LADD only, both (recipe defaults), and LADD / both with `distill.misaligned_pairs: false`, with the
   same number of student (G) updates each (LADD runs alternate G and D iterations, so they run twice
   as many iterations).
3. Evaluation with the same noise for everyone, at guidance EVAL_WS (1.5: the CFG the students are
   asked for; 1.0: no CFG, where the teacher's distribution is the data's): teacher Euler with 1 and
   32 steps (real CFG), students with 1, 2, 4 sCM steps, each student at its last LAST_CHECKPOINTS
   checkpoints (60-100 % of the run; mean and standard deviation, the spread of a constant-lr run).
   Reported: SWD = sliced Wasserstein-1 distance between generated and held-out data of the same
   class (mean over classes), RMSE to the teacher's 32-step sample from the same noise, and the RMS
   of the samples (the data's is about 1.04). Multistep consistency sampling re-noises with fresh
   noise between steps, so its 2- and 4-step samples are other samples of the distribution, not the
   ODE solution of the first noise: for them SWD is the meaningful column.
4. For the LADD runs, the trained heads' mean logits on held-out real data, on the student's 1-step
   samples and on misaligned pairs (all noised at discriminator times): how well the heads separate them.
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
from sana_sprint_core.checkpoint_io import read_state_dict
from sana_sprint_core.dit_loading import save_dit
from sana_sprint_core.trigflow_model import TrigFlowModel
from trainers.config import PrepareConfig, config_from_dict
from trainers.distill import train
from trainers.precompute import CacheWriter
from trainers.prepare import fm_step
from trainers.steps import Batch, Draws
from trainers.validation import sample_latents

CLASSES, CHANNELS, SIDE, TOKENS, TEXT_DIM = 4, 4, 4, 4, 16
EVAL_WS = (1.5, 1.0)
LAST_CHECKPOINTS = 5  # checkpoints every 10 % of a run; the last 5 (60-100 %) are evaluated
# student name -> distill config keys (recipe defaults otherwise); "-nomis": misaligned pairs off
STUDENTS = {
    "scm": {"scm": True, "ladd": False},
    "ladd": {"scm": False, "ladd": True},
    "scm+ladd": {"scm": True, "ladd": True},
    "ladd-nomis": {"scm": False, "ladd": True, "misaligned_pairs": False},
    "scm+ladd-nomis": {"scm": True, "ladd": True, "misaligned_pairs": False},
}
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


def class_texts(seed: int = 7, classes: int = CLASSES) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption embeddings (classes, TOKENS, TEXT_DIM) and the empty-prompt embedding (TOKENS, TEXT_DIM)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(classes, TOKENS, TEXT_DIM, generator=g), torch.randn(TOKENS, TEXT_DIM, generator=g)


def batch_of(latents, labels, texts, null, controls=None) -> Batch:
    """A trainer Batch of toy latents with their class captions (and control latents, if given)."""
    b = latents.shape[0]
    ones = torch.ones(b, TOKENS, dtype=torch.int64)
    return Batch(latents, texts[labels], ones, null[None].expand(b, -1, -1), ones, controls)


def flow_fit(model, params: list, make_batch, n: int, steps: int, lr: float, seed: int, batch: int = 32) -> None:
    """Flow matching with the trainer's fm_step (caption dropout 0.1) on `params`: AdamW with cosine decay,
    gradient norm clipped to 1; `make_batch(idx)` gives the Batch of data rows idx (drawn from n)."""
    opt = torch.optim.AdamW(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    draws, g = Draws(torch.Generator().manual_seed(seed), "cpu"), torch.Generator().manual_seed(seed + 1)
    cfg = PrepareConfig(caption_dropout=0.1)
    for _ in range(steps):
        idx = torch.randint(n, (batch,), generator=g)
        fm_step(model, make_batch(idx), cfg, draws, torch.float32)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step(), sched.step(), opt.zero_grad()


def train_teacher(latents, labels, texts, null, steps: int, batch: int, seed: int = 0) -> SanaSprintDiT:
    """Flow-matching teacher from scratch (the trainer's fm_step), AdamW 1e-3 with cosine decay."""
    torch.manual_seed(seed)
    dit = SanaSprintDiT(CONFIG)
    flow_fit(dit, list(dit.parameters()), lambda idx: batch_of(latents[idx], labels[idx], texts, null),
             latents.shape[0], steps, 1e-3, seed, batch)
    return dit.eval().requires_grad_(False)


def write_cache(folder: Path, latents, labels, texts, null, controls=None) -> Path:
    """A precompute-format cache of the toy data (with each row's control latent, if given)."""
    writer = CacheWriter(folder, {"toy": True, "control": controls is not None})
    for i in range(latents.shape[0]):
        writer.add(f"toy{i}", latents[i], texts[labels[i]], torch.ones(TOKENS, dtype=torch.int64),
                   control=None if controls is None else controls[i])
    writer.finish(null, torch.ones(TOKENS, dtype=torch.int64))
    return folder


def distill(name: str, work: Path, g_steps: int, batch: int) -> Path:
    """Run the real trainer (full mode) for `g_steps` student updates; returns the run folder."""
    keys = STUDENTS[name]
    steps = g_steps if not keys["ladd"] else 2 * g_steps
    cfg = {
        "model": {"teacher": str(work / "teacher.safetensors"), "mode": "full", "weights_dtype": "fp32",
                  "gradient_checkpointing": False},
        "data": {"cache_dir": str(work / "cache")},
        "distill": {**keys, "cfg_scales": [1.0, 1.5, 2.0], "head_blocks": [0, 1, 2],
                    "tangent_warmup_steps": steps // 5},
        "optim": {"lr": 3e-4, "disc_lr": 3e-4, "grad_clip": 1.0},
        "train": {"output_dir": str(work / name), "max_steps": steps,
                  "batch_size": batch, "mixed_precision": "no", "save_every": steps // 10, "validate_every": 0,
                  "export_dtype": "fp32", "seed": 3},
    }
    return train(config_from_dict(cfg))


def checkpoint_students(out: Path) -> list[SanaSprintDiT]:
    """The student DiTs of the run's last LAST_CHECKPOINTS checkpoints (trainable tensors = all, full mode)."""
    folders = sorted(p for p in (out / "checkpoints").glob("step_*") if p.is_dir())[-LAST_CHECKPOINTS:]
    students = []
    for folder in folders:
        saved = read_state_dict(folder / "student.safetensors")
        state = {k.removeprefix("model.dit."): v for k, v in saved.items() if k.startswith("model.dit.")}
        dit = SanaSprintDiT(CONFIG.replace(guidance_embeds=True))
        dit.load_state_dict(state, strict=True)
        students.append(dit.eval().requires_grad_(False))
    return students


@torch.no_grad()
def teacher_euler(dit, noise, text, null, w: float | torch.Tensor, steps: int, model_kwargs: dict | None = None
                  ) -> torch.Tensor:
    """Flow-matching Euler from tau = 1 to 0 with real CFG: v = v_u + w (v_c - v_u); w a number or (B,).
    model_kwargs go to both CFG halves (a ControlledDiT's `control`)."""
    b = noise.shape[0]
    w = torch.as_tensor(w, dtype=noise.dtype).reshape(-1, 1, 1, 1)
    x, ones = noise.clone(), torch.ones(b, TOKENS, dtype=torch.int64)
    taus = torch.linspace(1.0, 0.0, steps + 1)
    for t, t_next in zip(taus[:-1], taus[1:]):
        tau = torch.full((b,), float(t))
        v_c = dit(x, tau, text, ones, **(model_kwargs or {}))
        v_u = dit(x, tau, null[None].expand(b, -1, -1), ones, **(model_kwargs or {}))
        x = x - (t - t_next) * (v_u + w * (v_c - v_u))
    return x


def sliced_w1(a: torch.Tensor, b: torch.Tensor, projections: int = 256, seed: int = 0) -> float:
    """Sliced Wasserstein-1 distance between two equal-size sample sets (flattened), random directions."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a[0].numel(), projections, generator=g)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, pb = (a.flatten(1) @ dirs).sort(dim=0).values, (b.flatten(1) @ dirs).sort(dim=0).values
    return (pa - pb).abs().mean().item()


def scores(x, reference, held_out, held_labels, labels) -> tuple[float, float, float]:
    """(SWD to held-out data per class (mean), RMSE to the teacher's many-step samples, RMS of x)."""
    swd = sum(sliced_w1(x[labels == c], held_out[held_labels == c]) for c in range(CLASSES)) / CLASSES
    return swd, (x - reference).pow(2).mean().sqrt().item(), x.pow(2).mean().sqrt().item()


def subset_option(option: str, text: str, known) -> list[str]:
    """The names of a comma-separated command-line option, each one of `known` (SystemExit names the rest)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise SystemExit(f"{option} {text!r}: unknown {unknown}; known: {', '.join(known)}")
    return names


def mean_sd(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return round(t.mean().item(), 3), round(t.std().item() if len(values) > 1 else 0.0, 3)


def evaluate(teacher, students: dict, texts, null, held_out, held_labels, n: int, seed: int = 123) -> list[dict]:
    """One row per sampler: per guidance w, (mean, sd) over checkpoints of SWD, RMSE to teacher-32, RMS."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % CLASSES
    noise = torch.randn(n, CHANNELS, SIDE, SIDE, generator=g)
    text, mask = texts[labels], torch.ones(n, TOKENS, dtype=torch.int64)
    rows: dict[str, dict] = {}
    for w in EVAL_WS:
        reference = teacher_euler(teacher, noise, text, null, w, 32)
        samplers = {f"teacher Euler {k} step{'s' * (k > 1)}": [teacher_euler(teacher, noise, text, null, w, k)]
                    for k in (1, 32)}
        for name, dits in students.items():
            for k in (1, 2, 4):
                samplers[f"student {name}, {k} step"] = [
                    sample_latents(TrigFlowModel(d), noise, text, mask, w, k, torch.Generator().manual_seed(seed + k))
                    for d in dits]
        for name, xs in samplers.items():
            per = list(zip(*(scores(x, reference, held_out, held_labels, labels) for x in xs)))
            row = rows.setdefault(name, {"sampler": name})
            for metric, values in zip(("swd", "rmse", "rms"), per):
                row[f"{metric}_w{w}"] = mean_sd(list(values))
    return list(rows.values())


@torch.no_grad()
def head_logits(out: Path, teacher, student, latents, labels, texts, n: int = 256, seed: int = 321) -> dict:
    """Mean logits of the run's final heads on real data, the student's 1-step samples and misaligned
    pairs (another class's image with this caption), each noised at discriminator times."""
    from sana_sprint_core.constants import SIGMA_DATA
    from trainers.discriminator import Discriminator, teacher_features
    from trainers.student import Teacher

    disc = Discriminator(CONFIG.hidden_size, [0, 1, 2])
    last = sorted(p for p in (out / "checkpoints").glob("step_*") if p.is_dir())[-1]
    disc.load_state_dict(read_state_dict(last / "disc.safetensors"), strict=True)
    disc.eval()
    draws = Draws(torch.Generator().manual_seed(seed), "cpu")
    idx = torch.randperm(latents.shape[0], generator=draws.generator)[:n]
    x0, lab = latents[idx], labels[idx]
    text, mask = texts[lab], torch.ones(n, TOKENS, dtype=torch.int64)
    fake = sample_latents(TrigFlowModel(student), draws.normal(x0.shape), text, mask, EVAL_WS[0], 1, draws.generator)
    other_class = (lab + 1 + torch.randint(CLASSES - 1, (n,), generator=draws.generator)) % CLASSES
    pick = CLASSES * torch.randint(latents.shape[0] // CLASSES, (n,), generator=draws.generator) + other_class
    if not bool((labels[pick] != lab).all()):  # make_data: the label of row i is i % CLASSES
        raise RuntimeError("misaligned images must come from another class")
    sets = {"real": x0, "student 1-step": fake, "misaligned": latents[pick]}
    result = {}
    for name, x in sets.items():
        t = draws.scm_time(n, -0.6, 1.0)
        noised = draws.noised(SIGMA_DATA * x, t)
        feats = teacher_features(Teacher(teacher), teacher, [0, 1, 2], noised / SIGMA_DATA, t, text, mask)
        result[name] = round(disc(feats)[0].mean().item(), 3)
    return result


def run(quick: bool, names: list[str]) -> dict:
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
    runs = {name: distill(name, work, sizes["student_updates"], sizes["batch"]) for name in names}
    students = {name: checkpoint_students(out) for name, out in runs.items()}
    rows = evaluate(teacher, students, texts, null, held_out, held_labels, sizes["n_eval"])
    heads = {name: head_logits(out, teacher, students[name][-1], latents, labels, texts)
             for name, out in runs.items() if STUDENTS[name]["ladd"]}
    floor = sum(sliced_w1(make_data(sizes["n_eval"], seed=2)[0][held_labels == c], held_out[held_labels == c])
                for c in range(CLASSES)) / CLASSES
    return {"sizes": sizes, "rows": rows, "heads": heads, "swd_data_vs_data": round(floor, 4),
            "rms_data": round(held_out.pow(2).mean().sqrt().item(), 3), "eval_guidance": list(EVAL_WS),
            "seconds": {"teacher": round(t_teacher, 1), "total": round(time.time() - t0, 1)}}


def markdown(result: dict) -> str:
    """The result as two markdown tables (samplers; heads)."""
    cell = lambda v: f"{v[0]:.3f} ± {v[1]:.3f}" if v[1] else f"{v[0]:.3f}"  # noqa: E731
    cols = [(m, w) for w in EVAL_WS for m in ("swd", "rmse", "rms")]
    names = {"swd": "SWD to data", "rmse": "RMSE to teacher 32-step", "rms": "RMS"}
    lines = ["| sampler | " + " | ".join(f"{names[m]}, w={w}" for m, w in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    lines += [f"| {r['sampler']} | " + " | ".join(cell(r[f"{m}_w{w}"]) for m, w in cols) + " |" for r in result["rows"]]
    lines.append(f"| (held-out data vs more data: SWD floor; data RMS) | {result['swd_data_vs_data']} | | "
                 f"{result['rms_data']} |" + " |" * (len(cols) - 3))
    if result["heads"]:
        lines += ["", "| LADD run: final heads' mean logit on | real | student 1-step | misaligned pairs |",
                  "|---|---:|---:|---:|"]
        lines += [f"| {name} | {h['real']} | {h['student 1-step']} | {h['misaligned']} |"
                  for name, h in result["heads"].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few-minute smoke version (numbers not meaningful)")
    parser.add_argument("--students", default=",".join(STUDENTS),
                        help=f"comma-separated subset of: {', '.join(STUDENTS)} (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    args = parser.parse_args()
    result = run(args.quick, subset_option("--students", args.students, STUDENTS))
    print(markdown(result))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
