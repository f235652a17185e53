"""CLI and loop of the SANA-Sprint distillation: `python -m trainers.distill --config FILE`.

Several GPUs: `accelerate launch --multi_gpu --num_processes N -m trainers.distill --config FILE` (DDP;
with `train.distributed: fsdp` the student is sharded with FSDP, trainers/fsdp.py).
Stages: precompute the latent/text cache (if missing or stale) -> optional teacher preparation ->
distillation, alternating G and D iterations when LADD is on. Writes into train.output_dir:
config.json, loss.csv, loss.png, checkpoints/, validation/, and the outputs sprint_lora.safetensors
(LoRA mode) and sprint_student.safetensors (full mode, or LoRA mode with train.export_merged).
ControlNet modes (config section `controlnet`, trainers/controlnet.py): the cache also holds the HED
control latents, the student is a ControlNet on the frozen Sprint DiT, and the output is
sprint_controlnet.safetensors.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sana_sprint_core.dit_loading import load_dit

from . import checkpoint as ckpt
from . import controlnet, fsdp
from .batches import BatchStream
from .config import Config, config_to_json, load_config, save_config
from .discriminator import Discriminator, check_head_blocks
from .export import diffusers_lora, export_student, lora_file, metadata, weights_sha256
from .logs import LossLog, plot_losses
from .ema import Ema
from .optim import Clipper, apply_update, clipper, lr_factor, make_optimizer
from .precompute import CachedDataset, cache_is_current, precompute
from .steps import Draws, Nets, discriminator_step, generator_step
from .student import build_pair, check_teacher, trainable_state_dict

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LORA_FILE, STUDENT_FILE = "sprint_lora.safetensors", "sprint_student.safetensors"
DIFFUSERS_LORA_FILE = "sprint_lora_diffusers.safetensors"  # train.export_diffusers_lora


def make_accelerator(cfg: Config):
    """Accelerator of this process (DDP for what `setup` prepares; FSDP is applied by `setup` itself)."""
    import os

    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    kwargs = DistributedDataParallelKwargs(find_unused_parameters=False)
    cpu = not torch.cuda.is_available()  # without cpu=True accelerate treats CPU workers as independent runs
    acc = Accelerator(mixed_precision=cfg.train.mixed_precision, kwargs_handlers=[kwargs], cpu=cpu)
    if acc.distributed_type.name == "FSDP":
        raise ValueError("launched with accelerate's FSDP (--use_fsdp or an FSDP accelerate config); this trainer "
                         "shards the student itself: launch with --multi_gpu and set train.distributed: fsdp")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if acc.num_processes != world:
        raise RuntimeError(f"launched with WORLD_SIZE={world} but accelerate set up {acc.num_processes} process(es)")
    return acc


@dataclass
class Run:
    """Everything the loop needs."""

    cfg: Config
    acc: object
    nets: Nets
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer | None
    stream: BatchStream
    generator: torch.Generator
    out: Path
    base_hash: str
    teacher_path: str
    g_steps: int = 0
    last: dict = field(default_factory=dict)
    sharded: bool = False  # the student is FSDP-sharded (train.distributed fsdp with several processes)
    clip_g: Clipper | None = None
    clip_d: Clipper | None = None
    ema: Ema | None = None  # train.ema: the average of the student's trainable tensors

    def __post_init__(self):
        self.clip_g, self.clip_d = clipper(self.cfg.optim), clipper(self.cfg.optim)
        if self.cfg.train.ema:
            named = {n: p for n, p in self.nets.student_core.named_parameters() if p.requires_grad}
            self.ema = Ema(named, self.cfg.train.ema_max_decay)

    def averaged(self):
        """Context in which the student holds the weights its outputs get: the EMA (train.ema), else its own."""
        return self.ema.swapped() if self.ema is not None else nullcontext()

    @property
    def g_params(self) -> list:
        """The student's trainable parameters, as its optimiser holds them (DTensors under FSDP)."""
        return [p for group in self.opt_g.param_groups for p in group["params"]]

    @property
    def d_params(self) -> list:
        return [] if self.nets.disc_core is None else list(self.nets.disc_core.parameters())


