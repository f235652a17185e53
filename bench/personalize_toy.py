"""Personalisation and the recipe on a toy (CPU): which route teaches Sprint a new concept, and which
parts of the recipe matter.   python -m bench.personalize_toy [--quick] [--seeds 0,1,2] [--out FILE.json]

Data: bench.distill_toy's 4 classes of 4x4x4 "latents". Classes 0-2 are the base concepts; class 3 is
the *new concept*, held out of the base data (its caption is never seen by the base models).
Stand-ins for the released pair: a flow-matching base teacher trained on classes 0-2, and a base Sprint
student distilled from it by the trainer (full mode, sCM, the recipe's defaults).

Part A, plain distillation (base teacher -> student, same number of student updates each): the
recipe's defaults (EMA, cosine decay, adaptive clipping, AdamW), and each with one part changed: no
EMA, constant lr, the fixed NVlabs clip 0.1, CAME. The bound: plain regression of the student's 1-step
output on the teacher's 32-step ODE endpoints (same noises, same updates, same optimiser and EMA).

Part B, personalisation, per seed (the user's 16 images of the new concept and the training noise
change with the seed): stage 1 (the teacher LoRA) once, then at an equal budget of Sprint-side updates
  direct  a LoRA on the base Sprint student trained with the TrigFlow denoising loss on the user's images
          (what users would try: "fine-tune the model I sample with");
  cold    the pack's LoRA distillation from teacher + teacher LoRA (student = teacher + LoRA + a new
          guidance embedder: few-step sampling is learnt from scratch), at the budget and at 5x;
  warm    the route: a zero-started LoRA on the base Sprint student distilled (sCM + LADD) from teacher
          + teacher LoRA.
Metrics (guidance EVAL_W, the same noises for every model): SWD to held-out new-concept data and RMSE
to teacher + teacher LoRA's 32-step Euler from the same noise, at 1 and 2 steps; SWD on the old
concepts (mean over classes 0-2; forgetting). Reference: teacher + teacher LoRA at 32 steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

from bench.distill_toy import (
    CHANNELS, SIDE, TOKENS, class_texts, make_data, mean_sd, sliced_w1, subset_option, teacher_euler, train_teacher,
    write_cache,
)
from sana_sprint_core import trigflow
from sana_sprint_core.constants import SIGMA_DATA, T_MAX
from sana_sprint_core.dit_loading import load_dit, save_dit
from sana_sprint_core.trigflow_model import TrigFlowModel
from trainers import controlnet, distill
from trainers.config import config_from_dict
from trainers.ema import Ema
from trainers.export import STUDENT_FILE
from trainers.modes import PERSONALIZE
from trainers.personalize import teacher_lora_path, teacher_with_lora
from trainers.student import with_guidance_embedder
from trainers.validation import sample_latents

BASE, NEW = (0, 1, 2), 3
EVAL_W = 1.5
CFG_SCALES = [1.0, 1.5, 2.0]
PART_A = {  # name -> config changes of the plain distillation (defaults otherwise)
    "defaults": {},
    "no EMA": {"train": {"ema": False}},
    "constant lr": {"optim": {"lr_schedule": "constant"}},
    "fixed clip 0.1": {"optim": {"grad_clip": 0.1}},
    "CAME": {"optim": {"optimizer": "came"}},
}


def subset(latents, labels, keep) -> tuple[torch.Tensor, torch.Tensor]:
    pick = torch.isin(labels, torch.tensor(keep))
    return latents[pick], labels[pick]


def run_config(work: Path, name: str, teacher: Path, cache: Path, updates: int, seed: int, ladd: bool,
               **changes) -> dict:
    """A trainer config (dict) of a toy run: fp32, no checkpointing, no validation, sCM (+ LADD)."""
    cfg = {
        "model": {"teacher": str(teacher), "weights_dtype": "fp32", "gradient_checkpointing": False,
                  "lora_rank": 16, "lora_alpha": 16.0},
        "data": {"cache_dir": str(cache)},
        "distill": {"scm": True, "ladd": ladd, "cfg_scales": CFG_SCALES, "head_blocks": [0, 1, 2],
                    "tangent_warmup_steps": updates // 5},
        "optim": {"lr": 3e-4},
        "train": {"output_dir": str(work / name), "max_steps": 2 * updates if ladd else updates, "batch_size": 16,
                  "mixed_precision": "no", "save_every": 0, "validate_every": 0, "export_dtype": "fp32",
                  "seed": seed},
    }
    for section, values in changes.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    return cfg


def trained_student(out: Path):
    return load_dit(out / STUDENT_FILE).eval().requires_grad_(False)


# --- Part A --------------------------------------------------------------------------------------------


@torch.no_grad()
def ode_pairs(teacher, texts, null, n: int, seed: int):
    """(noise, labels, w, teacher 32-step endpoints) for regression and RMSE."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor(BASE)[torch.randint(len(BASE), (n,), generator=g)]
    w = torch.tensor(CFG_SCALES)[torch.randint(len(CFG_SCALES), (n,), generator=g)]
    noise = torch.randn(n, CHANNELS, SIDE, SIDE, generator=g)
    ends = torch.cat([teacher_euler(teacher, noise[i:i + 256], texts[labels[i:i + 256]], null, w[i:i + 256], 32)
                      for i in range(0, n, 256)])
    return noise, labels, w, ends


