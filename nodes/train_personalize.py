"""SanaSprintPersonalize: your subject or style in the released SANA-Sprint model, trained inside ComfyUI.

The personalisation route of the trainer (trainers/personalize.py, docs/training.md section 8)
through `trainers.session.personalize_in_process`: stage 1 trains a LoRA on the flow-matching
teacher with the flow loss on your images (prior preservation from an optional `prior`
conditioning); stage 2 distils a LoRA on the *Sprint* MODEL from teacher + teacher LoRA with
sCM + LADD, starting exactly at the Sprint model. Same run folder, progress, previews (the
Sprint LoRA at 1 and 2 steps, side by side), Cancel and resume as SanaSprintDistill. The Sprint
LoRA comes out applied to the Sprint MODEL and as a SANA_LORA for SanaSprintSaveLoRA; it loads on
the Sprint model with SanaSprintLoraLoader.
"""

from __future__ import annotations

from comfy_api.latest import io

import comfy.model_management as mm

from ..trainers.config import config_from_dict
from ..trainers.export import LoraFile
from ..trainers.session import Hooks, outcome_lora, outcome_metadata, personalize_in_process
from .comfy_model import sana_dit
from .float_inputs import check_floats
from .train_data import CATEGORY, CacheType, show_text
from .train_distill import (
    LoraType, Monitor, check_losses, check_output_name, check_run, finished, loss_map, run_folder, run_inputs,
    training, training_config,
)
from .train_models import apply_lora, release

NODE = "SanaSprintPersonalize"
PREVIEW_STEPS = (1, 2)
BASE_NAME = "ComfyUI MODEL"  # the Sprint model's file is unknown here; base_model_sha256 identifies its weights


def _inputs() -> list:
    return [
        io.Model.Input("teacher", tooltip="The flow-matching SANA teacher (e.g. SANA_Sprint_1.6B_1024px_teacher) from "
                       "SanaSprintDiTLoader. Stage 1 learns your images on it. Its weights are not changed."),
        io.Model.Input("sprint", tooltip="The released SANA-Sprint model you sample with (e.g. "
                       "Sana_Sprint_1.6B_1024px_diffusers). The LoRA is trained for it and starts at it exactly."),
        CacheType.Input("cache", tooltip="Latents and captions of your images from SanaSprintPrecompute (put your "
                                         "subject's token in the captions, e.g. 'a photo of sks dog')."),
        io.Int.Input("rank", default=32, min=1, max=1024, tooltip="Rank of the Sprint LoRA (alpha = rank)."),
        io.Int.Input("teacher_steps", default=500, min=1, max=10_000_000,
                     tooltip="Stage 1: flow-matching updates of the teacher LoRA (done once; a finished stage 1 "
                             "is reused when the run is resumed)."),
        io.Float.Input("teacher_learning_rate", default=1e-4, min=1e-8, max=1.0, step=1e-6,
                       tooltip="Stage 1: AdamW learning rate of the teacher LoRA."),
        io.Int.Input("teacher_rank", default=16, min=1, max=1024, tooltip="Stage 1: rank of the teacher LoRA."),
        *run_inputs(1e-4, "Stage 2 (the Sprint LoRA); 1e-4 suits LoRA.", "sana_sprint_personalize"),
        io.Int.Input("prior_images", default=4, min=1, max=1024,
                     tooltip="Samples of the prior prompt (input prior) drawn by the base teacher (20 steps, "
                             "CFG 4.5)."),
        io.Float.Input("prior_weight", default=1.0, min=0.0, max=100.0, step=0.05,
                       tooltip="Weight of the prior's flow loss in stage 1 (0: no prior preservation)."),
        io.Conditioning.Input("prior", optional=True,
                              tooltip="Optional prior preservation: the class prompt (e.g. 'a photo of a dog') from "
                                      "SanaSprintTextEncode. The base teacher first draws prior_images samples of it, "
                                      "and stage 1 keeps learning them, so the class keeps its old look."),
    ]


