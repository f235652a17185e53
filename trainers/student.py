"""Student / teacher pair of the distillation (reference 6.1).

* Student: the teacher's DiT plus a new guidance (CFG) embedder (first linear N(0, 0.02), bias 0;
  second linear weight and bias zero, NVlabs init, reference 1.8 — NOT the all-zero init of the
  diffusers example, which leaves the embedding input-independent), wrapped as TrigFlow F, plus the
  logvar head (Linear(D, 1), xavier, bias 0) reading c = time + CFG embedding.
* LoRA mode: adapters (peft) on the student's Linear layers; the teacher is the SAME module with the
  adapters disabled and the guidance embedder detached (`teacher_view`), so one copy of the base
  weights is in memory. Full mode: a trainable fp32 copy; the teacher stays frozen in its dtype.
Cross-attention of the student runs the explicit fp32 softmax ("math"), which supports the JVP;
the self-attention stays SANA's ReLU linear attention.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sana_sprint_core import trigflow
from sana_sprint_core.constants import GUIDANCE_INIT_STD
from sana_sprint_core.dit import SanaSprintDiT, set_cross_attention
from sana_sprint_core.dit_layers import at_least_fp32
from sana_sprint_core.precision import COMPUTE_DTYPES
from sana_sprint_core.trigflow_model import TrigFlowModel

from .config import Config, ModelConfig

ADAPTER_NAME = "default"
DTYPES = COMPUTE_DTYPES  # config dtype names -> torch dtypes


def load_teacher(cfg: Config, path: str, device) -> SanaSprintDiT:
    """The teacher DiT of file/folder `path` in model.weights_dtype on `device`, checked for the sCM recipe."""
    from sana_sprint_core.dit_loading import load_dit

    if not path:
        raise ValueError("config key model.teacher is empty; give a SANA flow-matching DiT file or folder")
    overrides = cfg.model.teacher_overrides or None
    dit = load_dit(path, dtype=DTYPES[cfg.model.weights_dtype], overrides=overrides)
    check_loaded_teacher(cfg, dit, path)
    return dit.to(device)


def check_loaded_teacher(cfg: Config, dit: SanaSprintDiT, source: str) -> None:
    """A flow-matching Sprint teacher (check_teacher) whose blocks hold the LADD heads (when LADD is on)."""
    from .discriminator import check_head_blocks

    check_teacher(dit, source)
    if cfg.distill.ladd:
        check_head_blocks(cfg.distill.head_blocks, dit.config.num_layers)


def check_teacher(dit: SanaSprintDiT, source: str) -> None:
    """Raise unless `dit` is a flow-matching teacher the sCM recipe can use directly."""
    cfg = dit.config
    if cfg.guidance_embeds:
        raise ValueError(f"teacher {source} has a guidance (CFG) embedder, i.e. it is already a distilled "
                         "Sprint model; pass the flow-matching teacher (e.g. SANA_Sprint_1.6B_1024px_teacher)")
    if not cfg.qk_norm or cfg.time_input_scale != 1.0:
        raise ValueError(f"teacher {source} is a plain SANA model (qk_norm={cfg.qk_norm}, time_input_scale="
                         f"{cfg.time_input_scale}); set prepare.enabled: true to add QK RMSNorm and dense time "
                         "and fine-tune it first, or pass a Sprint teacher")


def init_guidance_embedder(embedder: nn.Module, generator: torch.Generator | None = None) -> None:
    """linear_1.weight ~ N(0, 0.02), linear_1.bias = 0, linear_2 weight and bias = 0 (reference 1.8)."""
    with torch.no_grad():
        w = embedder.linear_1.weight
        w.copy_(torch.randn(w.shape, generator=generator) * GUIDANCE_INIT_STD)
        embedder.linear_1.bias.zero_()
        embedder.linear_2.weight.zero_()
        embedder.linear_2.bias.zero_()


def with_guidance_embedder(teacher: SanaSprintDiT, dtype: torch.dtype, *, copy: bool, generator=None) -> SanaSprintDiT:
    """A new DiT with the teacher's weights (cast to `dtype`) plus a freshly initialised CFG embedder.

    copy=False shares the teacher's tensors where the dtype already matches (LoRA mode: one copy).
    """
    cfg = teacher.config.replace(guidance_embeds=True)
    with torch.device("meta"):
        dit = SanaSprintDiT(cfg, dtype=dtype)
    state = {k: v.detach().to(dtype, copy=copy) for k, v in teacher.state_dict().items()}
    device = teacher.proj_out.weight.device
    for key, p in dit.state_dict(keep_vars=True).items():
        if key.startswith("time_embed.guidance_embedder."):
            state[key] = torch.empty(p.shape, dtype=dtype, device=device)
    dit.load_state_dict(state, strict=True, assign=True)
    init_guidance_embedder(dit.time_embed.guidance_embedder, generator)
    return dit


class Student(nn.Module):
    """TrigFlow F of the student DiT plus the logvar head: (F, logvar (B, 1)).

    `dit` is a SanaSprintDiT, or a ControlledDiT in the ControlNet modes (the control then comes
    as the keyword `control`, passed through to it).
    """

    def __init__(self, dit: SanaSprintDiT, logvar_scale: float = 1.0):
        super().__init__()
        self.model = TrigFlowModel(dit)
        self.logvar_linear = nn.Linear(dit.config.hidden_size, 1, device=next(dit.parameters()).device)
        nn.init.xavier_uniform_(self.logvar_linear.weight)
        nn.init.zeros_(self.logvar_linear.bias)
        self.logvar_scale = logvar_scale

    @property
    def dit(self) -> SanaSprintDiT:
        return self.model.dit

    def forward(self, x_in: Tensor, s: Tensor, context: Tensor, mask: Tensor | None, guidance: Tensor,
                **model_kwargs):
        """x_in = x_t / sigma_d, s TrigFlow time (B,), guidance raw CFG scale (B,) -> (F, logvar)."""
        f = self.model(x_in, s, context, mask, guidance, **model_kwargs)
        tau = trigflow.flow_time(at_least_fp32(s))
        _, c = self.dit.embed_conditions(tau, guidance, self.dit.dtype)  # c: time + CFG embedding (B, D)
        return f, self.logvar_linear(c.to(self.logvar_linear.weight.dtype)) * self.logvar_scale

    def velocity(self, x_in: Tensor, s: Tensor, context: Tensor, mask: Tensor | None, guidance: Tensor | None,
                 **model_kwargs) -> Tensor:
        """F alone, without the logvar head: the JVP, samples and the LoRA-mode teacher call this.

        Under FSDP (trainers/fsdp.py) it is registered as a forward method, so it gathers the root unit.
        """
        return self.model(x_in, s, context, mask, guidance, **model_kwargs)


class Teacher:
    """Frozen teacher F(x_in, s, context, mask) (no guidance input); `dit` is hooked for LADD features.

    `fn(x_in, s, context, mask, guidance, **kw)` computes F (default: the TrigFlow wrapper of `dit`);
    in LoRA mode it is the student's `velocity`, called inside `view` (adapters off).
    """

    def __init__(self, dit: SanaSprintDiT, view: Callable[[], object] = nullcontext, fn: Callable | None = None):
        self.model = TrigFlowModel(dit)
        self.view = view
        self.fn = self.model if fn is None else fn

    @property
    def dit(self) -> SanaSprintDiT:
        return self.model.dit

    def __call__(self, x_in: Tensor, s: Tensor, context: Tensor, mask: Tensor | None, **model_kwargs) -> Tensor:
        with self.view():
            return self.fn(x_in, s, context, mask, None, **model_kwargs)


def _tuner_layers(model: nn.Module) -> list[nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


@contextmanager
def teacher_view(dit: SanaSprintDiT):
    """Within the block, `dit` computes the teacher: LoRA adapters off, guidance embedder detached.

    Gradient-checkpoint recomputation replays module state at backward time, so a backward through
    a teacher pass must also run inside this block (steps.py does so). peft's switch also freezes the
    adapter weights; their requires_grad flags are put back at once (the switched-off adapters are not
    used either way): FSDP copies these flags into the gathered weights, and a flag that changed since
    would be set inside the next sCM JVP, which torch.func does not allow.
    """
    layers = _tuner_layers(dit)
    embed = dit.time_embed
    guidance = embed.guidance_embedder
    for layer in layers:
        flags = [(p, p.requires_grad) for p in layer.parameters()]
        layer.enable_adapters(False)
        for p, flag in flags:
            p.requires_grad_(flag)
    embed.guidance_embedder = None
    try:
        yield
    finally:
        embed.guidance_embedder = guidance
        for layer in layers:
            layer.enable_adapters(True)


def lora_target_regex(targets: list[str]) -> str:
    """Full-name regex for peft: transformer_blocks.<i>.<target> for each target module suffix."""
    alternatives = "|".join(re.escape(t) for t in targets)
    return rf"^transformer_blocks\.\d+\.({alternatives})$"


def add_lora(dit: SanaSprintDiT, cfg: ModelConfig) -> SanaSprintDiT:
    """Inject LoRA adapters (dropout 0, B = 0 so the student starts as the teacher); raise on unmatched targets."""
    from peft import LoraConfig, inject_adapter_in_model

    names = [n for n, _ in dit.named_modules()]
    for target in cfg.lora_targets:
        if not any(re.fullmatch(rf"transformer_blocks\.\d+\.{re.escape(target)}", n) for n in names):
            raise ValueError(f"model.lora_targets entry {target!r} matches no module of the DiT; "
                             f"examples of valid entries: attn1.to_q, attn2.to_out.0, ff.conv_inverted")
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                      target_modules=lora_target_regex(cfg.lora_targets), init_lora_weights=True)
    return inject_adapter_in_model(lora, dit, adapter_name=ADAPTER_NAME)


def trainable_lora(dit: SanaSprintDiT, cfg: ModelConfig, also: tuple[str, ...] = ()) -> SanaSprintDiT:
    """`dit` frozen with fresh LoRA adapters (model.lora_*; B = 0, so the output is unchanged at the start)
    that train in fp32, with the modules named by the prefixes `also` trained in full."""
    dit = add_lora(dit.requires_grad_(False), cfg)
    for name, p in dit.named_parameters():
        if ".lora_" in name or name.startswith(also):
            p.data = p.data.float()
            p.requires_grad_(True)
    dit.gradient_checkpointing = cfg.gradient_checkpointing
    return dit


@dataclass
class Pair:
    """The trainable student and the frozen teacher view of the distillation."""

    student: Student
    teacher: Teacher
    mode: str


def build_pair(teacher_dit: SanaSprintDiT, cfg: ModelConfig, generator: torch.Generator | None = None) -> Pair:
    """Student + teacher from a loaded teacher DiT (its dtype = model.weights_dtype), see module doc."""
    teacher_dit.requires_grad_(False)
    teacher_dit.gradient_checkpointing = cfg.gradient_checkpointing
    if cfg.mode == "full":
        dit = with_guidance_embedder(teacher_dit, torch.float32, copy=True, generator=generator)
        dit.requires_grad_(True)
        teacher = Teacher(teacher_dit)
    else:
        dit = with_guidance_embedder(teacher_dit, teacher_dit.dtype, copy=False, generator=generator)
        dit = trainable_lora(dit, cfg, also=("time_embed.guidance_embedder.",))
    dit.gradient_checkpointing = cfg.gradient_checkpointing
    set_cross_attention(dit, "math")  # the JVP needs forward-mode AD through cross-attention
    student = Student(dit, cfg.logvar_scale)
    if cfg.mode != "full":  # the student's own F with the adapters off; looked up per call (FSDP patches it)
        teacher = Teacher(dit, view=lambda: teacher_view(dit), fn=lambda *a, **kw: student.velocity(*a, **kw))
    return Pair(student, teacher, cfg.mode)


def trainable_state_dict(student: Student) -> dict[str, Tensor]:
    """The student's trainable tensors by name (all of them in full mode; adapters + new heads in LoRA mode)."""
    return {n: p.detach() for n, p in student.named_parameters() if p.requires_grad}