def regression_student(teacher, pairs, texts, updates: int, seed: int):
    """The bound: the student's 1-step output regressed on the teacher's ODE endpoints (AdamW 3e-4 with
    the recipe's cosine decay and EMA, batch 16), from the teacher's weights + a new guidance embedder."""
    from trainers.config import OptimConfig
    from trainers.optim import lr_factor

    torch.manual_seed(seed)
    dit = with_guidance_embedder(teacher, torch.float32, copy=True, generator=torch.Generator().manual_seed(seed))
    dit.requires_grad_(True)
    model = TrigFlowModel(dit)
    params = dict(dit.named_parameters())
    opt, ema = torch.optim.AdamW(params.values(), lr=3e-4), Ema(params, 0.999)
    noise, labels, w, ends = pairs
    g = torch.Generator().manual_seed(seed + 1)
    for n in range(updates):
        for group in opt.param_groups:
            group["lr"] = 3e-4 * lr_factor(n, updates, OptimConfig())
        idx = torch.randint(noise.shape[0], (16,), generator=g)
        x0 = one_step(model, noise[idx], texts[labels[idx]], w[idx])
        loss = (x0 - ends[idx]).pow(2).mean()
        loss.backward()
        opt.step(), opt.zero_grad()
        ema.update(n + 1)
    ema.copy_to_params()
    return dit.eval().requires_grad_(False)


def one_step(model, noise, text, w):
    """The 1-step sample x0 = cos(T) x_T - sin(T) sigma_d F(x_T / sigma_d, T), x_T = sigma_d noise."""
    b = noise.shape[0]
    s = torch.full((b,), T_MAX)
    x = noise * SIGMA_DATA
    f = model(x / SIGMA_DATA, s, text, torch.ones(b, TOKENS, dtype=torch.int64), w)
    return trigflow.x0_from_prediction(x, SIGMA_DATA * f, trigflow.bcast(s, x))


@torch.no_grad()
def part_a_scores(student, pairs, texts, held, held_labels) -> dict:
    """RMSE of the 1-step sample to the teacher's ODE endpoint (held-out noises) and SWD to data at w = EVAL_W."""
    noise, labels, w, ends = pairs
    x0 = one_step(TrigFlowModel(student), noise, texts[labels], w)
    rmse = (x0 - ends).pow(2).mean().sqrt().item()
    return {"rmse": rmse, "swd": swd_old(student, texts, held, held_labels, 1, EVAL_W)}


# --- Part B --------------------------------------------------------------------------------------------


@torch.no_grad()
def samples(student, texts, label: int, n: int, steps: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, CHANNELS, SIDE, SIDE, generator=g)
    text, mask = texts[torch.full((n,), label)], torch.ones(n, TOKENS, dtype=torch.int64)
    return noise, sample_latents(TrigFlowModel(student), noise, text, mask, EVAL_W, steps,
                                 torch.Generator().manual_seed(seed + steps))


def swd_old(student, texts, held, held_labels, steps: int, w: float = EVAL_W) -> float:
    """SWD to held-out data of the base concepts, mean over classes 0-2."""
    out = []
    for c in BASE:
        ref = held[held_labels == c]
        _, x = samples(student, texts, c, ref.shape[0], steps, 500 + c)
        out.append(sliced_w1(x, ref))
    return sum(out) / len(out)