class SanaSprintPersonalize(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE,
            display_name="SANA-Sprint Personalize (teacher LoRA + Sprint LoRA)",
            category=CATEGORY,
            description="Teaches the released SANA-Sprint model your subject or style, still in 1-2 steps: a LoRA "
                        "on the teacher learns your images (flow matching), then a LoRA on the Sprint model is "
                        "distilled from it (sCM + LADD), starting exactly at the Sprint model. Shows the losses and "
                        "1- and 2-step previews; Cancel stops it after writing a checkpoint that 'resume' continues.",
            inputs=_inputs(),
            outputs=[
                io.Model.Output(display_name="SPRINT_MODEL",
                                tooltip="The Sprint model with the trained LoRA applied, for SanaSprintSampler at 1-2 "
                                        "steps."),
                LoraType.Output(display_name="SPRINT_LORA",
                                tooltip="The Sprint LoRA (for SanaSprintSaveLoRA; SanaSprintLoraLoader applies it to "
                                        "the Sprint model)."),
                LoraType.Output(display_name="TEACHER_LORA",
                                tooltip="The teacher LoRA of stage 1 (applies to the teacher)."),
                io.LossMap.Output(tooltip="Losses of stage 2 per iteration, for SanaSprintLossGraph ('loss' is the "
                                  "student's objective per student iteration)."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, output_name, teacher_learning_rate=None, learning_rate=None, scm_weight=None,
                        ladd_weight=None, max_time_probability=None, prior_weight=None):
        floats = check_floats(cls, teacher_learning_rate=teacher_learning_rate, learning_rate=learning_rate,
                              scm_weight=scm_weight, ladd_weight=ladd_weight,
                              max_time_probability=max_time_probability, prior_weight=prior_weight)
        return check_output_name(output_name) if floats is True else floats

    @classmethod
    def execute(cls, teacher, sprint, cache, rank, teacher_steps, teacher_learning_rate, teacher_rank, steps,
                learning_rate, batch_size, scm_weight, ladd_weight, max_time_probability, seed, save_every,
                preview_every, output_name, resume, prior=None, prior_images=4, prior_weight=1.0) -> io.NodeOutput:
        teacher_dit, sprint_dit = _check_models(teacher, sprint)
        check_losses(NODE, scm_weight, ladd_weight)
        dtype = check_run(NODE, teacher_dit, "teacher", cache, output_name)
        check_run(NODE, sprint_dit, "sprint model", cache, output_name)
        values = dict(steps=steps, learning_rate=learning_rate, batch_size=batch_size, scm_weight=scm_weight,
                      ladd_weight=ladd_weight, max_time_probability=max_time_probability, seed=seed,
                      save_every=save_every, resume=resume)
        cfg = training_config(cache, run_folder(output_name), dtype, {"lora_rank": rank, "lora_alpha": float(rank)},
                              teacher_dit.config.num_layers, **values)
        cfg["personalize"] = {"enabled": True, "sprint": BASE_NAME, "teacher_steps": teacher_steps,
                              "teacher_lr": teacher_learning_rate, "teacher_rank": teacher_rank,
                              "prior_images": prior_images, "prior_weight": prior_weight if prior else 0.0}
        monitor = Monitor(cls.hidden, sprint.get_model_object("latent_format"))
        hooks = monitor.hooks(preview_every)
        hooks.preview_steps = PREVIEW_STEPS
        stage1 = Hooks(on_step=lambda done, total, row: _stage1_progress(monitor, done, total, row),
                       should_stop=monitor.should_stop)
        with training(teacher, sprint):
            outcome, teacher_path = personalize_in_process(config_from_dict(cfg), teacher_dit, sprint_dit, hooks,
                                                           stage1, _prior_text(prior))
            outcome = finished(outcome)
        lora = outcome_lora(outcome, BASE_NAME)
        teacher_lora = LoraFile.read(teacher_path)
        losses = loss_map(outcome.rows, {"loss_scm": scm_weight, "loss_adv": ladd_weight})
        meta = outcome_metadata(outcome, BASE_NAME)
        del outcome
        release(sprint)
        model = apply_lora(sprint, lora.tensors, 1.0, f"{NODE} LoRA", meta)
        mm.soft_empty_cache()
        return io.NodeOutput(model, lora, teacher_lora, losses)


def _check_models(teacher, sprint):
    """(teacher DiT, Sprint DiT) after the checks particular to this node."""
    teacher_dit, sprint_dit = sana_dit(teacher, NODE), sana_dit(sprint, NODE)
    if teacher_dit.config.guidance_embeds:
        raise ValueError(f"{NODE}: teacher has a guidance (CFG) embedder, i.e. it is a distilled Sprint model; connect "
                         "the flow-matching teacher (e.g. SANA_Sprint_1.6B_1024px_teacher) to teacher and the Sprint "
                         "model to sprint")
    if not sprint_dit.config.guidance_embeds:
        raise ValueError(f"{NODE}: sprint has no guidance (CFG) embedder, so it is not a distilled SANA-Sprint model; "
                         "connect the Sprint model you sample with (the flow-matching model goes to teacher)")
    if teacher_dit.dtype != sprint_dit.dtype:
        raise ValueError(f"{NODE}: teacher's weights are {teacher_dit.dtype} but sprint's are {sprint_dit.dtype}; load "
                         "both with the same weight_dtype")
    return teacher_dit, sprint_dit


def _prior_text(prior):
    """(embeddings (P, L, D), masks (P, L)) of a prior CONDITIONING, or None."""
    if not prior:
        return None
    import torch

    texts, masks = [], []
    for embeds, extra in prior:
        mask = extra.get("attention_mask")
        if mask is None:
            mask = torch.ones(embeds.shape[:2], dtype=torch.int64)
        texts.append(embeds.float().cpu()), masks.append(mask.to(torch.int64).cpu())
    length = max(t.shape[1] for t in texts)
    from ..trainers.personalize import fit_tokens

    fitted = [fit_tokens(t, m, length) for t, m in zip(texts, masks)]
    return torch.cat([t for t, _ in fitted]), torch.cat([m for _, m in fitted])


def _stage1_progress(monitor: Monitor, done: int, total: int, row: dict) -> None:
    """Stage 1's progress text and bar (the loss of the teacher LoRA)."""
    prior = f"  loss_prior {float(row['loss_prior']):.4g}" if row.get("loss_prior") else ""
    show_text(f"teacher LoRA step {done}/{total}  loss_fm {float(row['loss_fm']):.4g}{prior}", monitor.hidden)
    try:
        monitor.bar.update_absolute(done, total)
    except mm.InterruptProcessingException:
        monitor.interrupted = True
