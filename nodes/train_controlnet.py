"""SanaSprintDistillControlNet: a ControlNet for a SANA-Sprint MODEL, trained inside ComfyUI.

The ControlNet modes of the trainer (trainers/controlnet.py, docs/training.md section 10) through
`trainers.session.train_controlnet_in_process`, with the same run folder, progress, previews, interrupt and
resume as SanaSprintDistill (train_distill.py):
  distill  teacher = a Sana ControlNet (file in models/controlnet) steering its Sana base (the base
           inside NVIDIA's HED ControlNet .pth, or `teacher_model`); student = a ControlNet on the
           frozen Sprint MODEL, trained with sCM + LADD;
  train    no teacher: the TrigFlow denoising loss on the data.
The control maps are the cache's (SanaSprintPrecompute with control_maps 'hed'). The trained
ControlNet comes out as a SANA_CONTROLNET in the MODEL's dtype and layer classes, ready for
SanaSprintControlNetApply; SanaSprintSaveControlNet writes it.
"""

from __future__ import annotations

import torch
from comfy_api.latest import io

import comfy.model_management as mm

from ..sana_sprint_core.constants import COMFY_CONTROLNET_NAME, CONTROLNET_BLOCKS
from ..trainers.config import CONTROLNET_INITS, config_from_dict
from ..trainers.controlnet import WEIGHT_DTYPES, control_teacher, outcome_controlnet
from ..trainers.export import layer_classes
from ..trainers.session import outcome_metadata, train_controlnet_in_process
from . import model_files
from .comfy_model import sana_dit
from .float_inputs import check_floats
from .loaders import ControlNetType, controlnet_module
from .train_data import CATEGORY, CacheType
from .train_distill import (
    DENOISE_COLUMNS, Monitor, check_losses, check_output_name, check_run, finished, loss_map, run_folder, run_inputs,
    training, training_config,
)
from .train_models import TRAINING_METADATA_KEY

NODE = "SanaSprintDistillControlNet"
MODES = ("distill", "train")
NO_TEACHER = "none"
BASE_NAME = "ComfyUI MODEL"  # the backbone's file is unknown here; base_model_sha256 identifies its weights


def teacher_options() -> list[str]:
    """'none', then the controlnet listing plus the released HED ControlNet's name (so a workflow naming
    it validates; its absence is then reported by validate_inputs with the download hint)."""
    return [NO_TEACHER, *sorted(set(model_files.list_models(model_files.CONTROLNET)) | {COMFY_CONTROLNET_NAME})]


def _inputs() -> list:
    return [
        io.Model.Input("model", tooltip="The SANA-Sprint model the ControlNet is for (e.g. "
                       "Sana_Sprint_1.6B_1024px_diffusers from SanaSprintDiTLoader). Frozen: its weights are not "
                       "changed, only the ControlNet trains."),
        CacheType.Input("cache", tooltip="Latents, captions and control maps from SanaSprintPrecompute with "
                                         "control_maps 'hed'."),
        io.Combo.Input("mode", options=list(MODES), default="distill",
                       tooltip="distill: learn from the teacher ControlNet on its Sana base with sCM + LADD (the "
                               "SANA-Sprint recipe; the best route on the toy of docs/training.md 10.1). train: no "
                               "teacher, the denoising loss on your images (a plain ControlNet training; scm_weight, "
                               "ladd_weight and max_time_probability are unused; on the toy its 1-step images were far "
                               "from the data)."),
        io.Combo.Input("teacher_controlnet", options=teacher_options(), default=COMFY_CONTROLNET_NAME,
                       tooltip="The Sana ControlNet in models/controlnet to distil (mode distill), e.g. "
                               f"{COMFY_CONTROLNET_NAME} of NVIDIA, whose file also holds the Sana base it steers. "
                               "In mode train it is only the starting point (init auto/teacher); 'none': no file."),
        io.Combo.Input("init", options=list(CONTROLNET_INITS), default="auto",
                       tooltip="Start of the trained ControlNet. teacher: a copy of teacher_controlnet. backbone: "
                               f"copies of the model's first {CONTROLNET_BLOCKS} blocks with zero output projections "
                               "(the controlled model starts equal to the model; learns far slower: on the toy of "
                               "docs/training.md 10.1, 4x the updates stayed below the teacher's ControlNet used "
                               "as it is). auto: teacher when teacher_controlnet is set."),
        *run_inputs(1e-5, "1e-5 is a cautious ControlNet value (untested at 1024 px).", "sana_sprint_controlnet"),
        io.Model.Input("teacher_model", optional=True,
                       tooltip="Optional: the flow-matching Sana MODEL the teacher ControlNet steers (mode distill). "
                               "Unconnected: the Sana base stored in the teacher_controlnet file (NVlabs .pth); a "
                               "diffusers ControlNet folder holds none and needs this."),
    ]


