"""ControlNet modes of the trainer (config section `controlnet`; docs/training.md).

  distill  teacher = a Sana flow model steered by its ControlNet (NVIDIA's HED ControlNet: the
           NVlabs file carries the Sana 1.6B base too); student = a ControlNet on the frozen Sprint
           DiT (`controlnet.backbone`). The sCM + LADD steps of steps.py run unchanged: the control
           latent goes to the teacher (both CFG halves), to the student (inside the JVP too) and to
           the teacher features the discriminator heads read.
  train    no teacher: the ControlNet on the frozen Sprint DiT learns from the data with the TrigFlow
           denoising loss (`denoise_step`), i.e. the consistency model's one-step x0 estimate of
           noised training latents under their control image is pulled towards the clean latent.

Only the ControlNet (plus the sCM log-variance head) is trained; backbone and teacher are frozen.
The student ControlNet starts as a copy of the teacher's ControlNet (init "teacher"), or from the
backbone's first blocks with zero projections (init "backbone", NVlabs' ControlNet init); "auto"
takes the teacher's when `controlnet.teacher_controlnet` is set. The result is written with
`save_controlnet` (safetensors + ControlNetConfig metadata), which `load_controlnet` and the
SanaSprintControlNetLoader node read. Training maps: HED scribbles of the training images with a
thickness drawn per image from [thickness_min, thickness_max] (NVlabs draws 0..24), encoded by the
DC-AE at the image's bucket size (`control_encoder`, used by precompute.py).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from sana_sprint_core import trigflow
from sana_sprint_core.constants import SIGMA_DATA, T_MAX
from sana_sprint_core.controlnet import ControlInput, ControlledDiT, SanaControlNet
from sana_sprint_core.controlnet_loading import load_controlnet, load_controlnet_base, save_controlnet
from sana_sprint_core.dit import SanaSprintDiT, set_cross_attention
from sana_sprint_core.dit_layers import at_least_fp32
from sana_sprint_core.dit_loading import load_dit

from . import losses
from .config import Config
from .discriminator import check_head_blocks
from .student import DTYPES as WEIGHT_DTYPES
from .student import Pair, Student, Teacher

CONTROLNET_FILE = "sprint_controlnet.safetensors"


def enabled(cfg: Config) -> bool:
    """True in the ControlNet modes (distill, train)."""
    return cfg.controlnet.mode != "off"


def control_kwargs(control: Tensor | None, strength: float, repeats: int = 1) -> dict:
    """The model keyword arguments of a batch's control latent ({} without one), repeated along the batch."""
    if control is None:
        return {}
    latent = torch.cat([control] * repeats) if repeats > 1 else control
    return {"control": ControlInput(latent, strength)}


def load_backbone(cfg: Config, device, dit: SanaSprintDiT | None = None) -> SanaSprintDiT:
    """The frozen Sprint DiT the student ControlNet steers (a distilled model with a CFG embedder):
    `dit` when given (in-process runs), else controlnet.backbone."""
    path = cfg.controlnet.backbone or "(given backbone)"
    if dit is None:
        if not cfg.controlnet.backbone:
            raise ValueError("config key controlnet.backbone is empty; give the SANA-Sprint DiT (file or folder) the "
                             "ControlNet is trained for, e.g. Sana_Sprint_1.6B_1024px_diffusers")
        dit = load_dit(path, dtype=WEIGHT_DTYPES[cfg.model.weights_dtype])
    if not dit.config.guidance_embeds:
        raise ValueError(f"controlnet.backbone {path} has no guidance (CFG) embedder, so it is not a distilled "
                         "SANA-Sprint model; give the Sprint DiT (the flow-matching Sana model is the teacher)")
    return dit.to(device).eval().requires_grad_(False)


def load_control_teacher(cfg: Config, device) -> ControlledDiT:
    """Teacher ControlNet on its Sana base: model.teacher, or else the base inside an NVlabs ControlNet file."""
    c, dtype = cfg.controlnet, WEIGHT_DTYPES[cfg.model.weights_dtype]
    if not c.teacher_controlnet:
        raise ValueError("config key controlnet.teacher_controlnet is empty; controlnet.mode 'distill' needs the "
                         "Sana ControlNet to distil (e.g. Sana_1600M_1024px_BF16_ControlNet_HED.pth)")
    overrides = cfg.model.teacher_overrides or None
    base = load_dit(cfg.model.teacher, dtype=dtype, overrides=overrides) if cfg.model.teacher else None
    teacher = control_teacher(c.teacher_controlnet, dtype, base=base, overrides=overrides)
    return teacher.to(device).eval().requires_grad_(False)