def load_teacher(cfg: Config, path: str, device) -> torch.nn.Module:
    """The teacher DiT in model.weights_dtype, checked for the sCM recipe."""
    if not path:
        raise ValueError("config key model.teacher is empty; give a SANA flow-matching DiT file or folder")
    overrides = cfg.model.teacher_overrides or None
    dit = load_dit(path, dtype=_DTYPES[cfg.model.weights_dtype], overrides=overrides)
    check_teacher(dit, path)
    if cfg.distill.ladd:
        check_head_blocks(cfg.distill.head_blocks, dit.config.num_layers)
    return dit.to(device)


def check_loaded_teacher(cfg: Config, dit: torch.nn.Module, source: str) -> None:
    """The checks `load_teacher` makes, for a teacher loaded elsewhere."""
    check_teacher(dit, source)
    if cfg.distill.ladd:
        check_head_blocks(cfg.distill.head_blocks, dit.config.num_layers)


def setup(cfg: Config, acc, teacher_path: str, base_hash: str, teacher: torch.nn.Module | None = None,
          backbone: torch.nn.Module | None = None) -> Run:
    """Models, optimisers, data stream and the step generator of this process.

    `teacher`: an already loaded teacher DiT on acc.device (in-process runs); else model.teacher is loaded.
    In the ControlNet modes: an already loaded ControlledDiT teacher (distill) and Sprint `backbone`,
    else the config's files.
    """
    torch.manual_seed(cfg.train.seed)  # adapter and head init: identical on every rank
    if controlnet.enabled(cfg):
        pair = controlnet.build_control_pair(cfg, acc.device, teacher, backbone)
    else:
        if teacher is None:
            teacher = load_teacher(cfg, teacher_path, acc.device)
        else:
            check_loaded_teacher(cfg, teacher, teacher_path or "(given teacher)")
        pair = build_pair(teacher, cfg.model, torch.Generator().manual_seed(cfg.train.seed))
    student = pair.student.to(acc.device)
    if not cfg.distill.scm:  # the logvar head only feeds the sCM loss
        student.logvar_linear.requires_grad_(False)
    sharded = cfg.train.distributed == "fsdp" and acc.num_processes > 1  # one process: nothing to shard
    if sharded:  # before the optimiser is built: it must hold the sharded parameters
        fsdp.shard_student(student, acc.device, acc.num_processes)
        acc.print(fsdp.describe(student, acc.num_processes))
    dim = pair.teacher.dit.config.hidden_size if pair.teacher is not None else None
    disc = Discriminator(dim, cfg.distill.head_blocks).to(acc.device) if cfg.distill.ladd else None
    opt_g = make_optimizer([p for p in student.parameters() if p.requires_grad], cfg, cfg.optim.lr)
    opt_d = make_optimizer(list(disc.parameters()), cfg, cfg.optim.disc_lr) if disc is not None else None
    student_w, disc_w, opt_g, opt_d = prepare_models(acc, student, disc, opt_g, opt_d, sharded)
    nets = Nets(student_w, student, pair.teacher, disc_w, disc)
    strength = cfg.controlnet.strength if controlnet.enabled(cfg) else None
    stream = BatchStream(CachedDataset(cfg.data.cache_dir), cfg.train.batch_size, cfg.train.seed,
                         acc.process_index, acc.num_processes, control_strength=strength)
    generator = torch.Generator().manual_seed(cfg.train.seed + 7919 * acc.process_index)
    return Run(cfg, acc, nets, opt_g, opt_d, stream, generator, Path(cfg.train.output_dir), base_hash, teacher_path,
               sharded=sharded)


def prepare_models(acc, student, disc, opt_g, opt_d, sharded: bool) -> tuple:
    """accelerate.prepare: DDP for the student (unless FSDP sharded it) and the heads, optimiser wrappers.

    Returns (student, heads, opt_g, opt_d) as the loop uses them (heads and opt_d None without LADD).
    """
    objects = ([] if sharded else [student]) + ([disc, opt_g, opt_d] if disc is not None else [opt_g])
    prepared = acc.prepare(*objects)
    prepared = list(prepared) if len(objects) > 1 else [prepared]
    student_w = student if sharded else prepared.pop(0)
    if disc is None:
        return student_w, None, prepared[0], None
    return student_w, *prepared


def g_updates(cfg: Config) -> int:
    """Student updates in a run of train.max_steps iterations (LADD alternates G and D, G first)."""
    return (cfg.train.max_steps + 1) // 2 if cfg.distill.ladd else cfg.train.max_steps


