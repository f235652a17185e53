"""In-process distillation for a host application (the ComfyUI nodes): a loaded teacher, hooks, a clean stop.

`train_in_process(cfg, teacher, hooks)` runs the setup, iterations, checkpoints and resume of
`python -m trainers.distill` (distill.py) in the calling process, on one device:
* the teacher DiT is given, not loaded from model.teacher, and is never modified: the run works on
  a private DiT over the same tensors (LoRA mode adds adapters to it, full mode copies it; tensors
  created under torch.inference_mode are copied, autograd cannot use them);
* `SingleProcess` stands in for accelerate's Accelerator, which keeps process-wide state that a
  long-lived host cannot reset between runs;
* `Hooks.after_step` runs after every iteration: a validation preview every `preview_every`
  iterations (`on_preview`), the loss row (`on_step`), then `should_stop()`. A stop writes a
  checkpoint; the same call with train.resume = "latest" continues exactly from it.
A run folder that already holds checkpoints is only ever resumed, never started over silently.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from sana_sprint_core.constants import DEFAULT_GUIDANCE, TRAIN_PREVIEW_STEPS

from . import checkpoint as ckpt
from . import controlnet, personalize
from .config import Config, config_to_json, save_config
from .controlnet import ControlledDiT, control_kwargs
from .distill import Run, check_output_dir, export, finish, loop, resume, setup
from .export import LoraFile, dit_like, lora_file, merged_state_dict, metadata, state_dict_sha256
from .logs import LossLog
from .modes import PERSONALIZE, TEACHER_LORA, Mode
from .validation import sample_latents

_AUTOCAST = {"bf16": torch.bfloat16}


class SingleProcess:
    """The part of accelerate's Accelerator the loop uses, for one process and no global state."""

    is_main_process = True
    process_index = 0
    num_processes = 1

    def __init__(self, device: torch.device | str, mixed_precision: str):
        if mixed_precision not in ("no", *_AUTOCAST):
            raise ValueError(f"train.mixed_precision {mixed_precision!r} is not supported in-process (fp16 needs a "
                             "gradient scaler); use 'bf16' or 'no'")
        self.device = torch.device(device)
        self.mixed_precision = mixed_precision

    def autocast(self):
        """bf16 autocast on the device, or nothing for full precision."""
        if self.mixed_precision == "no":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=_AUTOCAST[self.mixed_precision])

    @staticmethod
    def prepare(*objects):
        return objects if len(objects) > 1 else objects[0]

    @staticmethod
    def clip_grad_norm_(parameters, max_norm):
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    @staticmethod
    def reduce(tensor: Tensor, reduction: str = "mean") -> Tensor:
        return tensor

    @staticmethod
    def gather(tensor: Tensor) -> Tensor:
        return tensor

    def wait_for_everyone(self) -> None:
        return None

    def end_training(self) -> None:
        return None


@dataclass
class Hooks:
    """Callbacks of an in-process run; every one is optional."""

    on_step: Callable[[int, int, dict], None] | None = None  # (iterations done, total, loss-log row)
    should_stop: Callable[[], bool] | None = None  # polled after every iteration
    on_preview: Callable[[int, Tensor], None] | None = None  # (iterations done, latents (1, C, h, w))
    preview_every: int = 0  # 0: no previews; else every N iterations and after the last one
    preview_steps: tuple = (TRAIN_PREVIEW_STEPS,)  # one sample per step count, side by side

    def after_step(self, run: Run, done: int, row: dict) -> bool:
        """Preview, progress, then whether to stop (called by distill.loop)."""
        total = run.cfg.train.max_steps
        if self.on_preview is not None and self.preview_every > 0 and (done % self.preview_every == 0 or done == total):
            self.on_preview(done, preview_latents(run, self.preview_steps))
        if self.on_step is not None:
            self.on_step(done, total, row)
        return bool(self.should_stop is not None and self.should_stop())


def preview_latents(run: Run, steps: tuple = (TRAIN_PREVIEW_STEPS,)) -> Tensor:
    """Samples of the student at each step count of `steps`, side by side (diffusion latents (1, C, h,
    w * len(steps))), from the weights the outputs get (the EMA with train.ema).

    Prompt: the cache's first validation prompt, else the first item's caption; size: the first
    item's bucket; the same noise (from train.seed, its own generator: previews do not change
    training) for every step count.
    """
    data = run.stream.dataset
    prompts, text, mask = data.validation_prompts()
    if prompts:
        text, mask = text[:1], mask[:1]
    else:
        _, item_text, item_mask = data.get(0)
        text, mask = item_text[None], item_mask[None]
    h, w = data.entries[0].size
    device = run.acc.device
    model = run.nets.student_core.model
    generator = torch.Generator().manual_seed(run.cfg.train.seed)
    noise = torch.randn((1, model.dit.config.in_channels, h, w), generator=generator).to(device)
    control = {}  # ControlNet modes: the first item's control, which has its size
    if run.stream.control_strength is not None:
        control = control_kwargs(data.get_control(0)[None].to(device), run.stream.control_strength)
    samples = []
    with run.acc.autocast(), run.averaged():
        for n in steps:
            g = torch.Generator().manual_seed(run.cfg.train.seed + n)  # the re-noising of multistep sampling
            samples.append(sample_latents(model, noise, text.to(device), mask.to(device), DEFAULT_GUIDANCE, n, g,
                                          control).float())
    return torch.cat(samples, dim=-1)


