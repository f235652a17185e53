"""SanaSprintDistill: sCM + LADD distillation of a teacher MODEL inside ComfyUI (trainers/session.py).

The node only translates: inputs -> a trainer Config, ComfyUI's progress bar / progress text /
interrupt flag <-> the trainer's hooks, and the trained student -> a MODEL ready to sample. It runs
with inference mode off and gradients on. The run folder output/sana_sprint_training/<output_name>
keeps config.json, loss.csv/png and checkpoints/; an interrupt (Cancel, /interrupt) writes a
checkpoint there before ComfyUI reports the interruption, and `resume` continues it exactly.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

import torch
from comfy_api.latest import io

import comfy.model_management as mm
import comfy.utils
import folder_paths

from ..sana_sprint_core.constants import ADV_LAMBDA, LARGEST_TIMESTEP_PROB, SCM_LAMBDA
from ..trainers.config import config_from_dict
from ..trainers.discriminator import fit_head_blocks
from ..trainers.session import Hooks, outcome_lora, outcome_metadata, outcome_student, train_in_process
from .comfy_model import dit_patcher, sana_dit
from .float_inputs import check_floats
from .sampling import preview_image
from .train_data import CATEGORY, CacheType, show_text
from .train_models import TRAINING_METADATA_KEY, apply_lora, release

LoraType = io.Custom("SANA_LORA")
RUNS_FOLDER = "sana_sprint_training"  # under ComfyUI's output folder
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_WEIGHT_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16"}
LOSS_COLUMNS = ("loss_scm", "loss_adv", "loss_d")  # per-iteration losses of sCM + LADD runs
DENOISE_COLUMNS = ("loss_denoise",)  # of the ControlNet training mode (trainers/controlnet.py)


def _inputs() -> list:
    return [
        io.Model.Input("model", tooltip="The teacher: a SANA flow-matching MODEL with QK-norm and dense time "
                       "(e.g. SANA_Sprint_1.6B_1024px_teacher) from SanaSprintDiTLoader. Its weights are not changed."),
        CacheType.Input("cache", tooltip="Latents and captions from SanaSprintPrecompute."),
        io.Combo.Input("mode", options=["lora", "full"], default="lora",
                       tooltip="lora: train LoRA adapters (+ the new guidance embedder) on the teacher's weights, one "
                               "copy of the weights in memory. full: train every weight (much more memory)."),
        io.Int.Input("rank", default=32, min=1, max=1024, tooltip="LoRA rank (lora mode)."),
        io.Float.Input("alpha", default=32.0, min=0.01, max=4096.0, step=1.0,
                       tooltip="LoRA alpha; the adapters are scaled by alpha / rank (lora mode)."),
        *run_inputs(1e-4, "1e-4 suits LoRA; the paper's full fine-tune uses 2e-6.", "sana_sprint_lora"),
    ]


def run_inputs(learning_rate: float, lr_hint: str, output_name: str) -> list:
    """The inputs the training nodes share, steps to resume (in SanaSprintDistill's order)."""
    return [
        io.Int.Input("steps", default=1000, min=1, max=10_000_000,
                     tooltip="Total training iterations (with LADD they alternate student and discriminator). With "
                             "resume, training continues up to this number: raise it to train on in chunks."),
        io.Float.Input("learning_rate", default=learning_rate, min=1e-8, max=1.0, step=1e-6,
                       tooltip=f"AdamW learning rate of the student and the discriminator heads. {lr_hint}"),
        io.Int.Input("batch_size", default=1, min=1, max=256, tooltip="Images per iteration (from one size bucket)."),
        io.Float.Input("scm_weight", default=SCM_LAMBDA, min=0.0, max=100.0, step=0.05,
                       tooltip="Weight of the sCM consistency loss (follows the teacher's ODE); 0 turns it off."),
        io.Float.Input("ladd_weight", default=ADV_LAMBDA, min=0.0, max=100.0, step=0.05,
                       tooltip="Weight of the LADD adversarial loss (discriminator heads on teacher features); 0 turns "
                               "it off."),
        io.Float.Input("max_time_probability", default=LARGEST_TIMESTEP_PROB, min=0.0, max=1.0, step=0.05,
                       tooltip="Probability that LADD trains at the pure-noise time (the 1-step case), as in the "
                               "paper (0.5)."),
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, control_after_generate=True,
                     tooltip="Seed of the adapter/head initialisation, data order and noise; a run is reproducible. "
                             "Keep 'control after generate' on fixed to resume a run with the same seed."),
        io.Int.Input("save_every", default=250, min=0, max=10_000_000,
                     tooltip="Write a resumable checkpoint every N iterations (0: only at the end). One is also "
                             "written when the run is interrupted."),
        io.Int.Input("preview_every", default=50, min=0, max=10_000_000,
                     tooltip="Every N iterations, show a 1-step sample of the student on the preview prompt (a latent "
                             "preview on this node); 0: no previews."),
        io.String.Input("output_name", default=output_name,
                        tooltip="Name of the run folder output/sana_sprint_training/<output_name> (checkpoints, loss "
                                "log). A folder that already holds a run is only continued with resume on."),
        io.Boolean.Input("resume", default=False,
                         tooltip="Continue the run in output_name from its latest checkpoint (same models, cache and "
                                 "settings; steps may be larger). Off: start a new run; output_name must be unused."),
    ]