def _set_lr(run: Run) -> float:
    o = run.cfg.optim
    lr = o.lr * lr_factor(run.g_steps, g_updates(run.cfg), o)
    for group in run.opt_g.param_groups:
        group["lr"] = lr
    return lr


def iteration(run: Run, step: int) -> dict:
    """One G or D iteration (G on even steps when LADD is on); returns the loss-log row."""
    cfg, acc = run.cfg, run.acc
    phase = "D" if cfg.distill.ladd and step % 2 == 1 else "G"
    batch = run.stream.next(acc.device)
    draws = Draws(run.generator, acc.device)
    with acc.autocast():
        if phase == "G":
            lr = _set_lr(run)
            step_fn = controlnet.denoise_step if cfg.controlnet.mode == "train" else generator_step
            out = step_fn(run.nets, batch, cfg.distill, step, draws)
            clip = run.clip_g
            norm, applied = apply_update(run.opt_g, run.g_params, clip, acc.clip_grad_norm_)
            run.g_steps += 1
            if run.ema is not None:
                run.ema.update(run.g_steps)
        else:
            lr, clip = cfg.optim.disc_lr, run.clip_d
            out = discriminator_step(run.nets, batch, cfg.distill, draws)
            norm, applied = apply_update(run.opt_d, run.d_params, clip, acc.clip_grad_norm_)
    if run.sharded:
        fsdp.reshard_root(run.nets.student_core)
    row = {"step": step, "phase": phase, "grad_norm": f"{norm:.6g}", "clip_at": f"{applied.threshold:.6g}",
           "clipped": int(applied.clipped), "lr": f"{lr:.6g}", "skipped": int(not applied)}
    for name, value in out.items():
        row[name] = repr(acc.reduce(value.float(), reduction="mean").item())
    return row


def finish(run: Run) -> None:
    """After the last iteration: the student keeps the weights its outputs get (the EMA, with train.ema)."""
    if run.ema is not None:
        run.ema.copy_to_params()


def check_in_sync(run: Run) -> None:
    """Raise if the processes' replicated trainable weights differ (a DDP bug would show here first).

    FSDP-sharded tensors are left out: each shard has exactly one owner.
    """
    replicated = [p for p in run.g_params + run.d_params if not fsdp.is_sharded(p)]
    total = sum(p.detach().double().sum() for p in replicated)
    sums = run.acc.gather(torch.as_tensor(total, dtype=torch.float64, device=run.acc.device).reshape(1))
    if not torch.all(sums == sums[0]):
        raise RuntimeError(f"processes hold different weights (checksums {sums.tolist()})")


def save(run: Run, next_step: int) -> Path | None:
    """Checkpoint `next_step` (the first step a resume runs); every rank writes its RNG states."""
    acc = run.acc
    check_in_sync(run)
    tmp = ckpt.checkpoint_dir(run.out, next_step).with_suffix(".tmp")
    if acc.is_main_process:
        ckpt.begin(run.out, next_step)
    acc.wait_for_everyone()
    ckpt.write_rng(tmp, acc.process_index, run.generator)
    trainable, opt_g_state = student_state(run)
    ema = None if run.ema is None else fsdp.gathered(run.ema.state_dict(), acc.is_main_process)
    acc.wait_for_everyone()
    final = None
    if acc.is_main_process:
        ckpt.write_models(tmp, trainable, opt_g_state, run.nets.disc_core, run.opt_d, ema)
        state = {"step": next_step, "g_steps": run.g_steps, "stream": run.stream.state(),
                 "base_hash": run.base_hash, "clip_g": run.clip_g.state(), "clip_d": run.clip_d.state()}
        final = ckpt.commit(tmp, state, config_to_json(run.cfg))
        plot_losses(run.out / "loss.csv", run.out / "loss.png")
    acc.wait_for_everyone()
    return final


def student_state(run: Run) -> tuple[dict | None, dict | None]:
    """(trainable student tensors, student optimiser state), full, on the main process (None elsewhere).

    Under FSDP every process must call this: each sharded tensor is all-gathered in turn.
    """
    main = run.acc.is_main_process
    if not run.sharded:
        return (trainable_state_dict(run.nets.student_core), run.opt_g.state_dict()) if main else (None, None)
    return (fsdp.gathered(trainable_state_dict(run.nets.student_core), main),
            fsdp.gathered(run.opt_g.state_dict(), main))