def control_teacher(path: str | os.PathLike, dtype: torch.dtype, device="cpu", base: SanaSprintDiT | None = None,
                    overrides: dict | None = None) -> ControlledDiT:
    """The ControlNet of file `path` (in `dtype`, on `device`) steering `base`, or when that is None the
    Sana base stored in the same NVlabs file (head counts its shapes cannot tell: `overrides`, else the
    ControlNet's, whose blocks are copies of the base's). The base must be a flow model (no CFG embedder)."""
    net = load_controlnet(path, dtype=dtype, device=device)
    if base is None:
        heads = overrides or {"num_heads": net.config.dit.num_heads, "cross_heads": net.config.dit.cross_heads}
        base = load_controlnet_base(path, dtype=dtype, device=device, overrides=heads)
    if base.config.guidance_embeds:
        raise ValueError("the ControlNet teacher's base model has a guidance (CFG) embedder, i.e. it is a distilled "
                         "Sprint model; the teacher must be the flow-matching Sana model the ControlNet was trained "
                         "on (model.teacher, or the base inside the NVlabs ControlNet file)")
    return ControlledDiT(base, net)


def _init_kind(cfg: Config) -> str:
    init = cfg.controlnet.init
    if init == "auto":
        return "teacher" if cfg.controlnet.teacher_controlnet else "backbone"
    return init


def student_controlnet(cfg: Config, backbone: SanaSprintDiT, teacher_cn: SanaControlNet | None) -> SanaControlNet:
    """The trainable ControlNet (fp32): a copy of the teacher's, or the backbone's blocks with zero projections."""
    c = cfg.controlnet
    if _init_kind(cfg) == "teacher":
        if teacher_cn is None:
            raise ValueError("controlnet.init 'teacher' copies controlnet.teacher_controlnet, which is empty")
        net = copy.deepcopy(teacher_cn).float()
        net.check_base(backbone)
    else:
        net = SanaControlNet.from_base(backbone, c.num_blocks, c.wiring).float()
    net.to(backbone.proj_out.weight.device)
    return net.train().requires_grad_(True)


def build_control_pair(cfg: Config, device, teacher: ControlledDiT | None = None,
                       backbone: SanaSprintDiT | None = None) -> Pair:
    """Student (ControlNet on the frozen backbone, with the logvar head) and, in distill mode, the teacher.

    `teacher` (Sana base + ControlNet) and `backbone` (Sprint DiT): already loaded modules for
    in-process runs, used as they are (`session.train_controlnet_in_process` passes private ones); else the
    config's files.
    """
    if teacher is not None and not isinstance(teacher, ControlledDiT):
        raise ValueError(f"the ControlNet modes take the teacher as a ControlledDiT (Sana base + its ControlNet), "
                         f"got {type(teacher).__name__}; or pass none to load it from the config")
    teacher_dit = None
    if cfg.controlnet.mode == "distill":
        teacher_dit = teacher if teacher is not None else load_control_teacher(cfg, device)
        if cfg.distill.ladd:
            check_head_blocks(cfg.distill.head_blocks, teacher_dit.config.num_layers)
    teacher_cn = teacher_dit.controlnet if teacher_dit is not None else None
    if teacher_cn is None and _init_kind(cfg) == "teacher":
        teacher_cn = load_controlnet(cfg.controlnet.teacher_controlnet, dtype=torch.float32)
    backbone = load_backbone(cfg, device, backbone)
    net = student_controlnet(cfg, backbone, teacher_cn)
    checkpointing = cfg.model.gradient_checkpointing
    backbone.gradient_checkpointing = net.gradient_checkpointing = checkpointing
    student_dit = ControlledDiT(backbone, net)
    set_cross_attention(student_dit, "math")  # the JVP needs forward-mode AD through cross-attention
    student = Student(student_dit, cfg.model.logvar_scale)
    teacher = None
    if teacher_dit is not None:
        teacher_dit.dit.gradient_checkpointing = checkpointing
        teacher = Teacher(teacher_dit)
    return Pair(student, teacher, "controlnet")