class SanaSprintDistill(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaSprintDistill",
            display_name="SANA-Sprint Distill (sCM + LADD)",
            category=CATEGORY,
            description="Distils a SANA teacher into a 1-4 step SANA-Sprint student on your images (sCM + LADD, "
                        "the SANA-Sprint recipe). Shows the losses and a preview while it trains; Cancel stops it "
                        "after writing a checkpoint that 'resume' continues. The student MODEL samples at once.",
            inputs=_inputs(),
            outputs=[
                io.Model.Output(tooltip="The student: the teacher with the trained LoRA applied (or the fully trained "
                                "weights in full mode), ready for SanaSprintSampler at 1-4 steps."),
                LoraType.Output(tooltip="The trained LoRA (lora mode; None in full mode), for SanaSprintSaveLoRA."),
                io.LossMap.Output(tooltip="Losses per iteration of the whole run, for SanaSprintLossGraph (ComfyUI's "
                                  "LOSS_MAP: 'loss' is the student's objective per student iteration)."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, output_name, alpha=None, learning_rate=None, scm_weight=None, ladd_weight=None,
                        max_time_probability=None):
        floats = check_floats(cls, alpha=alpha, learning_rate=learning_rate, scm_weight=scm_weight,
                              ladd_weight=ladd_weight, max_time_probability=max_time_probability)
        return check_output_name(output_name) if floats is True else floats

    @classmethod
    def execute(cls, model, cache, mode, rank, alpha, steps, learning_rate, batch_size, scm_weight, ladd_weight,
                max_time_probability, seed, save_every, preview_every, output_name, resume) -> io.NodeOutput:
        teacher = sana_dit(model, "SanaSprintDistill")
        check_losses("SanaSprintDistill", scm_weight, ladd_weight)
        dtype = check_run("SanaSprintDistill", teacher, "teacher", cache, output_name)
        values = dict(steps=steps, learning_rate=learning_rate, batch_size=batch_size, scm_weight=scm_weight,
                      ladd_weight=ladd_weight, max_time_probability=max_time_probability, seed=seed,
                      save_every=save_every, resume=resume)
        lora = {"mode": mode, "lora_rank": rank, "lora_alpha": alpha}
        cfg = config_from_dict(training_config(cache, run_folder(output_name), dtype, lora,
                                               teacher.config.num_layers, **values))
        monitor = Monitor(cls.hidden, model.get_model_object("latent_format"))
        with training(model):
            outcome = finished(train_in_process(cfg, teacher, monitor.hooks(preview_every)))
        student, lora = _student(model, teacher, outcome)
        losses = loss_map(outcome.rows, {"loss_scm": scm_weight, "loss_adv": ladd_weight})
        del outcome
        mm.soft_empty_cache()
        return io.NodeOutput(student, lora, losses)


def check_output_name(output_name: str | None) -> bool | str:
    """validate_inputs' answer for output_name: True, or what is wrong with it."""
    if output_name is not None and not _NAME.match(output_name):
        return (f"output_name {output_name!r} must be a plain folder name (letters, digits, '.', '_', '-'; "
                "no path separators)")
    return True


def check_losses(node: str, scm_weight: float, ladd_weight: float) -> None:
    """ValueError naming `node` when both sCM + LADD losses are off."""
    if scm_weight == 0 and ladd_weight == 0:
        raise ValueError(f"{node}: scm_weight and ladd_weight are both 0; turn on at least one loss")


def check_run(node: str, dit, role: str, cache, output_name: str) -> str:
    """The checks every training node makes on its DiT (`role`: what it is to the run), cache and
    output_name; returns the trainer's weights_dtype ('fp32' or 'bf16') of the DiT's weights."""
    message = check_output_name(output_name)
    if message is not True:
        raise ValueError(f"{node}: {message}")
    cfg = dit.config
    if (cache.latent_channels, cache.text_channels) != (cfg.in_channels, cfg.caption_channels):
        raise ValueError(f"{node}: the cache holds {cache.latent_channels}-channel latents and "
                         f"{cache.text_channels}-channel text embeddings, but the {role} expects {cfg.in_channels} and "
                         f"{cfg.caption_channels}; precompute with the DC-AE and Gemma-2 this model was trained with")
    dtype = _WEIGHT_DTYPES.get(dit.dtype)
    if dtype is None:
        raise ValueError(f"{node}: the {role}'s weights are {dit.dtype}; load it with weight_dtype bf16 or fp32 for "
                         "training")
    return dtype


def run_folder(output_name: str) -> Path:
    """The run folder output/sana_sprint_training/<output_name>."""
    return Path(folder_paths.get_output_directory()) / RUNS_FOLDER / output_name


def training_config(cache, out: Path, dtype: str, model: dict, head_layers: int, *, steps, learning_rate, batch_size,
                    scm_weight, ladd_weight, max_time_probability, seed, save_every, resume) -> dict:
    """The trainer Config (as a dict) of the node inputs: `model` adds to section model; frozen weights
    in `dtype` (bf16 trains with bf16 autocast); LADD heads fit a teacher of `head_layers` blocks."""
    return {
        "model": {**model, "weights_dtype": dtype},
        "data": {"cache_dir": str(cache.folder)},
        "distill": {"scm": scm_weight > 0, "ladd": ladd_weight > 0, "scm_lambda": scm_weight,
                    "adv_lambda": ladd_weight, "largest_timestep_prob": max_time_probability,
                    "head_blocks": fit_head_blocks(head_layers)},
        "optim": {"lr": learning_rate, "disc_lr": learning_rate},
        "train": {"output_dir": str(out), "seed": seed, "max_steps": steps, "batch_size": batch_size,
                  "mixed_precision": "bf16" if dtype == "bf16" else "no", "save_every": save_every,
                  "validate_every": 0, "resume": "latest" if resume else ""},
    }


@contextmanager
def training(*models):
    """Inference mode off and gradients on, with the MODELs (None: left out) loaded on the training device first."""
    models = [m for m in models if m is not None]
    with torch.inference_mode(False), torch.enable_grad():
        release(*models)  # loaded again outside inference mode: weights copied to the GPU are usable by autograd
        mm.load_models_gpu(models, memory_required=1e20, force_full_load=True, force_patch_weights=True)
        yield


def finished(outcome):
    """The outcome of a run that ran to its end; after a stop (its checkpoint is written) ComfyUI's
    interruption is raised."""
    if outcome.stopped:
        mm.throw_exception_if_processing_interrupted()  # raises when the flag is still set
        raise mm.InterruptProcessingException()
    return outcome


class Monitor:
    """ComfyUI side of the trainer hooks: progress bar + preview, loss text, interrupt -> stop."""

    def __init__(self, hidden, latent_format):
        self.hidden, self.latent_format = hidden, latent_format
        self.bar = comfy.utils.ProgressBar(1)
        self.preview = None
        self.interrupted = False

    def hooks(self, preview_every: int) -> Hooks:
        return Hooks(on_step=self.on_step, should_stop=self.should_stop, on_preview=self.on_preview,
                     preview_every=preview_every)

    def on_preview(self, done: int, latents: torch.Tensor) -> None:
        self.preview = preview_image(latents, self.latent_format)

    def on_step(self, done: int, total: int, row: dict) -> None:
        losses = "  ".join(f"{k} {float(row[k]):.4g}" for k in (*LOSS_COLUMNS, *DENOISE_COLUMNS) if k in row)
        show_text(f"step {done}/{total} ({row['phase']})  {losses}", self.hidden)
        preview, self.preview = self.preview, None
        try:  # in a server, every progress update is also an interruption point
            self.bar.update_absolute(done, total, preview)
        except mm.InterruptProcessingException:
            self.interrupted = True  # the trainer checkpoints, then execute() raises it again

    def should_stop(self) -> bool:
        return self.interrupted or mm.processing_interrupted()


def _student(model, teacher, outcome):
    """(student MODEL, SANA_LORA or None) of a finished run."""
    base_name = "ComfyUI MODEL"  # the teacher's file is unknown here; base_model_sha256 identifies its weights
    if outcome.run.cfg.model.mode == "lora":
        lora = outcome_lora(outcome, base_name)
        release(model)  # unpatched teacher weights back on the offload device, shared by the student
        return apply_lora(model, lora.tensors, 1.0, "SanaSprintDistill LoRA", lora.metadata), lora
    dit = outcome_student(outcome, teacher, model.offload_device)
    student = dit_patcher(dit, manual_cast_dtype=model.model.manual_cast_dtype)
    student.model_options[TRAINING_METADATA_KEY] = {**outcome_metadata(outcome, base_name),
                                                    "sana_sprint.kind": "student"}
    return student, None


def loss_map(rows: list[dict], weights: dict[str, float], columns: tuple = LOSS_COLUMNS) -> dict:
    """LOSS_MAP: per-iteration 'step', 'phase' and `columns` (None where a phase has no value), and
    'loss', the student's objective (sum of weight x loss over `weights`) per G iteration."""
    def value(row, key):
        return float(row[key]) if row.get(key) not in (None, "") else None

    out = {"step": [int(r["step"]) for r in rows], "phase": [r["phase"] for r in rows]}
    for key in columns:
        out[key] = [value(r, key) for r in rows]
    out["loss"] = [sum(w * (value(r, k) or 0.0) for k, w in weights.items()) for r in rows if r["phase"] == "G"]
    return out