def resume(run: Run) -> int:
    """Load the checkpoint named by train.resume; returns the step to continue from."""
    folder = ckpt.find(run.out, run.cfg.train.resume)
    ckpt.load_models(folder, run.nets.student_core, run.nets.disc_core, run.opt_g, run.opt_d)
    if run.ema is not None:
        ckpt.load_ema(folder, run.ema)
    state = ckpt.load_state(folder, run.acc.process_index, run.generator)
    run.stream.load_state(state["stream"])
    run.g_steps = state["g_steps"]
    if "clip_g" in state:  # checkpoints written before adaptive clipping have none: it starts afresh
        run.clip_g.load_state(state["clip_g"]), run.clip_d.load_state(state["clip_d"])
    return int(state["step"])


def export(run: Run, steps: int, student=None) -> list[Path]:
    """Write the outputs (main process): the LoRA and/or the full student, or the ControlNet, with metadata.

    `student`: an unsharded student to export (`output_student`); default the run's own.
    """
    cfg, student = run.cfg, run.nets.student_core if student is None else student
    kind = "controlnet" if controlnet.enabled(cfg) else "lora" if cfg.model.mode == "lora" else "student"
    meta = metadata(kind, base_hash=run.base_hash, base_name=Path(run.teacher_path).name, steps=steps,
                    config_json=config_to_json(cfg))
    dtype, paths = _DTYPES[cfg.train.export_dtype], []
    if kind == "controlnet":  # base_model: the Sprint DiT the ControlNet is for
        return [controlnet.export_controlnet(student, run.out / controlnet.CONTROLNET_FILE, meta, dtype)]
    if cfg.model.mode == "lora":
        lora = lora_file(student, meta, cfg.model.lora_rank, cfg.model.lora_alpha, dtype)
        paths.append(lora.save(run.out / LORA_FILE))
        if cfg.train.export_diffusers_lora:
            paths.append(diffusers_lora(lora).save(run.out / DIFFUSERS_LORA_FILE))
    if cfg.model.mode == "full" or cfg.train.export_merged:
        paths.append(export_student(student, run.out / STUDENT_FILE, {**meta, "sana_sprint.kind": "student"}, dtype))
    return paths


def output_student(run: Run):
    """The student whose weights the outputs hold: the run's own, or under FSDP an unsharded CPU copy on the
    main process (None on the others; every process must call this)."""
    if not run.sharded:
        return run.nets.student_core
    dtype = _DTYPES[run.cfg.model.weights_dtype]
    return fsdp.plain_student(run.nets.student_core, run.cfg.model, dtype, run.acc.is_main_process)


def validate(run: Run, step: int) -> list[Path]:
    """Validation images of the cached prompts (main process, or every process under FSDP; needs data.vae)."""
    cfg = run.cfg
    prompts, text, mask = run.stream.dataset.validation_prompts()
    if not prompts or not cfg.data.vae:
        return []
    from sana_sprint_core.dcae import load_vae

    device = run.acc.device
    vae = load_vae(cfg.data.vae, device=device)
    size, kwargs = tuple(cfg.train.validation_size), {}
    if controlnet.enabled(cfg):  # every prompt with the control of the first cached image, at its size
        size, kwargs = controlnet.validation_control(run.stream.dataset, cfg.controlnet.strength, vae, device)
    with run.averaged():
        paths = _validation_images(run, vae, text, mask, prompts, size, kwargs, step)
    del vae
    if run.sharded:
        fsdp.reshard_root(run.nets.student_core)
    return paths


def _validation_images(run: Run, vae, text, mask, prompts, size, kwargs, step: int) -> list[Path]:
    from .validation import save_validation

    cfg, device, student = run.cfg, run.acc.device, run.nets.student_core
    return save_validation(student.velocity, student.dit.config.in_channels, vae, text.to(device), mask.to(device),
                           prompts, cfg.train.validation_steps, cfg.train.validation_guidance, size, cfg.train.seed,
                           run.out / "validation", step, model_kwargs=kwargs, write=run.acc.is_main_process)


def prepare_inputs(cfg: Config, acc) -> tuple[str, str]:
    """Cache (precompute if stale) and teacher (prepare if asked); returns (teacher path, its sha256).
    In the ControlNet modes the returned model is controlnet.backbone, the base of the output.

    Without data.image_dir, data.cache_dir is used as it is (a cache built before or elsewhere).
    """
    if acc.is_main_process and cfg.data.image_dir and not cache_is_current(cfg):
        precompute(cfg, acc.device)
    acc.wait_for_everyone()
    teacher = cfg.controlnet.backbone if controlnet.enabled(cfg) else cfg.model.teacher
    if cfg.prepare.enabled:
        from .prepare import prepare_teacher

        teacher = str(prepare_teacher(cfg, acc))
    digest = weights_sha256(teacher) if acc.is_main_process and teacher else ""
    return teacher, digest