@dataclass
class Outcome:
    """The end of an in-process run (finished or stopped)."""

    run: Run
    start: int  # iteration the call began at (> 0 when resumed)
    done: int  # iterations done in total
    stopped: bool  # True: should_stop asked for it; a checkpoint of `done` exists
    base_hash: str  # sha256 of the teacher's state dict
    rows: list[dict]  # loss-log rows of iterations 0..done-1 (resumed chunks included)

    @property
    def out(self) -> Path:
        return self.run.out


def check_run_folder(cfg: Config, base_hash: str) -> None:
    """Refuse to start over a run (distill.check_output_dir), and to resume one of another teacher."""
    out = Path(cfg.train.output_dir)
    if not cfg.train.resume:
        check_output_dir(cfg, how_to_resume="resume on", how_to_start="choose another output name to start a new run")
        return
    state = json.loads((ckpt.find(out, "latest") / "state.json").read_text())
    if state.get("base_hash") and state["base_hash"] != base_hash:
        raise ValueError(f"train.output_dir {out} was trained from another teacher (weights sha256 "
                         f"{state['base_hash'][:12]}..., this one {base_hash[:12]}...); connect the same "
                         "teacher model (same file and weight dtype) to resume")


def _usable(t: Tensor) -> Tensor:
    """The tensor itself, or a copy when it was made under torch.inference_mode (a host that loads
    models in inference mode, as ComfyUI does on the CPU): autograd cannot save inference tensors."""
    return t.detach().clone() if t.is_inference() else t.detach()


def private_dit(dit, device):
    """A DiT over the same tensors as `dit` (copies of inference tensors only), so the run never
    changes the caller's module (LoRA adapters, attention kernel, checkpointing flags)."""
    return dit_like(dit, {k: _usable(v) for k, v in dit.state_dict().items()}, dit.config, device)


def train_in_process(cfg: Config, teacher, hooks: Hooks | None = None) -> Outcome:
    """Distil in this process from a loaded teacher DiT (on the training device); see the module doc."""
    device = teacher.proj_out.weight.device
    return run_in_process(cfg, device, state_dict_sha256(teacher), hooks, teacher=lambda: private_dit(teacher, device))


def run_in_process(cfg: Config, device, base_hash: str, hooks: Hooks | None = None, mode: Mode | None = None,
                   check: bool = True, **models) -> Outcome:
    """The run behind `train_in_process` (and train_controlnet_in_process, personalize_in_process):
    `models` are setup's already loaded models by role (see the mode's build), each given as a function
    making the private module, called once the run folder is checked. `mode`: default the config's.
    check=False: the caller has checked that a new run may start in the folder (a resumed one is
    always checked against its base)."""
    out = Path(cfg.train.output_dir)
    if cfg.train.resume and cfg.train.resume != "latest":
        raise ValueError(f"train.resume must be '' or 'latest' in-process, got {cfg.train.resume!r}")
    if check or cfg.train.resume:
        check_run_folder(cfg, base_hash)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.json")
    private = {name: make() for name, make in models.items()}
    run = setup(cfg, SingleProcess(device, cfg.train.mixed_precision), "", base_hash, private, mode)
    start = resume(run) if cfg.train.resume else 0
    if start > cfg.train.max_steps:
        raise ValueError(f"train.max_steps is {cfg.train.max_steps} but the run in {out} is already at step {start}; "
                         f"set at least {start} to continue it")
    log = LossLog(out / "loss.csv", keep_before=start)
    done, stopped = loop(run, log, start, hooks)
    if not stopped:
        finish(run)
    return Outcome(run, start, done, stopped, base_hash, log.read())


def outcome_metadata(outcome: Outcome, base_name: str) -> dict[str, str]:
    """The safetensors metadata of the outputs of a finished run (kind set by the caller)."""
    cfg = outcome.run.cfg
    meta = metadata(outcome.run.mode.kind(cfg), base_hash=outcome.base_hash, base_name=base_name, steps=outcome.done,
                    config_json=config_to_json(cfg))
    return {**meta, "sana_sprint.base_model_hash_of": "state_dict"}


