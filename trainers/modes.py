"""The kinds of run, each plugged into the one loop of distill.py through the same small interface.

A `Mode` says how a run builds its networks (`build`: the trainable student and the frozen teacher
view), what one student (G) iteration computes (`g_step`: forward + backward; the discriminator
iteration of LADD is shared by every mode that has a teacher), which model its outputs apply to
(`base`), how it writes them (`export`) and, where the samples need more than a prompt, the model
inputs of its validation samples (`validation_inputs`).

  distill       SANA teacher -> Sprint student (LoRA or full), sCM + LADD         student.py, steps.py
  controlnet    a ControlNet for a frozen Sprint DiT: distilled (sCM + LADD) or trained
                with the denoising loss                                            controlnet.py
  teacher_lora  personalisation stage 1: a LoRA on the teacher, flow matching on
                the user's images (+ prior preservation)                           personalize.py
  personalize   personalisation stage 2: a LoRA on the released Sprint DiT, sCM +
                LADD from teacher + teacher LoRA, warm-started at the Sprint weights  personalize.py
Teacher preparation (prepare.py) runs before the loop, with the same optimiser and clipping.
Loop, checkpoints, resume, EMA, learning-rate schedule, clipping and logging are the loop's, the
same for every mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import controlnet, personalize
from .config import Config
from .export import DIFFUSERS_LORA_FILE, LORA_FILE, STUDENT_FILE, diffusers_lora, export_student, lora_file
from .steps import Batch, Draws, Nets, generator_step
from .student import Pair, Student, build_pair, check_loaded_teacher, load_teacher

# export(cfg, output folder, student, metadata, dtype) -> written files
Export = Callable[[Config, Path, Student, dict, torch.dtype], list[Path]]


@dataclass(frozen=True)
class Mode:
    """How one kind of run builds, steps and exports (module doc)."""

    name: str
    build: Callable[[Config, torch.device, dict], Pair]  # (cfg, device, preloaded models by role) -> Pair
    g_step: Callable[[Nets, Batch, Config, int, Draws], dict]  # -> detached losses by loss-log column
    base: Callable[[Config], str]  # the model file the outputs apply to ("" in-process)
    export: Export
    kind: Callable[[Config], str]  # the outputs' metadata kind
    validation_inputs: Callable | None = None  # (dataset, cfg, vae, device) -> (image size, model kwargs)
    stream: Callable | None = None  # (cfg, BatchStream) -> the stream the loop draws from (default: that one)


def distill_step(nets: Nets, batch: Batch, cfg: Config, step: int, draws: Draws) -> dict:
    """The sCM + LADD student iteration (steps.generator_step)."""
    return generator_step(nets, batch, cfg.distill, step, draws)


def _build_distill(cfg: Config, device, models: dict) -> Pair:
    teacher = models.get("teacher")
    if teacher is None:
        teacher = load_teacher(cfg, cfg.model.teacher, device)
    else:
        check_loaded_teacher(cfg, teacher, cfg.model.teacher or "(given teacher)")
    return build_pair(teacher, cfg.model, torch.Generator().manual_seed(cfg.train.seed))


def _export_distill(cfg: Config, out: Path, student: Student, meta: dict, dtype: torch.dtype) -> list[Path]:
    """The LoRA (and its diffusers twin) and/or the full student."""
    paths = []
    if cfg.model.mode == "lora":
        lora = lora_file(student, meta, cfg.model.lora_rank, cfg.model.lora_alpha, dtype)
        paths.append(lora.save(out / LORA_FILE))
        if cfg.train.export_diffusers_lora:
            paths.append(diffusers_lora(lora).save(out / DIFFUSERS_LORA_FILE))
    if cfg.model.mode == "full" or cfg.train.export_merged:
        paths.append(export_student(student, out / STUDENT_FILE, {**meta, "sana_sprint.kind": "student"}, dtype))
    return paths


DISTILL = Mode("distill", _build_distill, distill_step, lambda cfg: cfg.model.teacher, _export_distill,
               lambda cfg: "lora" if cfg.model.mode == "lora" else "student")


def _controlnet_step(nets: Nets, batch: Batch, cfg: Config, step: int, draws: Draws) -> dict:
    if cfg.controlnet.mode == "train":
        return controlnet.denoise_step(nets, batch, cfg.distill, step, draws)
    return distill_step(nets, batch, cfg, step, draws)


def _build_controlnet(cfg: Config, device, models: dict) -> Pair:
    return controlnet.build_control_pair(cfg, device, models.get("teacher"), models.get("backbone"))


def _export_controlnet(cfg: Config, out: Path, student: Student, meta: dict, dtype: torch.dtype) -> list[Path]:
    return [controlnet.export_controlnet(student, out / controlnet.CONTROLNET_FILE, meta, dtype)]


def _controlnet_validation(dataset, cfg: Config, vae, device):
    """Every prompt with the control of the first cached image, at its size."""
    return controlnet.validation_control(dataset, cfg.controlnet.strength, vae, device)


CONTROLNET = Mode("controlnet", _build_controlnet, _controlnet_step, lambda cfg: cfg.controlnet.backbone,
                  _export_controlnet, lambda cfg: "controlnet", _controlnet_validation)

TEACHER_LORA = Mode("teacher_lora", personalize.build_teacher_lora, personalize.teacher_lora_step,
                    lambda cfg: cfg.model.teacher, personalize.export_teacher_lora, lambda cfg: "teacher_lora")

PERSONALIZE = Mode("personalize", personalize.build_personal_pair, distill_step,
                   lambda cfg: cfg.personalize.sprint, personalize.export_sprint_lora, lambda cfg: "lora",
                   stream=personalize.with_prior_batches)


def mode_of(cfg: Config) -> Mode:
    """The mode a config runs (personalisation stage 1 is chosen by personalize.run, not by the config)."""
    if controlnet.enabled(cfg):
        return CONTROLNET
    if cfg.personalize.enabled:
        return PERSONALIZE
    return DISTILL
