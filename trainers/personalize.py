"""Personalisation: your subject or style in the released SANA-Sprint model, still in 1-2 steps.

Two stages (config section `personalize`; docs/training.md section 8), both run by the trainer's
one loop (modes.TEACHER_LORA, modes.PERSONALIZE):
1. Teacher LoRA (skipped when personalize.teacher_lora names one): LoRA adapters on the SANA
   flow-matching teacher learn the user's images with the flow-matching loss (DreamBooth style).
   Prior preservation (optional): the base teacher first generates personalize.prior_images latents
   per prior prompt (flow Euler with CFG), and every update adds prior_weight x the flow loss on a
   batch of them, so the LoRA keeps what the prompts meant before.
2. Sprint LoRA: adapters on the *released Sprint DiT* (frozen, its guidance embedder included) are
   distilled with sCM + LADD from teacher + teacher LoRA (merged), with the user's images as LADD's
   real data. The adapters start at zero (peft's B = 0), so step 0 is exactly the released model:
   the run only has to move it towards the new concept, not learn few-step sampling again. The
   output LoRA applies to the Sprint model users already load (SanaSprintLoraLoader, --lora).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from sana_sprint_core.checkpoint_io import read_state_dict, read_state_dict_with_info, save_safetensors_atomic
from sana_sprint_core.dit import SanaSprintDiT, set_cross_attention
from sana_sprint_core.lora_formats import check_against, merge_into, read_lora

from .checkpoint import LATEST
from .config import Config
from .export import DIFFUSERS_LORA_FILE, LORA_FILE, STUDENT_FILE, diffusers_lora, dit_like, export_student, lora_file
from .prepare import fm_loss
from .steps import Batch, Draws, Nets
from .student import DTYPES, Pair, Student, Teacher, check_loaded_teacher, load_teacher, trainable_lora

TEACHER_LORA_FOLDER = "teacher_lora"  # stage 1's run folder inside train.output_dir
TEACHER_LORA_FILE = "teacher_lora.safetensors"
PRIOR_FILE = "prior.safetensors"  # stage 1: the generated prior latents with their prompts' embeddings


def teacher_lora_config(cfg: Config) -> Config:
    """Stage 1's config: its own run folder, flow matching only, the teacher-LoRA rank, lr and steps."""
    p = cfg.personalize
    model = replace(cfg.model, lora_rank=p.teacher_rank, lora_alpha=float(p.teacher_rank))
    distill = replace(cfg.distill, scm=False, ladd=False)
    optim = replace(cfg.optim, lr=p.teacher_lr, disc_lr=p.teacher_lr)
    train = replace(cfg.train, output_dir=str(Path(cfg.train.output_dir) / TEACHER_LORA_FOLDER),
                    max_steps=p.teacher_steps, validate_every=0, export_merged=False, export_diffusers_lora=False)
    return replace(cfg, model=model, distill=distill, optim=optim, train=train)


def stage_config(cfg: Config) -> Config:
    """A stage's config as a run of it starts: resumed ('latest') when resuming was asked and the stage's
    folder has a checkpoint, else new (a stage that had not saved yet starts over)."""
    saved = (Path(cfg.train.output_dir) / "checkpoints" / LATEST).is_file()
    return replace(cfg, train=replace(cfg.train, resume="latest" if cfg.train.resume and saved else ""))


def teacher_lora_path(cfg: Config) -> Path:
    """Where stage 1 writes the teacher LoRA (its presence means stage 1 is finished)."""
    return Path(cfg.train.output_dir) / TEACHER_LORA_FOLDER / TEACHER_LORA_FILE


# --- stage 1: the teacher LoRA ------------------------------------------------------------------------


class FlowLoRA(Student):
    """Stage 1's trainable module: the teacher DiT with LoRA adapters. Its forward is the DiT's flow
    velocity v(x_tau, tau) (the loop calls it through DDP); `prior` holds the prior-preservation set
    (latents, text, mask) or None. The logvar head of Student is unused and frozen."""

    def __init__(self, dit: SanaSprintDiT, prior: tuple[Tensor, Tensor, Tensor] | None):
        super().__init__(dit)
        self.logvar_linear.requires_grad_(False)
        self.prior = prior

    def forward(self, x_tau: Tensor, tau: Tensor, context: Tensor, mask: Tensor | None, guidance=None):
        return self.dit(x_tau, tau, context, mask)