# What a run that trained leaves in train.output_dir (docs/training.md section 1); any of them marks a
# run there. (config.json alone is a start that failed before training; it is written again.)
RUN_RESULTS = ("checkpoints", LORA_FILE, STUDENT_FILE, DIFFUSERS_LORA_FILE)


def _run_files(out: Path) -> list[str]:
    found = [name for name in RUN_RESULTS if (out / name).exists()]
    losses = out / "loss.csv"
    if losses.is_file() and len(losses.read_text().splitlines()) > 1:  # a header and at least one step
        found.append("loss.csv")
    return found


def check_output_dir(cfg: Config, how_to_resume: str = "--resume latest",
                     how_to_start: str = "give this run a new train.output_dir (or move the old folder away)") -> None:
    """A new run (no resume) never replaces one: refuse a train.output_dir that holds a run's results.
    The command line and the in-process route (session, with its own words for the way out) both ask here."""
    out = Path(cfg.train.output_dir)
    found = _run_files(out)
    if found and not cfg.train.resume:
        raise FileExistsError(f"train.output_dir {out} already holds a run ({', '.join(found)}); nothing was "
                              f"changed. Continue it with {how_to_resume}, or {how_to_start}")


def train(cfg: Config) -> Path:
    """The whole run; returns the output folder."""
    check_output_dir(cfg)
    acc = make_accelerator(cfg)
    out = Path(cfg.train.output_dir)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.json")
    teacher_path, digest = prepare_inputs(cfg, acc)
    run = setup(cfg, acc, teacher_path, digest)
    start = resume(run) if cfg.train.resume else 0
    log = LossLog(out / "loss.csv", keep_before=start) if acc.is_main_process else None
    loop(run, log, start)
    finish(run)
    student = output_student(run)
    if acc.is_main_process:
        export(run, cfg.train.max_steps, student)
        plot_losses(out / "loss.csv", out / "loss.png")
    acc.wait_for_everyone()
    acc.end_training()
    return out


def loop(run: Run, log: LossLog | None, start: int, hooks=None) -> tuple[int, bool]:
    """Iterations start..max_steps-1 with logging, checkpoints and validation; returns (steps done, stopped).

    `hooks` (in-process runs, trainers.session.Hooks): `hooks.after_step(run, done, row)` runs after
    every iteration; when it returns True before the last step, a checkpoint of `done` is written
    (unless one was just saved) and the loop stops.
    """
    from tqdm.auto import tqdm

    t = run.cfg.train
    bar = tqdm(range(start, t.max_steps), initial=start, total=t.max_steps, disable=not run.acc.is_main_process)
    for step in bar:
        row = iteration(run, step)
        if log is not None:
            log.append(row)
            bar.set_postfix({k: f"{float(v):.4g}" for k, v in row.items() if k.startswith("loss_")})
        done = step + 1
        saved = t.save_every > 0 and done % t.save_every == 0 or done == t.max_steps
        if saved:
            save(run, done)
        if t.validate_every > 0 and (done % t.validate_every == 0 or done == t.max_steps):
            if run.acc.is_main_process or run.sharded:
                validate(run, done)
            run.acc.wait_for_everyone()
        if hooks is not None and hooks.after_step(run, done, row) and done < t.max_steps:
            if not saved:
                save(run, done)
            return done, True
    return t.max_steps, False


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m trainers.distill", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML or JSON config (see docs/training.md)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--precompute-only", action="store_true", help="build the latent/text cache and exit")
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoint folder (overrides train.resume)")
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:  # bad config, data or paths: no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    cfg = load_config(args.config)
    if args.resume is not None:
        from dataclasses import replace

        cfg = replace(cfg, train=replace(cfg.train, resume=args.resume))
    if args.dry_run:
        print(json.dumps(json.loads(config_to_json(cfg)), indent=2))
        return 0
    if args.precompute_only:
        print(precompute(cfg, "cuda" if torch.cuda.is_available() else "cpu"))
        return 0
    print(train(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
