"""Typed configuration of the sCM + LADD distillation trainer (YAML or JSON).

Every section is a dataclass; unknown keys raise naming the full key ("optim.lerning_rate"), wrong
types raise naming the key, the value and the expected type. Defaults follow the NVlabs SANA-Sprint
recipe (configs/sana_sprint_config/1024ms/*.yaml, train_scripts/train_scm_ladd.py; reference
sana_sprint_model.md section 6). `resolved(cfg)` fills the mode-dependent defaults; the resolved
config is what gets saved beside checkpoints and into the output metadata.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from sana_sprint_core.constants import (
    ADV_LAMBDA, CLIP_RATIO, CONTROLNET_BLOCKS, DISC_HEAD_BLOCKS, DISC_P_MEAN, DISC_P_STD, EMA_MAX_DECAY,
    HED_SIZE_MULTIPLE, LARGEST_TIMESTEP_PROB, LR_FULL, LR_MIN_RATIO, MAX_IMAGE_SIDE, MAX_STEPS, MAX_TEXT_TOKENS,
    SCM_CFG_SCALES, SCM_LAMBDA, SCM_P_MEAN, SCM_P_STD, SCRIBBLE_TRAIN_THICKNESS_MAX, TANGENT_NORM_EPS,
    TANGENT_WARMUP_STEPS,
)
from sana_sprint_core.controlnet import WIRINGS

MODES = ("lora", "full")
OPTIMIZERS = ("adamw", "adafactor", "came")
LR_SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("no", "bf16", "fp16")
WEIGHT_DTYPES = ("fp32", "bf16", "fp16")
DISTRIBUTED = ("ddp", "fsdp")
CONTROLNET_MODES = ("off", "distill", "train")
CONTROLNET_INITS = ("auto", "teacher", "backbone")
# LoRA targets: every Linear of both attentions (module names of SanaSprintDiT, = diffusers names).
DEFAULT_LORA_TARGETS = (
    "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
    "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
)
# Learning rates used when `optim.lr` is left empty: NVlabs full fine-tune (CAME 2e-6); LoRA needs a
# much larger step on its zero-initialised adapters (a common LoRA value, our choice).
DEFAULT_LR = {"full": LR_FULL, "lora": 1e-4}


@dataclass
class ModelConfig:
    """Teacher, student mode and LoRA shape."""

    teacher: str = ""  # any SANA flow-matching DiT file/folder that sana_sprint_core.dit_loading reads
    teacher_overrides: dict = field(default_factory=dict)  # DiTConfig fields load_dit cannot infer
    mode: str = "lora"  # "lora": adapters on the teacher's weights; "full": a trainable copy
    lora_rank: int = 32
    lora_alpha: float = 32.0
    lora_targets: list = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    weights_dtype: str = "bf16"  # frozen weights: LoRA base / full-mode teacher
    gradient_checkpointing: bool = True
    logvar_scale: float = 1.0  # `logvar_scale_factor` of the NVlabs yaml


@dataclass
class PrepareConfig:
    """Optional teacher preparation: add QK RMSNorm + dense time to a plain SANA model, then
    fine-tune it with flow matching (the paper's ~5k-iteration step)."""

    enabled: bool = False
    steps: int = 5000
    optimizer: str = "adafactor"  # a full fine-tune of 1.6B fits 24 GB only with the memory-lean optimizer
    lr: float = 1e-5
    logit_mean: float = 0.0  # SANA's logit-normal flow time (weighting_scheme logit_normal)
    logit_std: float = 1.0
    caption_dropout: float = 0.1  # keep the teacher's CFG: captions replaced by the empty prompt (SANA 0.1)


@dataclass
class DataConfig:
    """Image folder, caption files and the precomputed latent/text cache."""

    image_dir: str = ""
    cache_dir: str = ""
    caption_ext: str = ".txt"
    resolution: int = 1024
    buckets: bool = True  # aspect-ratio buckets; False: center-crop squares
    text_encoder: str = ""  # Gemma-2 folder or file (sana_sprint_core.text_encoder)
    vae: str = ""  # DC-AE folder or file (sana_sprint_core.dcae)
    max_tokens: int = MAX_TEXT_TOKENS
    chi: bool = True  # prepend the complex human instruction, as SANA-Sprint does
    vae_tiled: bool = False


@dataclass
class DistillConfig:
    """sCM and LADD hyperparameters (reference 6.2-6.5)."""

    scm: bool = True
    ladd: bool = True
    scm_lambda: float = SCM_LAMBDA
    adv_lambda: float = ADV_LAMBDA
    cfg_scales: list = field(default_factory=lambda: list(SCM_CFG_SCALES))
    p_mean: float = SCM_P_MEAN
    p_std: float = SCM_P_STD
    disc_p_mean: float = DISC_P_MEAN
    disc_p_std: float = DISC_P_STD
    tangent_warmup_steps: int = TANGENT_WARMUP_STEPS
    tangent_norm_eps: float = TANGENT_NORM_EPS
    largest_timestep_prob: float = LARGEST_TIMESTEP_PROB  # LADD/D-phase: t = T_MAX with this probability
    head_blocks: list = field(default_factory=lambda: list(DISC_HEAD_BLOCKS))
    misaligned_pairs: bool = True
    independent_disc_times: bool = True  # NVlabs diff_timesteps_D


@dataclass
class OptimConfig:
    """Optimizers of the student (G) and discriminator heads (D)."""

    optimizer: str = "adamw"  # adamw; adafactor (factored second moments, no first moment); came (NVlabs)
    lr: float | None = None  # None: DEFAULT_LR[mode]
    disc_lr: float | None = None  # None: same as lr (constant: the heads follow the student)
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    eps: float = 1e-8
    grad_clip: float | None = None  # None: adaptive (clip_ratio x running mean norm); a number: fixed (NVlabs 0.1)
    clip_ratio: float = CLIP_RATIO
    warmup_steps: int = 0  # linear lr warmup over G steps
    lr_schedule: str = "cosine"  # after warmup, over the run's G updates: cosine, linear or constant
    lr_min_ratio: float = LR_MIN_RATIO  # lr at the last update = lr_min_ratio x lr


@dataclass
class TrainConfig:
    """Loop, logging, checkpoints and validation."""

    output_dir: str = "output/distill"
    seed: int = 42
    max_steps: int = 10000  # iterations; with LADD they alternate G, D, G, D ...
    batch_size: int = 1
    mixed_precision: str = "bf16"
    distributed: str = "ddp"
    save_every: int = 500
    log_every: int = 1
    validate_every: int = 500
    validation_prompts: list = field(default_factory=list)
    validation_steps: list = field(default_factory=lambda: [1, 2, 4])
    validation_guidance: float = 4.5
    validation_size: list = field(default_factory=lambda: [1024, 1024])
    export_dtype: str = "bf16"
    export_merged: bool = True  # LoRA mode: also write the merged full student
    export_diffusers_lora: bool = False  # LoRA mode: also write the LoRA in diffusers' PEFT keys
    ema: bool = True  # export, preview and validate an EMA of the trained weights (trainers/ema.py)
    ema_max_decay: float = EMA_MAX_DECAY
    resume: str = ""  # "", "latest" or a checkpoint folder


@dataclass
class ControlNetTrainConfig:
    """ControlNet modes (trainers/controlnet.py): a ControlNet for a frozen SANA-Sprint DiT.

    off: distil the DiT itself (the sections above). distill: teacher = a Sana ControlNet on its Sana
    base (model.teacher, or the base inside an NVlabs ControlNet file), student = a ControlNet on the
    frozen `backbone`, trained with sCM + LADD. train: no teacher; the denoising loss on the data.
    """

    mode: str = "off"
    teacher_controlnet: str = ""  # the Sana ControlNet to distil (NVlabs .pth, diffusers folder or ours)
    backbone: str = ""  # the SANA-Sprint DiT the new ControlNet steers (frozen)
    init: str = "auto"  # teacher: copy teacher_controlnet; backbone: its first blocks, zero projections; auto
    num_blocks: int = CONTROLNET_BLOCKS  # init backbone only
    wiring: str = "nvlabs"  # init backbone only (a teacher copy keeps the teacher's)
    hed_model: str = ""  # ControlNetHED.pth: the training maps are HED scribbles of data.image_dir
    detect_resolution: int = 0  # HED map short side; 0 = data.resolution
    thickness_min: int = 0  # scribble thickness drawn per image in [min, max] (NVlabs: 0..24)
    thickness_max: int = SCRIBBLE_TRAIN_THICKNESS_MAX
    strength: float = 1.0  # conditioning strength of teacher and student during training


@dataclass
class PersonalizeConfig:
    """Personalisation (trainers/personalize.py): a LoRA for the released Sprint model that knows your
    images. Stage 1 trains a teacher LoRA with flow matching (unless teacher_lora is given); stage 2
    distils the Sprint LoRA from teacher + teacher LoRA with the sections above (model.lora_*,
    distill, optim, train), starting at the Sprint weights."""

    enabled: bool = False
    sprint: str = ""  # the released SANA-Sprint DiT (file or folder): the frozen base of the output LoRA
    teacher_lora: str = ""  # a teacher LoRA to use (any format the LoRA loader reads); empty: stage 1 trains one
    teacher_steps: int = 500  # stage 1 updates
    teacher_lr: float = 1e-4
    teacher_rank: int = 16
    prior_prompts: list = field(default_factory=list)  # prior preservation: prompts of the class, e.g. "a dog"
    prior_images: int = 4  # latents per prior prompt, generated by the base teacher
    prior_weight: float = 1.0  # weight of the prior's flow loss (0: no prior preservation)
    prior_guidance: float = 4.5  # CFG of the prior generation
    prior_sample_steps: int = 20  # flow Euler steps of the prior generation


@dataclass
class Config:
    """The whole trainer configuration."""

    model: ModelConfig = field(default_factory=ModelConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    data: DataConfig = field(default_factory=DataConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    controlnet: ControlNetTrainConfig = field(default_factory=ControlNetTrainConfig)
    personalize: PersonalizeConfig = field(default_factory=PersonalizeConfig)


_CHOICES = {
    "model.mode": MODES, "model.weights_dtype": WEIGHT_DTYPES, "optim.optimizer": OPTIMIZERS,
    "optim.lr_schedule": LR_SCHEDULES,
    "prepare.optimizer": OPTIMIZERS,
    "train.mixed_precision": PRECISIONS, "train.distributed": DISTRIBUTED, "train.export_dtype": WEIGHT_DTYPES,
    "controlnet.mode": CONTROLNET_MODES, "controlnet.init": CONTROLNET_INITS, "controlnet.wiring": WIRINGS,
}


def _build(cls, values, where: str):
    """Dataclass `cls` from a dict, recursing into nested sections; strict about keys and types."""
    if not isinstance(values, dict):
        raise ValueError(f"config section {where or '<root>'} must be a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        names = ", ".join(f"{where}{k}" for k in unknown)
        raise ValueError(f"unknown config key(s) {names}; known keys in {where or '<root>'}: {sorted(known)}")
    out = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            out[name] = _build(hint, value, f"{where}{name}.")
        else:
            out[name] = _check_type(value, hint, f"{where}{name}")
    return cls(**out)


def _check_type(value, hint, key: str):
    """Return value (ints become floats where a float is expected) or raise naming the key."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for kind in allowed:
        if kind is type(None) and value is None:
            return value
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind in (int, str, bool, list, dict) and isinstance(value, kind):
            if kind is int and isinstance(value, bool):
                continue
            return value
    expected = " or ".join(getattr(k, "__name__", str(k)) for k in allowed)
    raise ValueError(f"config key {key} must be {expected}, got {value!r} ({type(value).__name__})")


def validate(cfg: Config) -> Config:
    """Check choices and ranges; raise ValueError naming the key."""
    for key, choices in _CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in choices:
            raise ValueError(f"config key {key} must be one of {choices}, got {value!r}")
    _check_finite(cfg, "")
    positive = {"model.lora_rank": cfg.model.lora_rank, "train.batch_size": cfg.train.batch_size,
                "train.max_steps": cfg.train.max_steps, "data.resolution": cfg.data.resolution,
                "optim.lr": cfg.optim.lr, "optim.disc_lr": cfg.optim.disc_lr, "optim.grad_clip": cfg.optim.grad_clip,
                "optim.clip_ratio": cfg.optim.clip_ratio,
                "optim.eps": cfg.optim.eps, "prepare.lr": cfg.prepare.lr, "model.lora_alpha": cfg.model.lora_alpha}
    for key, value in positive.items():
        if value is not None and value <= 0:
            raise ValueError(f"config key {key} must be positive, got {value}")
    non_negative = {"optim.weight_decay": cfg.optim.weight_decay, "optim.warmup_steps": cfg.optim.warmup_steps,
                    "distill.scm_lambda": cfg.distill.scm_lambda, "distill.adv_lambda": cfg.distill.adv_lambda}
    for key, value in non_negative.items():
        if value < 0:
            raise ValueError(f"config key {key} must be >= 0, got {value}")
    if not 0.0 <= cfg.optim.lr_min_ratio <= 1.0:
        raise ValueError(f"config key optim.lr_min_ratio must be in [0, 1] (1 = no decay), "
                         f"got {cfg.optim.lr_min_ratio}")
    if not 0.0 <= cfg.train.ema_max_decay < 1.0:
        raise ValueError(f"config key train.ema_max_decay must be in [0, 1) (0.999: about the last 1000 updates), "
                         f"got {cfg.train.ema_max_decay}")
    if cfg.data.resolution > MAX_IMAGE_SIDE:
        raise ValueError(f"config key data.resolution must be at most {MAX_IMAGE_SIDE} (the largest side the "
                         f"sampler and DC-AE accept), got {cfg.data.resolution}")
    if cfg.data.resolution % 32:
        raise ValueError(f"config key data.resolution must be a multiple of 32, got {cfg.data.resolution}")
    if cfg.train.mixed_precision == "no" and cfg.model.weights_dtype != "fp32":
        raise ValueError(f"config key model.weights_dtype is {cfg.model.weights_dtype!r} but train.mixed_precision is "
                         "'no': half-precision frozen weights need autocast; use mixed_precision bf16 or "
                         "weights_dtype fp32")
    if cfg.controlnet.mode != "train" and not (cfg.distill.scm or cfg.distill.ladd):
        raise ValueError("config keys distill.scm and distill.ladd are both false: enable at least one loss")
    _validate_controlnet(cfg)
    _validate_personalize(cfg)
    _validate_fsdp(cfg)
    if not cfg.distill.cfg_scales:
        raise ValueError("config key distill.cfg_scales is empty; the NVlabs recipe uses [4.0, 4.5, 5.0]")
    if not 0.0 <= cfg.distill.largest_timestep_prob <= 1.0:
        raise ValueError(f"config key distill.largest_timestep_prob must be in [0, 1], "
                         f"got {cfg.distill.largest_timestep_prob}")
    _check_numbers("distill.cfg_scales", cfg.distill.cfg_scales, float)
    _check_numbers("distill.head_blocks", cfg.distill.head_blocks, int)
    _check_numbers("train.validation_steps", cfg.train.validation_steps, int)
    if not all(1 <= n <= MAX_STEPS for n in cfg.train.validation_steps):
        raise ValueError(f"config key train.validation_steps must hold step counts from 1 to {MAX_STEPS} "
                         f"(SANA-Sprint samples in 1, 2 or 4 steps), got {cfg.train.validation_steps}")
    _check_numbers("optim.betas", cfg.optim.betas, float)
    if len(cfg.optim.betas) != 2:
        raise ValueError(f"config key optim.betas must hold 2 numbers, got {cfg.optim.betas}")
    return cfg


def _check_finite(section, where: str) -> None:
    """Every float of the config, nested sections and lists included, is a finite number (YAML reads
    .nan and .inf as floats, which would pass every range check)."""
    for f in dataclasses.fields(section):
        key, value = f"{where}{f.name}", getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            _check_finite(value, key + ".")
            continue
        values = value if isinstance(value, list) else [value]
        bad = [v for v in values if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise ValueError(f"config key {key} must be a finite number, got {value}")


def _validate_controlnet(cfg: Config) -> None:
    """The controlnet section: what each mode needs, and ranges."""
    c = cfg.controlnet
    if c.mode == "off":
        return
    if not c.backbone:
        raise ValueError(f"config key controlnet.backbone is empty; controlnet.mode {c.mode!r} trains a ControlNet "
                         "for that SANA-Sprint DiT")
    if c.mode == "distill" and not c.teacher_controlnet:
        raise ValueError("config key controlnet.teacher_controlnet is empty; controlnet.mode 'distill' needs the Sana "
                         "ControlNet to distil (e.g. Sana_1600M_1024px_BF16_ControlNet_HED.pth)")
    if c.mode == "train" and (cfg.distill.scm or cfg.distill.ladd):
        raise ValueError("controlnet.mode 'train' has no teacher and trains with the denoising loss only; set "
                         "distill.scm and distill.ladd to false (or use controlnet.mode 'distill')")
    if c.init == "teacher" and not c.teacher_controlnet:
        raise ValueError("config key controlnet.init is 'teacher' but controlnet.teacher_controlnet is empty")
    if cfg.prepare.enabled:
        raise ValueError("prepare.enabled prepares a DiT teacher; the ControlNet modes keep their models as given")
    if not 0 <= c.thickness_min <= c.thickness_max:
        raise ValueError(f"config keys controlnet.thickness_min/max must satisfy 0 <= min <= max, got "
                         f"{c.thickness_min}, {c.thickness_max}")
    if c.detect_resolution and c.detect_resolution < HED_SIZE_MULTIPLE:
        raise ValueError(f"config key controlnet.detect_resolution must be 0 (= data.resolution) or at least "
                         f"{HED_SIZE_MULTIPLE}, got {c.detect_resolution}")
    if c.num_blocks < 1 or c.strength < 0:
        raise ValueError(f"config keys controlnet.num_blocks must be >= 1 and controlnet.strength >= 0, got "
                         f"{c.num_blocks}, {c.strength}")


def _validate_personalize(cfg: Config) -> None:
    """The personalize section: what it needs and what it cannot be combined with."""
    p = cfg.personalize
    if not p.enabled:
        return
    if not p.sprint:
        raise ValueError("config key personalize.sprint is empty; personalisation trains a LoRA for that SANA-Sprint "
                         "DiT (e.g. Sana_Sprint_1.6B_1024px_diffusers)")
    if cfg.model.mode != "lora":
        raise ValueError("personalize.enabled trains LoRA adapters on the Sprint model; set model.mode 'lora'")
    if cfg.controlnet.mode != "off" or cfg.prepare.enabled:
        raise ValueError("personalize.enabled cannot be combined with controlnet.mode or prepare.enabled; prepare a "
                         "teacher or train a ControlNet in a run of its own")
    for key, value in {"personalize.teacher_steps": p.teacher_steps, "personalize.teacher_lr": p.teacher_lr,
                       "personalize.teacher_rank": p.teacher_rank, "personalize.prior_images": p.prior_images,
                       "personalize.prior_sample_steps": p.prior_sample_steps}.items():
        if value <= 0:
            raise ValueError(f"config key {key} must be positive, got {value}")
    if p.prior_weight < 0 or p.prior_guidance < 0:
        raise ValueError(f"config keys personalize.prior_weight and prior_guidance must be >= 0, got "
                         f"{p.prior_weight}, {p.prior_guidance}")
    if not all(isinstance(x, str) and x.strip() for x in p.prior_prompts):
        raise ValueError(f"config key personalize.prior_prompts must hold non-empty strings, got {p.prior_prompts}")


def _validate_fsdp(cfg: Config) -> None:
    """What train.distributed 'fsdp' (trainers/fsdp.py) does not support, each with the reason."""
    if cfg.train.distributed != "fsdp":
        return
    if cfg.optim.optimizer in ("adafactor", "came"):
        raise ValueError(f"train.distributed 'fsdp' needs optim.optimizer 'adamw': {cfg.optim.optimizer} factors "
                         "each weight's second moment over its rows and columns, and FSDP splits the rows across "
                         "processes (it fails on the sharded parameters)")
    if cfg.train.mixed_precision == "fp16":
        raise ValueError("train.distributed 'fsdp' supports train.mixed_precision 'bf16' or 'no', got 'fp16' "
                         "(the fp16 gradient scaler over sharded gradients is not supported here)")
    if cfg.personalize.enabled:
        raise ValueError("train.distributed 'fsdp' shards a student built from the teacher; personalize.enabled trains "
                         "a LoRA on the Sprint model, use train.distributed 'ddp'")
    if cfg.controlnet.mode != "off":
        raise ValueError(f"train.distributed 'fsdp' shards the DiT student; controlnet.mode {cfg.controlnet.mode!r} "
                         "trains a ControlNet on a frozen backbone, use train.distributed 'ddp'")


def _check_numbers(key: str, values: list, kind: type) -> None:
    ok = int if kind is int else (int, float)
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, ok)]
    if bad:
        raise ValueError(f"config key {key} must hold {kind.__name__} values, got {values}")


def resolved(cfg: Config) -> Config:
    """A copy with the mode-dependent defaults filled in (learning rates)."""
    lr = cfg.optim.lr if cfg.optim.lr is not None else DEFAULT_LR[cfg.model.mode]
    disc_lr = cfg.optim.disc_lr if cfg.optim.disc_lr is not None else lr
    optim = dataclasses.replace(cfg.optim, lr=lr, disc_lr=disc_lr)
    return dataclasses.replace(cfg, optim=optim)


def config_from_dict(values: dict) -> Config:
    """Build, validate and resolve a Config from nested dicts."""
    return resolved(validate(_build(Config, values, "")))


def load_config(path: str | Path) -> Config:
    """Read a .yaml/.yml/.json config file (see `config_from_dict`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"config file {path} is not valid JSON: {e}") from None
    elif path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"config file {path} is not valid YAML: {e}") from None
    else:
        raise ValueError(f"config file {path} must end in .yaml, .yml or .json")
    return config_from_dict(values)


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dict of the config (JSON-serialisable)."""
    return dataclasses.asdict(cfg)


def config_to_json(cfg: Config) -> str:
    """The config as a JSON string (for safetensors metadata and checkpoint folders)."""
    return json.dumps(config_to_dict(cfg), sort_keys=True)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the config as JSON (atomic: temp file + os.replace)."""
    import os
    import tempfile

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(config_to_dict(cfg), indent=2, sort_keys=True))
    os.replace(tmp, path)