def build_teacher_lora(cfg: Config, device, models: dict) -> Pair:
    """The teacher (given, or model.teacher) with fresh adapters; prior latents generated or read back."""
    teacher = models.get("teacher")
    if teacher is None:
        teacher = load_teacher(cfg, cfg.model.teacher, device)
    else:
        check_loaded_teacher(cfg, teacher, "the teacher")
    prior = prior_set(cfg, teacher, models.get("prior_text"), device)
    dit = trainable_lora(teacher, cfg.model)
    return Pair(FlowLoRA(dit, prior), None, "teacher_lora")


def teacher_lora_step(nets: Nets, batch: Batch, cfg: Config, step: int, draws: Draws) -> dict[str, Tensor]:
    """Forward + backward of the flow-matching loss on the batch, plus prior_weight x the same loss on a
    batch of prior latents (prior preservation); logit-normal times and caption dropout of cfg.prepare."""
    loss = fm_loss(nets.student, batch, cfg.prepare, draws, torch.float32)
    out = {"loss_fm": loss.detach()}
    prior = nets.student_core.prior
    if prior is not None and cfg.personalize.prior_weight > 0:
        latents, text, mask = prior
        idx = torch.randint(latents.shape[0], (batch.latents.shape[0],), generator=draws.generator)
        b = len(idx)
        prior_batch = Batch(latents[idx].to(batch.latents.device), text[idx].to(batch.text.device),
                            mask[idx].to(batch.mask.device), batch.null_text[:1].expand(b, -1, -1),
                            batch.null_mask[:1].expand(b, -1))
        prior_loss = fm_loss(nets.student, prior_batch, cfg.prepare, draws, torch.float32)
        loss = loss + cfg.personalize.prior_weight * prior_loss
        out["loss_prior"] = prior_loss.detach()
    loss.backward()
    return out


def export_teacher_lora(cfg: Config, out: Path, student: Student, meta: dict, dtype: torch.dtype) -> list[Path]:
    """The teacher LoRA in ComfyUI keys (adapters only), base = the teacher."""
    lora = lora_file(student, meta, cfg.model.lora_rank, cfg.model.lora_alpha, dtype)
    return [lora.save(out / TEACHER_LORA_FILE)]


@torch.no_grad()
def flow_euler(dit: SanaSprintDiT, noise: Tensor, text: Tensor, mask: Tensor, null_text: Tensor,
               null_mask: Tensor, guidance: float, steps: int) -> Tensor:
    """Flow-matching Euler from tau = 1 to 0 with classifier-free guidance:
    x <- x - (tau - tau') (v_u + w (v_c - v_u))   (SANA's flow ODE dx/dtau = v, CFG on the velocity)."""
    x = noise.float()
    b, dtype = x.shape[0], dit.dtype
    taus = torch.linspace(1.0, 0.0, steps + 1, device=x.device)
    for tau, tau_next in zip(taus[:-1], taus[1:]):
        t = tau.expand(b)
        v = dit(torch.cat([x, x]).to(dtype), torch.cat([t, t]), torch.cat([null_text, text]).to(dtype),
                torch.cat([null_mask, mask])).float()
        v_u, v_c = v.chunk(2)
        x = x - (tau - tau_next) * (v_u + guidance * (v_c - v_u))
    return x