class SanaSprintDistillControlNet(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE,
            display_name="SANA-Sprint Distill ControlNet (sCM + LADD)",
            category=CATEGORY,
            description="Trains a ControlNet for a 1-4 step SANA-Sprint model on your images and their HED "
                        "scribbles: distilled from a Sana ControlNet (sCM + LADD; e.g. NVIDIA's HED ControlNet), "
                        "or trained without a teacher. Shows the losses and a controlled preview while it trains; "
                        "Cancel stops it after writing a checkpoint that 'resume' continues. The ControlNet works "
                        "at once with SanaSprintControlNetApply.",
            inputs=_inputs(),
            outputs=[
                ControlNetType.Output(tooltip="The trained ControlNet (the model's dtype), for "
                                      "SanaSprintControlNetApply and SanaSprintSaveControlNet."),
                io.LossMap.Output(tooltip="Losses per iteration of the whole run, for SanaSprintLossGraph ('loss' is "
                                  "the student's objective per student iteration)."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, mode, teacher_controlnet, init, output_name, learning_rate=None, scm_weight=None,
                        ladd_weight=None, max_time_probability=None):
        floats = check_floats(cls, learning_rate=learning_rate, scm_weight=scm_weight, ladd_weight=ladd_weight,
                              max_time_probability=max_time_probability)
        if floats is not True:
            return floats
        for name, value, options in (("mode", mode, MODES), ("init", init, CONTROLNET_INITS)):
            if value is not None and value not in options:
                return f"{name} must be one of {options}, got {value!r}"
        try:
            teacher_path(mode, teacher_controlnet, init)
        except (ValueError, FileNotFoundError) as e:
            return str(e)
        return check_output_name(output_name)

    @classmethod
    def execute(cls, model, cache, mode, teacher_controlnet, init, steps, learning_rate, batch_size, scm_weight,
                ladd_weight, max_time_probability, seed, save_every, preview_every, output_name, resume,
                teacher_model=None) -> io.NodeOutput:
        backbone = _check_inputs(model, cache, mode, scm_weight, ladd_weight, teacher_model)
        dtype = check_run(NODE, backbone, "model", cache, output_name)
        path = teacher_path(mode, teacher_controlnet, init)
        values = dict(steps=steps, learning_rate=learning_rate, batch_size=batch_size, scm_weight=scm_weight,
                      ladd_weight=ladd_weight, max_time_probability=max_time_probability, seed=seed,
                      save_every=save_every, resume=resume)
        monitor = Monitor(cls.hidden, model.get_model_object("latent_format"))
        base = teacher_model if mode == "distill" else None
        with training(model, base):
            teacher = _teacher(path, base, WEIGHT_DTYPES[dtype], backbone) if mode == "distill" else None
            layers = (teacher or backbone).config.num_layers  # the LADD heads read the teacher's blocks
            cfg = config_from_dict(_config(cache, output_name, dtype, (mode, init, path), backbone, layers, values))
            outcome = finished(train_controlnet_in_process(cfg, backbone, teacher, monitor.hooks(preview_every)))
        net = outcome_controlnet(outcome, backbone.dtype, layer_classes(backbone)).to(mm.unet_offload_device())
        controlnet = controlnet_module(net)
        controlnet.patcher.model_options[TRAINING_METADATA_KEY] = outcome_metadata(outcome, BASE_NAME)
        if mode == "distill":
            losses = loss_map(outcome.rows, {"loss_scm": scm_weight, "loss_adv": ladd_weight})
        else:
            losses = loss_map(outcome.rows, {"loss_denoise": 1.0}, DENOISE_COLUMNS)
        del outcome, teacher
        mm.soft_empty_cache()
        return io.NodeOutput(controlnet, losses)


def _check_inputs(model, cache, mode: str, scm_weight: float, ladd_weight: float, teacher_model):
    """The Sprint DiT of `model`, after the checks of the inputs that are particular to this node."""
    backbone = sana_dit(model, NODE)
    if not backbone.config.guidance_embeds:
        raise ValueError(f"{NODE}: model has no guidance (CFG) embedder, so it is not a distilled SANA-Sprint model; "
                         "connect the Sprint model the ControlNet is for (the flow-matching Sana model is the "
                         "teacher's base: teacher_model)")
    if not getattr(cache, "has_control", False):
        raise ValueError(f"{NODE}: the cache holds no control maps; set control_maps to 'hed' on SanaSprintPrecompute")
    if mode == "distill":
        check_losses(NODE, scm_weight, ladd_weight)
        base = sana_dit(teacher_model, NODE) if teacher_model is not None else None
        if base is not None and base.config.guidance_embeds:
            raise ValueError(f"{NODE}: teacher_model has a guidance (CFG) embedder, i.e. it is a distilled Sprint "
                             "model; connect the flow-matching Sana model the teacher ControlNet was trained on, or "
                             "leave teacher_model unconnected to use the base inside the ControlNet file")
        if base is not None and base.dtype != backbone.dtype:
            raise ValueError(f"{NODE}: teacher_model's weights are {base.dtype} but model's are {backbone.dtype}; "
                             "load both with the same weight_dtype")
    return backbone


def teacher_path(mode: str | None, teacher_controlnet: str | None, init: str | None) -> str:
    """The file of teacher_controlnet when the run uses it ('' otherwise); ValueError when the mode or
    init needs one and it is 'none', FileNotFoundError with the download hint when it is missing."""
    if teacher_controlnet is None:  # linked: checked when it runs
        return ""
    if teacher_controlnet == NO_TEACHER:
        if mode == "distill":
            raise ValueError(f"teacher_controlnet is 'none', but mode 'distill' needs the Sana ControlNet to distil "
                             f"(e.g. {COMFY_CONTROLNET_NAME} in models/controlnet); or use mode 'train'")
        if init == "teacher":
            raise ValueError("teacher_controlnet is 'none', but init 'teacher' starts from a copy of it; use init "
                             "'backbone' or 'auto'")
        return ""
    if mode == "train" and init == "backbone":
        return ""  # not used
    return str(model_files.resolve(model_files.CONTROLNET, teacher_controlnet))


def _teacher(path: str, base_model, dtype: torch.dtype, backbone):
    """The teacher ControlNet on its Sana base (teacher_model's DiT, else the base in the file), read
    onto the training device (where the loaded backbone is)."""
    base = sana_dit(base_model, NODE) if base_model is not None else None
    return control_teacher(path, dtype, backbone.proj_out.weight.device, base=base)


def _config(cache, output_name: str, dtype: str, controlnet: tuple[str, str, str], backbone, head_layers: int,
            values: dict) -> dict:
    """The trainer config: the shared sections plus controlnet (mode, init, teacher file); a ControlNet
    started from the backbone copies its first CONTROLNET_BLOCKS blocks (all of a shallower model's)."""
    mode, init, path = controlnet
    cfg = training_config(cache, run_folder(output_name), dtype, {}, head_layers, **values)
    cfg["controlnet"] = {"mode": mode, "backbone": BASE_NAME, "teacher_controlnet": path, "init": init,
                         "num_blocks": min(CONTROLNET_BLOCKS, backbone.config.num_layers)}
    if mode == "train":  # no teacher: the denoising loss only
        cfg["distill"].update(scm=False, ladd=False)
    return cfg