def outcome_lora(outcome: Outcome, base_name: str) -> LoraFile:
    """The ComfyUI LoRA (fp32 tensors on the CPU) of a LoRA-mode run."""
    m = outcome.run.cfg.model
    return lora_file(outcome.run.nets.student_core, outcome_metadata(outcome, base_name), m.lora_rank, m.lora_alpha)


def outcome_student(outcome: Outcome, teacher, device) -> torch.nn.Module:
    """The trained student as a plain DiT (adapters merged) with the teacher's layer classes and dtype."""
    dit = outcome.run.nets.student_core.dit
    state = {k: v.to(device) for k, v in merged_state_dict(dit).items()}
    return dit_like(teacher, state, dit.config, device)


def private_controlnet(net, device):
    """A ControlNet over copies-if-needed of `net`'s tensors (inference tensors are copied; autograd
    runs through a frozen teacher ControlNet in the LADD branch), so the caller's module is untouched."""
    state = {k: _usable(v).to(device) for k, v in net.state_dict().items()}
    return controlnet.controlnet_like(net, state, net.dtype).requires_grad_(False)


def train_controlnet_in_process(cfg: Config, backbone, teacher: ControlledDiT | None = None,
                                hooks: Hooks | None = None) -> Outcome:
    """A ControlNet mode in this process (a host's route, like train_in_process for the DiT).

    backbone: the loaded Sprint DiT (on the training device), e.g. a ComfyUI MODEL's; teacher: for
    mode distill, the loaded Sana base + its ControlNet (e.g. ControlledDiT(load_controlnet_base(f),
    load_controlnet(f))). Neither is changed: the run uses private modules over the same tensors.
    Returns an Outcome; controlnet.outcome_controlnet gives the trained ControlNet.
    """
    if not controlnet.enabled(cfg):
        raise ValueError("controlnet.mode is 'off'; distil a DiT with trainers.session.train_in_process")
    if (cfg.controlnet.mode == "distill") != (teacher is not None):
        raise ValueError(f"controlnet.mode {cfg.controlnet.mode!r} {'needs' if teacher is None else 'takes no'} "
                         "teacher (a ControlledDiT: the Sana base with the ControlNet to distil)")
    device = backbone.proj_out.weight.device
    models = {"backbone": lambda: private_dit(backbone, device)}
    if teacher is not None:
        models["teacher"] = lambda: ControlledDiT(private_dit(teacher.dit, device),
                                                  private_controlnet(teacher.controlnet, device))
    return run_in_process(cfg, device, state_dict_sha256(backbone), hooks, **models)


def personalize_in_process(cfg: Config, teacher, sprint, hooks: Hooks | None = None,
                           teacher_hooks: Hooks | None = None,
                           prior_text: tuple[Tensor, Tensor] | None = None) -> tuple[Outcome, Path]:
    """Personalisation in this process (trainers/personalize.py): stage 1 (the teacher LoRA, unless its
    file exists in the run folder) with `teacher_hooks`, then stage 2 (the Sprint LoRA) with `hooks`.

    teacher / sprint: the loaded teacher and released Sprint DiTs on the training device (never
    changed); prior_text: the prior prompts' (embeddings (P, L, D), masks (P, L)) for prior
    preservation, or None (then personalize.prior_prompts with data.text_encoder, if any).
    Returns (the outcome of the stage that ran last, the teacher LoRA file); outcome.stopped: a stop
    in either stage, whose checkpoint the same call with train.resume 'latest' continues.
    """
    device = teacher.proj_out.weight.device
    sprint_hash = state_dict_sha256(sprint)
    if not cfg.train.resume:  # a new run never replaces one (a finished stage 1 counts as a run)
        check_run_folder(cfg, sprint_hash)
    path = personalize.teacher_lora_path(cfg)
    if not path.is_file():
        stage = personalize.stage_config(personalize.teacher_lora_config(cfg))
        first = run_in_process(stage, device, state_dict_sha256(teacher), teacher_hooks, TEACHER_LORA, False,
                               teacher=lambda: private_dit(teacher, device), prior_text=lambda: prior_text)
        if first.stopped:
            return first, path
        export(first.run, first.done)
    second = personalize.stage_config(replace(cfg, personalize=replace(cfg.personalize, teacher_lora=str(path))))
    outcome = run_in_process(second, device, sprint_hash, hooks, PERSONALIZE, False,
                             teacher=lambda: personalize.teacher_with_lora(private_dit(teacher, device), path),
                             sprint=lambda: private_dit(sprint, device))
    return outcome, path