def denoise_step(nets, batch, cfg, step: int, draws) -> dict[str, Tensor]:
    """Forward + backward of the TrigFlow denoising loss of the controlled student (mode train).

    Times as the LADD branch draws them (sCM logit-normal, T_MAX with largest_timestep_prob), CFG
    scales from distill.cfg_scales; returns the detached loss. (`step` keeps generator_step's signature.)
    """
    x0 = SIGMA_DATA * at_least_fp32(batch.latents)
    b = x0.shape[0]
    w = draws.choice(cfg.cfg_scales, b)
    t = losses.with_max_time(draws.scm_time(b, cfg.p_mean, cfg.p_std), draws.uniform(b),
                             cfg.largest_timestep_prob, T_MAX)
    noise = draws.normal(x0.shape) * SIGMA_DATA
    x_t = trigflow.add_noise(x0, noise, trigflow.bcast(t, x0))
    f, _ = nets.student(x_t / SIGMA_DATA, t, batch.text, batch.mask, w,
                        **batch.model_kwargs())
    loss = losses.denoising_loss(f, x0, noise, t)
    loss.backward()
    return {"loss_denoise": loss.detach()}


def export_controlnet(student: Student, path: str | os.PathLike, meta: dict[str, str],
                      dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write the student's ControlNet in `dtype` (atomic); `load_controlnet(path)` reads it back."""
    net = copy.deepcopy(student.dit.controlnet).to(device="cpu", dtype=dtype)
    save_controlnet(net, path, metadata=meta)
    return Path(path)


def validation_control(dataset, strength: float, vae, device) -> tuple[tuple[int, int], dict]:
    """(image size, model kwargs) of the validation samples: the control of the first cached image."""
    latent = dataset.get_control(0)[None].to(device)  # (1, C, h, w)
    factor = vae.config.downscale
    return (latent.shape[-2] * factor, latent.shape[-1] * factor), control_kwargs(latent, strength)


def control_encoder(cfg: Config, vae, device, generator: torch.Generator | None = None) -> Callable[[Tensor], Tensor]:
    """image (1, 3, H, W) in [0, 1] -> control latent (1, C, h, w): `scribble_encoder` with the HED
    network of controlnet.hed_model and the DC-AE `vae` (diffusion units), as configured."""
    from sana_sprint_core.dcae import encode
    from sana_sprint_core.hed import load_hed

    c = cfg.controlnet
    if not c.hed_model:
        raise ValueError("config key controlnet.hed_model is empty; the training maps are HED scribbles of your "
                         "images, which need ControlNetHED.pth (lllyasviel/Annotators)")
    net = load_hed(c.hed_model, device=device)
    gen = generator or torch.Generator().manual_seed(cfg.train.seed)
    return scribble_encoder(net, lambda image: encode(vae, image.to(device), tiled=cfg.data.vae_tiled),
                            c.detect_resolution or cfg.data.resolution, (c.thickness_min, c.thickness_max), gen)


def scribble_encoder(hed, encode_image: Callable[[Tensor], Tensor], resolution: int, thickness: tuple[int, int],
                     generator: torch.Generator) -> Callable[[Tensor], Tensor]:
    """image (1, 3, H, W) in [0, 1] -> control latent: the HED scribble of the image (`resolution`: the
    map's short side) with a thickness drawn from [min, max] per image, resized to the image size
    (NVlabs transform_control_signal) and encoded by `encode_image`. HED runs where `hed`'s weights are."""
    from sana_sprint_core.hed import hed_edges, scribble_from_edges, to_control_image

    low, high = thickness

    def encode_control(image: Tensor) -> Tensor:
        drawn = int(torch.randint(low, high + 1, (1,), generator=generator))
        edges = hed_edges(hed, image.to(next(hed.parameters()).device), resolution)
        control = to_control_image(scribble_from_edges(edges, drawn), image.shape[-1], image.shape[-2])
        return encode_image(control)

    return encode_control


def controlnet_like(net: SanaControlNet, state: dict[str, Tensor], dtype: torch.dtype,
                    operations=None) -> SanaControlNet:
    """A ControlNet of `net`'s class and config over `state` (strict keys) in `dtype`, built with
    `operations`' layer classes (e.g. a host's); tensors already in `dtype` become its weights uncopied."""
    with torch.device("meta"):
        out = type(net)(net.config, dtype=dtype, operations=operations)
    out.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    return out.eval()


def outcome_controlnet(outcome, dtype: torch.dtype = torch.float32, operations=None) -> SanaControlNet:
    """The trained ControlNet of an in-process run: a frozen CPU copy in `dtype`, built with `operations`
    (None: torch layers; a host passes its DiT's, e.g. export.layer_classes(backbone)). Save it with
    save_controlnet."""
    net = outcome.run.nets.student_core.dit.controlnet
    state = {k: v.detach().to("cpu", dtype, copy=True) for k, v in net.state_dict().items()}
    return controlnet_like(net, state, dtype, operations).requires_grad_(False)