def part_b_scores(student, texts, null, reference_teacher, new_held, held, held_labels) -> dict:
    """New concept: SWD to held-out data, RMSE to teacher + teacher LoRA's 32-step Euler (1 and 2
    steps); old concepts: SWD at 1 and 2 steps."""
    out = {}
    n = new_held.shape[0]
    for steps in (1, 2):
        noise, x = samples(student, texts, NEW, n, steps, 900)
        ref = teacher_euler(reference_teacher, noise, texts[torch.full((n,), NEW)], null, EVAL_W, 32)
        out[f"swd_new_{steps}"] = sliced_w1(x, new_held)
        out[f"rmse_{steps}"] = (x - ref).pow(2).mean().sqrt().item()
        out[f"swd_old_{steps}"] = swd_old(student, texts, held, held_labels, steps)
    return out


def teacher_scores(teacher, texts, null, new_held) -> float:
    g = torch.Generator().manual_seed(900)
    n = new_held.shape[0]
    noise = torch.randn(n, CHANNELS, SIDE, SIDE, generator=g)
    return sliced_w1(teacher_euler(teacher, noise, texts[torch.full((n,), NEW)], null, EVAL_W, 32), new_held)


DIRECT = dataclasses.replace(
    PERSONALIZE, name="direct",
    g_step=lambda nets, batch, cfg, step, draws: controlnet.denoise_step(nets, batch, cfg.distill, step, draws))


def direct_lora(cfg_dict: dict) -> Path:
    """A LoRA on the Sprint student trained with the TrigFlow denoising loss (no teacher in the loss)."""
    cfg = config_from_dict(cfg_dict)
    cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, scm=False, ladd=False))
    acc = distill.make_accelerator(cfg)
    Path(cfg.train.output_dir).mkdir(parents=True, exist_ok=True)
    run = distill.setup(cfg, acc, cfg.personalize.sprint, "", mode=DIRECT)
    distill._train_and_export(run, acc)
    return Path(cfg.train.output_dir)


ROUTES = ("base", "warm", "warm+prior", "direct", "cold")


def warm_with_prior(work: Path, seed: int, n: int, teacher_file: Path, sprint_file: Path, cache: Path,
                    personal: dict, texts):
    """The route with prior preservation: the old concepts' captions as prior prompts (16 latents each
    drawn by the base teacher), used by stage 1 and mixed into stage 2's batches (in-process run)."""
    from trainers.export import merged_state_dict
    from trainers.session import personalize_in_process
    from sana_sprint_core.dit_loading import dit_from_state_dict

    cfg = config_from_dict(run_config(work, f"warmprior{seed}", teacher_file, cache, n, seed, True,
                                      personalize={**personal, "prior_images": 16}))
    prior = (texts[list(BASE)], torch.ones(len(BASE), TOKENS, dtype=torch.int64))
    outcome, _ = personalize_in_process(cfg, load_dit(teacher_file), load_dit(sprint_file), prior_text=prior)
    dit = outcome.run.nets.student_core.dit
    return dit_from_state_dict(merged_state_dict(dit), dit.config).eval().requires_grad_(False)


def personalise(work: Path, seed: int, sizes: dict, teacher_file: Path, sprint_file: Path, texts, null,
                held, held_labels, new_held, routes=ROUTES) -> dict:
    user, _ = subset(*make_data(16 * 4 * 4, seed=100 + seed), [NEW])
    user = user[:sizes["user_images"]]
    cache = work / f"user{seed}"
    if not cache.is_dir():
        write_cache(cache, user, torch.full((user.shape[0],), NEW), texts, null)
    n = sizes["route_updates"]
    personal = {"enabled": True, "sprint": str(sprint_file), "teacher_steps": sizes["teacher_lora_steps"],
                "teacher_lr": 1e-3, "teacher_rank": 16}
    t0 = time.time()
    warm = work / f"warm{seed}"
    if not (warm / STUDENT_FILE).is_file():  # reused from an earlier run in --work
        warm = distill.train(config_from_dict(run_config(work, f"warm{seed}", teacher_file, cache, n, seed, True,
                                                         personalize=personal)))
    lora = teacher_lora_path(config_from_dict(run_config(work, f"warm{seed}", teacher_file, cache, n, seed, True,
                                                         personalize=personal)))
    merged = teacher_with_lora(load_dit(teacher_file), lora)
    merged_file = work / f"teacher_lora_merged{seed}.safetensors"
    save_dit(merged, merged_file)
    timing = {"warm incl. stage 1": time.time() - t0}
    students = {}
    if "base" in routes:
        students["base Sprint student"] = load_dit(sprint_file)
    if "warm" in routes:
        students[f"warm route ({n})"] = trained_student(warm)
    if "warm+prior" in routes:
        t0 = time.time()
        students[f"warm route + prior preservation ({n})"] = warm_with_prior(work, seed, n, teacher_file, sprint_file,
                                                                             cache, personal, texts)
        timing["warm+prior incl. stage 1"] = time.time() - t0
    if "direct" in routes:
        t0 = time.time()
        direct = direct_lora(run_config(work, f"direct{seed}", teacher_file, cache, n, seed, False, personalize={
            **personal, "teacher_lora": str(lora)}))
        students[f"direct denoising LoRA ({n})"] = trained_student(direct)
        timing["direct"] = time.time() - t0
    for k in sizes["cold_multiples"] if "cold" in routes else ():
        t0 = time.time()
        cold = distill.train(config_from_dict(run_config(work, f"cold{seed}x{k}", merged_file, cache, k * n, seed,
                                                         True)))
        students[f"cold distillation ({k * n})"] = trained_student(cold)
        timing[f"cold x{k}"] = time.time() - t0
    rows = {name: part_b_scores(s.eval(), texts, null, merged, new_held, held, held_labels)
            for name, s in students.items()}
    return {"rows": rows, "teacher_lora_32": teacher_scores(merged, texts, null, new_held),
            "base_teacher_32_new": teacher_scores(load_dit(teacher_file), texts, null, new_held),
            "seconds": {k: round(v, 1) for k, v in timing.items()}}


