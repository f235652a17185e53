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
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from . import checkpoint as ckpt
from . import fsdp, personalize
from .batches import BatchStream
from .config import Config, config_to_json, load_config, save_config
from .discriminator import Discriminator
from .ema import Ema
from .export import DIFFUSERS_LORA_FILE, LORA_FILE, STUDENT_FILE, metadata, weights_sha256
from .logs import LossLog, clipping_summary, plot_losses, read_rows
from .modes import TEACHER_LORA, Mode, mode_of
from .optim import Clipper, apply_update, clipper, lr_factor, make_optimizer
from .precompute import CachedDataset, cache_is_current, precompute
from .steps import Draws, Nets, discriminator_step
from .student import DTYPES, trainable_state_dict



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
    mode: Mode
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


def setup(cfg: Config, acc, teacher_path: str, base_hash: str, models: dict | None = None,
          mode: Mode | None = None) -> Run:
    """Models, optimisers, data stream and the step generator of this process.

    `models`: already loaded modules by role for in-process runs (teacher, backbone, sprint: see the
    mode's build), used as they are; missing ones are loaded from the config's files. `mode`: default
    the config's (modes.mode_of).
    """
    mode = mode or mode_of(cfg)
    torch.manual_seed(cfg.train.seed)  # adapter and head init: identical on every rank
    pair = mode.build(cfg, acc.device, models or {})
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
    strength = cfg.controlnet.strength if cfg.controlnet.mode != "off" else None  # batches carry the control
    stream = BatchStream(CachedDataset(cfg.data.cache_dir), cfg.train.batch_size, cfg.train.seed,
                         acc.process_index, acc.num_processes, control_strength=strength)
    if mode.stream is not None:
        stream = mode.stream(cfg, stream)
    generator = torch.Generator().manual_seed(cfg.train.seed + 7919 * acc.process_index)
    return Run(cfg, acc, nets, opt_g, opt_d, stream, generator, Path(cfg.train.output_dir), base_hash, teacher_path,
               mode, sharded=sharded)


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
            out = run.mode.g_step(run.nets, batch, cfg, step, draws)
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
    """Write the outputs (main process) through the run's mode, with metadata.

    `student`: an unsharded student to export (`output_student`); default the run's own.
    """
    cfg, student = run.cfg, run.nets.student_core if student is None else student
    meta = metadata(run.mode.kind(cfg), base_hash=run.base_hash, base_name=Path(run.teacher_path).name, steps=steps,
                    config_json=config_to_json(cfg))
    return run.mode.export(cfg, run.out, student, meta, DTYPES[cfg.train.export_dtype])


def output_student(run: Run):
    """The student whose weights the outputs hold: the run's own, or under FSDP an unsharded CPU copy on the
    main process (None on the others; every process must call this)."""
    if not run.sharded:
        return run.nets.student_core
    dtype = DTYPES[run.cfg.model.weights_dtype]
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
    if run.mode.validation_inputs is not None:
        size, kwargs = run.mode.validation_inputs(run.stream.dataset, cfg, vae, device)
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


def prepare_inputs(cfg: Config, acc) -> tuple[Config, str, str]:
    """Cache (precompute if stale) and teacher (prepare if asked); returns (config, base model path, its
    sha256). With prepare.enabled the config's model.teacher becomes the prepared teacher. The base is
    the model the outputs apply to (modes.Mode.base: the teacher, a ControlNet's backbone, or the
    Sprint model of a personalisation LoRA).

    Without data.image_dir, data.cache_dir is used as it is (a cache built before or elsewhere).
    """
    if acc.is_main_process and cfg.data.image_dir and not cache_is_current(cfg):
        precompute(cfg, acc.device)
    acc.wait_for_everyone()
    if cfg.prepare.enabled:
        from .prepare import prepare_teacher

        cfg = replace(cfg, model=replace(cfg.model, teacher=str(prepare_teacher(cfg, acc))))
    if cfg.personalize.enabled and not cfg.personalize.teacher_lora:
        cfg = replace(cfg, personalize=replace(cfg.personalize, teacher_lora=str(train_teacher_lora(cfg, acc))))
    base = mode_of(cfg).base(cfg)
    digest = weights_sha256(base) if acc.is_main_process and base else ""
    return cfg, base, digest


def train_teacher_lora(cfg: Config, acc) -> Path:
    """Personalisation stage 1 in its own run folder (personalize.teacher_lora_config), resumed like the
    run; returns the teacher LoRA file (an existing one means the stage is done)."""
    path = personalize.teacher_lora_path(cfg)
    if path.is_file():
        return path
    stage = personalize.stage_config(personalize.teacher_lora_config(cfg))
    if acc.is_main_process:
        Path(stage.train.output_dir).mkdir(parents=True, exist_ok=True)
        save_config(stage, Path(stage.train.output_dir) / "config.json")
    digest = weights_sha256(stage.model.teacher) if acc.is_main_process else ""
    run = setup(stage, acc, stage.model.teacher, digest, mode=TEACHER_LORA)
    _train_and_export(run, acc)
    return path


def _train_and_export(run: Run, acc) -> None:
    """The loop from the start or the resumed checkpoint, then the outputs (the run's EMA weights)."""
    out, cfg = run.out, run.cfg
    start = resume(run) if cfg.train.resume else 0
    log = LossLog(out / "loss.csv", keep_before=start) if acc.is_main_process else None
    loop(run, log, start)
    finish(run)
    student = output_student(run)
    if acc.is_main_process:
        export(run, cfg.train.max_steps, student)
        plot_losses(out / "loss.csv", out / "loss.png")
    acc.wait_for_everyone()


# What a run that trained leaves in train.output_dir (docs/training.md section 1); any of them marks a
# run there. (config.json alone is a start that failed before training; it is written again.)
RUN_RESULTS = ("checkpoints", LORA_FILE, STUDENT_FILE, DIFFUSERS_LORA_FILE, personalize.TEACHER_LORA_FOLDER)


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
    cfg, base, digest = prepare_inputs(cfg, acc)
    _train_and_export(setup(cfg, acc, base, digest), acc)
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
    out = train(cfg)
    print(clipping_summary(read_rows(out / "loss.csv")))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
