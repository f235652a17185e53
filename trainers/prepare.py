"""Teacher preparation: a plain SANA flow model -> a Sprint teacher (SANA-Sprint Sec. 3.1).

The Sprint teacher differs from SANA by QK RMSNorm in self- and cross-attention and by dense time
(the embedder sees tau in [0, 1] instead of 1000 tau). `to_sprint_teacher` adds both (norm weights
start at 1; the time embedder keeps its weights and must re-learn the 1000x slower input), then
`prepare_teacher` fine-tunes it with the flow-matching loss for prepare.steps iterations (the
paper's step; a secondary source says about 5k) on the training cache.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sana_sprint_core.dit import SanaSprintDiT
from sana_sprint_core.dit_layers import at_least_fp32
from sana_sprint_core.dit_loading import load_dit, save_dit

from . import losses
from .config import Config, PrepareConfig
from .optim import apply_update, clipper, make_optimizer
from .steps import Batch, Draws

PREPARED_FILE = "prepared_teacher.safetensors"


def to_sprint_teacher(dit: SanaSprintDiT) -> SanaSprintDiT:
    """The same weights with QK RMSNorm (weights 1) in every attention and dense time input."""
    cfg = dit.config.replace(qk_norm=True, time_input_scale=1.0)
    with torch.device("meta"):
        out = SanaSprintDiT(cfg, dtype=dit.dtype)
    state = dict(dit.state_dict())
    device = dit.proj_out.weight.device
    for key, p in out.state_dict(keep_vars=True).items():
        if key not in state:
            if ".norm_q." not in key and ".norm_k." not in key:
                raise ValueError(f"unexpected new parameter {key} when adding QK norm")
            state[key] = torch.ones(p.shape, dtype=p.dtype, device=device)
    out.load_state_dict(state, strict=True, assign=True)
    return out


def fm_loss(dit: torch.nn.Module, batch: Batch, cfg: PrepareConfig, draws: Draws, dtype: torch.dtype) -> torch.Tensor:
    """The flow-matching loss at logit-normal tau (SANA / SD3 sampling), with caption dropout.

    `dit` (maybe DDP-wrapped) predicts v = eps - x0 at x_tau = (1 - tau) x0 + tau eps; `dtype` is its weights'.
    A batch with a control latent steers a ControlledDiT with it (a Sana ControlNet's own training: the
    caption is dropped, the control never).
    """
    x0 = at_least_fp32(batch.latents)
    b = x0.shape[0]
    tau = torch.sigmoid(cfg.logit_mean + cfg.logit_std * draws.normal((b,)))
    noise = draws.normal(x0.shape)
    t = tau[:, None, None, None]
    x_tau = (1 - t) * x0 + t * noise
    drop = (draws.uniform(b) < cfg.caption_dropout)[:, None]
    text = torch.where(drop[..., None], batch.null_text, batch.text)
    mask = torch.where(drop, batch.null_mask, batch.mask)
    v = dit(x_tau.to(dtype), tau, text.to(dtype), mask, **batch.model_kwargs())
    return losses.flow_matching_loss(v, x0, noise)


def fm_step(dit: torch.nn.Module, batch: Batch, cfg: PrepareConfig, draws: Draws, dtype: torch.dtype) -> torch.Tensor:
    """Forward + backward of `fm_loss`; returns the detached loss."""
    loss = fm_loss(dit, batch, cfg, draws, dtype)
    loss.backward()
    return loss.detach()


def prepare_teacher(cfg: Config, acc) -> Path:
    """Convert and fine-tune model.teacher; writes output_dir/prepared_teacher.safetensors (reused if present)."""
    from .batches import BatchStream
    from .precompute import CachedDataset

    out = Path(cfg.train.output_dir) / PREPARED_FILE
    if out.is_file():
        return out
    dit = load_dit(cfg.model.teacher, dtype=torch.float32, overrides=cfg.model.teacher_overrides or None)
    dit = to_sprint_teacher(dit).to(acc.device).train()
    dit.gradient_checkpointing = cfg.model.gradient_checkpointing
    opt = make_optimizer(list(dit.parameters()), cfg, cfg.prepare.lr, cfg.prepare.optimizer)
    dit_w, opt = acc.prepare(dit, opt)
    stream = BatchStream(CachedDataset(cfg.data.cache_dir), cfg.train.batch_size, cfg.train.seed,
                         acc.process_index, acc.num_processes)
    draws = Draws(torch.Generator().manual_seed(cfg.train.seed + 17 + acc.process_index), acc.device)
    clip = clipper(cfg.optim)
    for _ in range(cfg.prepare.steps):
        with acc.autocast():
            fm_step(dit_w, stream.next(acc.device), cfg.prepare, draws, torch.float32)
        apply_update(opt, list(dit.parameters()), clip, acc.clip_grad_norm_)
    if acc.is_main_process:
        save_dit(dit.to(torch.bfloat16 if cfg.model.weights_dtype == "bf16" else torch.float32), out)
    acc.wait_for_everyone()
    return out