def run(quick: bool, seeds: list[int], parts: str = "ab", routes=ROUTES, work: Path | None = None) -> dict:
    torch.set_num_threads(1)
    sizes = dict(teacher_steps=300, base_updates=60, route_updates=20, teacher_lora_steps=30, user_images=16,
                 cold_multiples=[1, 5], n_eval=128) if quick else \
        dict(teacher_steps=1500, base_updates=600, route_updates=150, teacher_lora_steps=300, user_images=16,
             cold_multiples=[1, 5], n_eval=384)
    work = Path(tempfile.mkdtemp(prefix="personalize_toy_")) if work is None else work
    t0 = time.time()
    texts, null = class_texts()
    latents, labels = subset(*make_data(4096, seed=0), list(BASE))
    held, held_labels = subset(*make_data(sizes["n_eval"] * 4 // 3 + 4, seed=1), list(BASE))
    new_held, _ = subset(*make_data(sizes["n_eval"] * 4, seed=3), [NEW])
    new_held = new_held[:sizes["n_eval"]]
    teacher_file = work / "teacher.safetensors"
    if teacher_file.is_file():  # --work of an earlier run: the same teacher (training is deterministic)
        teacher = load_dit(teacher_file).eval().requires_grad_(False)
    else:
        teacher = train_teacher(latents, labels, texts, null, sizes["teacher_steps"], 32)
        save_dit(teacher, teacher_file)
    base_cache = work / "base_cache"
    if not base_cache.is_dir():
        write_cache(base_cache, latents, labels, texts, null)
    result = {"sizes": sizes, "part_a": {}, "part_b": {}, "seconds": {}}
    pairs = ode_pairs(teacher, texts, null, 4096, seed=11)
    held_pairs = ode_pairs(teacher, texts, null, 512, seed=12)
    result["teacher_32_swd_old"] = swd_teacher_old(teacher, texts, null, held, held_labels)
    result["teacher_1_swd_old"] = swd_teacher_old(teacher, texts, null, held, held_labels, steps=1)
    sprint_file = work / "a_defaults_0" / STUDENT_FILE
    sprint_file = sprint_file if sprint_file.is_file() and "a" not in parts else None
    for seed in seeds if "a" in parts else ():
        rows = {}
        for name, changes in PART_A.items():
            out = distill.train(config_from_dict(run_config(work, f"a_{name}_{seed}".replace(" ", "_"), teacher_file,
                                                            base_cache, sizes["base_updates"], seed, False,
                                                            model={"mode": "full"}, **changes)))
            rows[name] = part_a_scores(trained_student(out), held_pairs, texts, held, held_labels)
            if name == "defaults" and sprint_file is None:
                sprint_file = out / STUDENT_FILE  # the base Sprint student of part B (seed 0's)
        bound = regression_student(teacher, pairs, texts, sizes["base_updates"], seed)
        rows["regression bound"] = part_a_scores(bound, held_pairs, texts, held, held_labels)
        result["part_a"][seed] = rows
    result["seconds"]["part A"] = round(time.time() - t0, 1)
    for seed in seeds if "b" in parts else ():
        result["part_b"][seed] = personalise(work, seed, sizes, teacher_file, sprint_file, texts, null, held,
                                             held_labels, new_held, routes)
    result["seconds"]["total"] = round(time.time() - t0, 1)
    floor_old = sum(sliced_w1(subset(*make_data(sizes["n_eval"] * 4 // 3 + 4, seed=2), [c])[0],
                              held[held_labels == c]) for c in BASE) / len(BASE)
    floor_new = sliced_w1(subset(*make_data(sizes["n_eval"] * 4, seed=4), [NEW])[0][:sizes["n_eval"]], new_held)
    result["swd_floor"] = {"old": round(floor_old, 4), "new": round(floor_new, 4)}
    return result


def swd_teacher_old(teacher, texts, null, held, held_labels, steps: int = 32) -> float:
    out = []
    for c in BASE:
        ref = held[held_labels == c]
        g = torch.Generator().manual_seed(500 + c)
        noise = torch.randn(ref.shape[0], CHANNELS, SIDE, SIDE, generator=g)
        out.append(sliced_w1(teacher_euler(teacher, noise, texts[torch.full((ref.shape[0],), c)], null, EVAL_W, steps),
                             ref))
    return sum(out) / len(out)


def markdown(result: dict) -> str:
    """Part A and part B as markdown tables: mean ± sd over seeds."""
    seeds = list(result["part_a"])
    lines = [] if not seeds else [
             f"Part A: plain distillation, {result['sizes']['base_updates']} student updates, seeds {seeds}; teacher "
             f"SWD (old concepts) 32 steps {result['teacher_32_swd_old']:.3f}, 1 step "
             f"{result['teacher_1_swd_old']:.3f}; data floor {result['swd_floor']['old']}", "",
             "| student | 1-step RMSE to the teacher's ODE | 1-step SWD to data |", "|---|---:|---:|"]
    names = list(next(iter(result["part_a"].values()))) if seeds else []
    for name in names:
        rmse = mean_sd([result["part_a"][s][name]["rmse"] for s in seeds])
        swd = mean_sd([result["part_a"][s][name]["swd"] for s in seeds])
        lines.append(f"| {name} | {rmse[0]:.3f} ± {rmse[1]:.3f} | {swd[0]:.3f} ± {swd[1]:.3f} |")
    seeds_b = list(result["part_b"])
    ref = mean_sd([result["part_b"][s]["teacher_lora_32"] for s in seeds_b])
    base = mean_sd([result["part_b"][s]["base_teacher_32_new"] for s in seeds_b])
    lines += ["", f"Part B: personalisation, seeds {seeds_b}; teacher + teacher LoRA 32 steps: new-concept SWD "
              f"{ref[0]:.3f} ± {ref[1]:.3f} (base teacher {base[0]:.3f}); data floor {result['swd_floor']['new']}", "",
              "| model (Sprint-side updates) | new SWD 1 step | new SWD 2 steps | RMSE 1 step | RMSE 2 steps "
              "| old SWD 1 step | old SWD 2 steps |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name in result["part_b"][seeds_b[0]]["rows"]:
        cells = []
        for key in ("swd_new_1", "swd_new_2", "rmse_1", "rmse_2", "swd_old_1", "swd_old_2"):
            m = mean_sd([result["part_b"][s]["rows"][name][key] for s in seeds_b])
            cells.append(f"{m[0]:.3f} ± {m[1]:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few-minute smoke version (numbers not meaningful)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default 0,1,2)")
    parser.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    parser.add_argument("--parts", default="ab", help="a, b or ab (part b alone needs --work of a part-a run)")
    parser.add_argument("--routes", default=",".join(ROUTES), help=f"part b routes, of {', '.join(ROUTES)}")
    parser.add_argument("--work", type=Path, default=None, help="work folder (reused: teacher, base student)")
    args = parser.parse_args()
    routes = tuple(subset_option("--routes", args.routes, ROUTES))
    if set(args.parts) - set("ab"):
        parser.error("--parts takes a, b or ab")
    result = run(args.quick, [int(s) for s in args.seeds.split(",") if s.strip()], args.parts, routes, args.work)
    print(markdown(result))
    print(json.dumps({k: v for k, v in result.items() if k in ("sizes", "seconds", "swd_floor")}))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