def prior_set(cfg: Config, teacher: SanaSprintDiT, prior_text: tuple[Tensor, Tensor] | None, device):
    """(latents, text, mask) of prior preservation, or None without prior prompts / weight.

    Generated once by the base teacher (before any adapter exists) and kept in the stage's folder, so a
    resumed run trains on the same set. `prior_text`: the prompts' embeddings (text (P, L, D), mask
    (P, L)) given by a host; else personalize.prior_prompts encoded with data.text_encoder."""
    p = cfg.personalize
    if p.prior_weight <= 0 or (prior_text is None and not p.prior_prompts):
        return None
    path = Path(cfg.train.output_dir) / PRIOR_FILE
    if path.is_file():
        saved = read_state_dict(path)
        return saved["latents"], saved["text"], saved["mask"]
    from .precompute import CachedDataset

    data = CachedDataset(cfg.data.cache_dir)
    text, mask = prior_text if prior_text is not None else encode_prior_prompts(cfg, device)
    text, mask = fit_tokens(text, mask, data.null_text.shape[0])
    n = p.prior_images
    text, mask = text.repeat_interleave(n, 0).to(device), mask.repeat_interleave(n, 0).to(device)
    h, w = data.entries[0].size
    g = torch.Generator().manual_seed(cfg.train.seed + 4099)
    noise = torch.randn((text.shape[0], teacher.config.in_channels, h, w), generator=g).to(device)
    null_text = data.null_text[None].expand(text.shape[0], -1, -1).to(device)
    null_mask = data.null_mask[None].expand(text.shape[0], -1).to(device)
    latents = torch.cat([flow_euler(teacher, noise[i:i + 1], text[i:i + 1], mask[i:i + 1], null_text[:1],
                                    null_mask[:1], p.prior_guidance, p.prior_sample_steps)
                         for i in range(text.shape[0])])
    prior = {"latents": latents.cpu(), "text": text.float().cpu(), "mask": mask.cpu()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors_atomic(prior, path)
    return prior["latents"], prior["text"], prior["mask"]


def encode_prior_prompts(cfg: Config, device) -> tuple[Tensor, Tensor]:
    """personalize.prior_prompts through data.text_encoder (Gemma-2), as precompute encodes captions."""
    d = cfg.data
    if not d.text_encoder:
        raise ValueError("config key personalize.prior_prompts is set but data.text_encoder is empty; prior "
                         "preservation encodes the prompts with Gemma-2 (give data.text_encoder)")
    from sana_sprint_core.text_encoder import encode_prompt, load_text_encoder

    encoder = load_text_encoder(d.text_encoder, device=device)
    text, mask = encode_prompt(encoder, list(cfg.personalize.prior_prompts), chi=d.chi, max_tokens=d.max_tokens)
    return text.float().cpu(), mask.cpu()


def fit_tokens(text: Tensor, mask: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """Text embeddings (B, L, D) and masks (B, L) padded with masked zeros or cut to `length` tokens."""
    if text.shape[1] >= length:
        return text[:, :length], mask[:, :length]
    pad = length - text.shape[1]
    return (torch.cat([text, text.new_zeros(text.shape[0], pad, text.shape[2])], 1),
            torch.cat([mask, mask.new_zeros(mask.shape[0], pad)], 1))


# --- stage 2: the Sprint LoRA -------------------------------------------------------------------------


class PriorMix:
    """Stage 2's data with prior preservation: iterations 2, 3, 6, 7, 10, 11, ... (every other pair, so
    both the student and the discriminator iterations of LADD see both sets) draw a batch of stage 1's
    prior set instead of the user's images: the distillation then also keeps the Sprint LoRA on the
    teacher's behaviour for the prior prompts. Deterministic in the call count, which the checkpoint
    keeps, so a resumed run draws the same batches."""

    def __init__(self, stream, prior: tuple[Tensor, Tensor, Tensor], seed: int):
        self.stream, self.prior, self.seed, self.calls = stream, prior, seed, 0
        self.control_strength = None

    @property
    def dataset(self):
        return self.stream.dataset

    def next(self, device) -> Batch:
        n, self.calls = self.calls, self.calls + 1
        if (n // 2) % 2 == 0:
            return self.stream.next(device)
        latents, text, mask = self.prior
        b = self.stream.batch_size
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + n)
        idx = torch.randint(latents.shape[0], (b,), generator=g)
        data = self.stream.dataset
        return Batch(latents[idx].to(device), text[idx].to(device), mask[idx].to(device),
                     data.null_text[None].expand(b, -1, -1).to(device), data.null_mask[None].expand(b, -1).to(device))

    def state(self) -> dict:
        return {**self.stream.state(), "prior_calls": self.calls}

    def load_state(self, state: dict) -> None:
        self.stream.load_state(state)
        self.calls = int(state.get("prior_calls", 0))


def with_prior_batches(cfg: Config, stream):
    """The stage-2 stream: PriorMix over `stream` when stage 1 drew a prior set (and prior_weight > 0)."""
    path = teacher_lora_path(cfg).parent / PRIOR_FILE
    if cfg.personalize.prior_weight <= 0 or not path.is_file():
        return stream
    saved = read_state_dict(path)
    return PriorMix(stream, (saved["latents"], saved["text"], saved["mask"]), cfg.train.seed)


def load_sprint(cfg: Config, device) -> SanaSprintDiT:
    """The released Sprint DiT of personalize.sprint in model.weights_dtype."""
    from sana_sprint_core.dit_loading import load_dit

    if not cfg.personalize.sprint:
        raise ValueError("config key personalize.sprint is empty; give the SANA-Sprint DiT the LoRA is for "
                         "(e.g. Sana_Sprint_1.6B_1024px_diffusers)")
    return load_dit(cfg.personalize.sprint, dtype=DTYPES[cfg.model.weights_dtype]).to(device)


def check_sprint(sprint: SanaSprintDiT, teacher: SanaSprintDiT, source: str) -> None:
    """The student base must be a distilled Sprint model of the teacher's architecture."""
    if not sprint.config.guidance_embeds:
        raise ValueError(f"personalize.sprint {source} has no guidance (CFG) embedder, so it is not a distilled "
                         "SANA-Sprint model; give the Sprint DiT (the flow-matching model is model.teacher)")
    keys = ("hidden_size", "num_layers", "in_channels", "caption_channels")
    mine, theirs = ({k: getattr(c, k) for k in keys} for c in (sprint.config, teacher.config))
    if mine != theirs:
        raise ValueError(f"personalize.sprint {source} ({mine}) is not the teacher's architecture ({theirs}); "
                         "use the Sprint model distilled from this teacher")


def teacher_with_lora(teacher: SanaSprintDiT, path: str | Path) -> SanaSprintDiT:
    """A DiT of the teacher's weights with the LoRA file merged at strength 1 (new tensors for the
    changed weights; the teacher itself is not modified)."""
    state = dict(teacher.state_dict())
    shapes = {k: v.shape for k, v in state.items()}
    tensors, info = read_state_dict_with_info(path)
    lora = read_lora(tensors, shapes, info.metadata, source=f"teacher LoRA {path}")
    check_against(lora, shapes, f"the teacher (width {teacher.config.hidden_size})", f"teacher LoRA {path}")
    merge_into(state, lora, 1.0)
    return dit_like(teacher, state, teacher.config, teacher.proj_out.weight.device)


def build_personal_pair(cfg: Config, device, models: dict) -> Pair:
    """Student = the Sprint DiT + zero-started adapters (base and guidance embedder frozen); teacher =
    the teacher with the teacher LoRA merged (models: 'teacher' already merged, 'sprint'; else files)."""
    teacher = models.get("teacher")
    if teacher is None:
        if not cfg.personalize.teacher_lora:
            raise ValueError("personalize.teacher_lora is empty: train stage 1 first (python -m trainers.distill "
                             "runs it) or give a teacher LoRA file")
        teacher = teacher_with_lora(load_teacher(cfg, cfg.model.teacher, device), cfg.personalize.teacher_lora)
    else:
        check_loaded_teacher(cfg, teacher, "the teacher")
    sprint = models.get("sprint")
    sprint = load_sprint(cfg, device) if sprint is None else sprint
    check_sprint(sprint, teacher, cfg.personalize.sprint or "(given Sprint model)")
    teacher.requires_grad_(False).gradient_checkpointing = cfg.model.gradient_checkpointing
    dit = trainable_lora(sprint, cfg.model)
    set_cross_attention(dit, "math")  # the JVP needs forward-mode AD through cross-attention
    return Pair(Student(dit, cfg.model.logvar_scale), Teacher(teacher), "personalize")


def export_sprint_lora(cfg: Config, out: Path, student: Student, meta: dict, dtype: torch.dtype) -> list[Path]:
    """The Sprint LoRA (adapters only: it applies to the released Sprint model as it is), its diffusers
    twin, and the merged personalised Sprint DiT (train.export_merged)."""
    lora = lora_file(student, meta, cfg.model.lora_rank, cfg.model.lora_alpha, dtype)
    paths = [lora.save(out / LORA_FILE)]
    if cfg.train.export_diffusers_lora:
        paths.append(diffusers_lora(lora).save(out / DIFFUSERS_LORA_FILE))
    if cfg.train.export_merged:
        paths.append(export_student(student, out / STUDENT_FILE, {**meta, "sana_sprint.kind": "student"}, dtype))
    return paths
