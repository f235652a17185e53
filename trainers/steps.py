"""One generator (G) and one discriminator (D) iteration of sCM + LADD (reference 6.3-6.5).

The step functions draw their random numbers from a `Draws` (one CPU generator per process, so a
resumed run draws the same numbers), call the pure losses of losses.py and run the backward pass;
the optimiser update (clipping, skipping non-finite steps) is `optim.apply_update`.

G phase: the student's grad forward runs once on [sCM batch; LADD batch]. The LADD gradient is
taken w.r.t. the noised fake sample inside the teacher view (where a checkpoint recompute of the
teacher must happen too), then fed into the single backward pass together with the sCM loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# torch.func.jvp imports its decompositions on first use, and that import TorchScript-compiles them
# (Python source through the AST builder). Done here, at import (0.3 s), it runs in the importing
# thread's shallow stack rather than inside the first JVP of a run (in ComfyUI: the executor thread,
# deep in a node), where CPython's AST builder failed with "AST constructor recursion depth mismatch".
import torch._decomp.decompositions_for_jvp  # noqa: F401, E402
from torch import Tensor, nn

from sana_sprint_core import trigflow
from sana_sprint_core.constants import SIGMA_DATA, T_MAX
from sana_sprint_core.dit_layers import at_least_fp32

from . import losses
from .config import DistillConfig
from .controlnet import control_kwargs
from .discriminator import Discriminator, teacher_features
from .student import Student, Teacher


@dataclass
class Batch:
    """Precomputed inputs: diffusion latents (B, C, h, w), text (B, L, Dc) + mask (B, L), null prompt;
    in the ControlNet modes the control latents (B, C, h, w) and the conditioning strength."""

    latents: Tensor
    text: Tensor
    mask: Tensor
    null_text: Tensor
    null_mask: Tensor
    control: Tensor | None = None
    control_strength: float = 1.0

    def model_kwargs(self, repeats: int = 1) -> dict:
        """Model keyword arguments of the batch's control ({} outside the ControlNet modes), the batch
        repeated `repeats` times."""
        return control_kwargs(self.control, self.control_strength, repeats)


@dataclass
class Nets:
    """`student`/`disc` may be DDP-wrapped (used for the grad forwards); the *_core ones are not. Under FSDP
    the student is sharded in place (student is student_core) and is only called through forward / velocity."""

    student: nn.Module
    student_core: Student
    teacher: Teacher
    disc: nn.Module | None
    disc_core: Discriminator | None

    @classmethod
    def local(cls, student: Student, teacher: Teacher, disc: Discriminator | None) -> "Nets":
        """Unwrapped modules (single process)."""
        return cls(student, student, teacher, disc, disc)


class Draws:
    """All random numbers of a step, from one CPU generator, moved to `device`."""

    def __init__(self, generator: torch.Generator, device: torch.device | str):
        self.generator, self.device = generator, device

    def normal(self, shape) -> Tensor:
        return torch.randn(shape, generator=self.generator).to(self.device)

    def uniform(self, n: int) -> Tensor:
        return torch.rand(n, generator=self.generator).to(self.device)

    def scm_time(self, n: int, p_mean: float, p_std: float) -> Tensor:
        return trigflow.sample_scm_time((n,), p_mean, p_std, generator=self.generator).to(self.device)

    def choice(self, values, n: int) -> Tensor:
        idx = torch.randint(len(values), (n,), generator=self.generator)
        return torch.tensor([float(v) for v in values])[idx].to(self.device)

    def noised(self, x0: Tensor, t: Tensor) -> Tensor:
        """x_t = cos t x0 + sin t sigma_d n with fresh n (sCM Eq. 1)."""
        return trigflow.add_noise(x0, self.normal(x0.shape) * SIGMA_DATA, trigflow.bcast(t, x0))


def _rep(x: Tensor, n: int) -> Tensor:
    return torch.cat([x] * n) if n > 1 else x


def scm_target(nets: Nets, batch: Batch, x_t: Tensor, t: Tensor, w: Tensor, r: float, cfg: DistillConfig):
    """(F^-, g): the student's output and the normalised sCM tangent at (x_t, t), without grad."""
    with torch.no_grad():
        both = nets.teacher(_rep(x_t, 2) / SIGMA_DATA, _rep(t, 2), torch.cat([batch.null_text, batch.text]),
                            torch.cat([batch.null_mask, batch.mask]), **batch.model_kwargs(2))
        f_u, f_c = both.chunk(2)
        dxt_dt = losses.teacher_cfg_derivative(f_u, f_c, w)
        v_x, v_t = losses.scm_jvp_tangents(t, dxt_dt)
        control = batch.model_kwargs()
        fn = lambda x_in, s: nets.student_core.velocity(x_in, s, batch.text, batch.mask, w, **control)  # noqa: E731
        f_minus, d_f = torch.func.jvp(fn, (x_t / SIGMA_DATA, t), (v_x, v_t))
        g = losses.scm_tangent(f_minus, d_f, dxt_dt, x_t, t, r)
        return f_minus, losses.normalize_tangent(g, cfg.tangent_norm_eps)


def adversarial_grad(nets: Nets, fake: Tensor, t_d: Tensor, batch: Batch, blocks) -> tuple[Tensor, Tensor]:
    """(L_adv, dL_adv/d fake): hinge generator loss of the heads on teacher features of `fake`.

    The heads run in eval mode (NVlabs `disc.eval()` in the G phase): spectral norm then uses its
    stored vectors instead of running a power iteration, so the G phase leaves the heads unchanged.
    """
    nets.disc.eval()  # the wrapper too (DDP), so every submodule follows
    leaf = fake.detach().requires_grad_(True)
    teacher = nets.teacher
    with teacher.view():  # the backward (and any checkpoint recompute) must see the teacher too
        feats = teacher_features(teacher.fn, teacher.dit, blocks, leaf / SIGMA_DATA, t_d, batch.text,
                                 batch.mask, None, **batch.model_kwargs())
        loss = losses.hinge_generator_loss(nets.disc_core(feats)[0])
        (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad


def generator_step(nets: Nets, batch: Batch, cfg: DistillConfig, step: int, draws: Draws) -> dict[str, Tensor]:
    """Forward + backward of L_G = scm_lambda L_sCM + adv_lambda L_adv; returns the detached losses."""
    x0 = SIGMA_DATA * at_least_fp32(batch.latents)
    b = x0.shape[0]
    w = draws.choice(cfg.cfg_scales, b)
    xs, ts, out = [], [], {}
    if cfg.scm:
        t = draws.scm_time(b, cfg.p_mean, cfg.p_std)
        x_t = draws.noised(x0, t)
        r = losses.tangent_warmup(step, cfg.tangent_warmup_steps)
        f_minus, g = scm_target(nets, batch, x_t, t, w, r, cfg)
        xs.append(x_t), ts.append(t)
    if cfg.ladd:
        t_g = losses.with_max_time(draws.scm_time(b, cfg.p_mean, cfg.p_std), draws.uniform(b),
                                   cfg.largest_timestep_prob, T_MAX)
        x_g = draws.noised(x0, t_g)
        xs.append(x_g), ts.append(t_g)
    n = len(xs)
    f_all, logvar = nets.student(torch.cat(xs) / SIGMA_DATA, torch.cat(ts), _rep(batch.text, n),
                                 _rep(batch.mask, n), _rep(w, n), **batch.model_kwargs(n))
    roots, grads = [], []
    if cfg.scm:
        out["loss_scm"] = losses.scm_loss(f_all[:b], f_minus, g, t, at_least_fp32(logvar[:b]))
        roots.append(cfg.scm_lambda * out["loss_scm"]), grads.append(None)
    if cfg.ladd:
        x0_hat = trigflow.x0_from_prediction(x_g, SIGMA_DATA * f_all[-b:], trigflow.bcast(t_g, x_g))
        t_d = draws.scm_time(b, cfg.disc_p_mean, cfg.disc_p_std)
        fake = draws.noised(x0_hat, t_d)
        out["loss_adv"], grad = adversarial_grad(nets, fake, t_d, batch, nets.disc_core.blocks)
        roots.append(fake), grads.append(cfg.adv_lambda * grad)
    torch.autograd.backward(roots, grads)
    return {k: v.detach() for k, v in out.items()}


def fake_and_real(nets: Nets, batch: Batch, cfg: DistillConfig, draws: Draws):
    """Noised student samples (fake) and noised data (real) with their times, without grad (reference 6.5)."""
    x0 = SIGMA_DATA * at_least_fp32(batch.latents)
    b = x0.shape[0]
    with torch.no_grad():
        w = draws.choice(cfg.cfg_scales, b)
        t = losses.with_max_time(draws.scm_time(b, cfg.p_mean, cfg.p_std), draws.uniform(b),
                                 cfg.largest_timestep_prob, T_MAX)
        x_t = draws.noised(x0, t)
        f = nets.student_core.velocity(x_t / SIGMA_DATA, t, batch.text, batch.mask, w, **batch.model_kwargs())
        x0_hat = trigflow.x0_from_prediction(x_t, SIGMA_DATA * f, trigflow.bcast(t, x_t))
        t_f = draws.scm_time(b, cfg.disc_p_mean, cfg.disc_p_std)
        fake = draws.noised(x0_hat, t_f)
        t_r = draws.scm_time(b, cfg.disc_p_mean, cfg.disc_p_std) if cfg.independent_disc_times else t_f
        real = draws.noised(x0, t_r)
        text, mask = batch.text, batch.mask
        partner = misaligned_partners(text, mask, batch.control) if cfg.misaligned_pairs and b > 1 else None
        if partner is not None:  # real image with another image's caption counts as fake
            t_m = draws.scm_time(b, cfg.disc_p_mean, cfg.disc_p_std)
            fake, t_f = torch.cat([fake, draws.noised(x0[partner], t_m)]), torch.cat([t_f, t_m])
            text, mask = _rep(text, 2), _rep(mask, 2)
    return (real, t_r, batch.text, batch.mask), (fake, t_f, text, mask)


def misaligned_partners(text: Tensor, mask: Tensor, control: Tensor | None = None) -> Tensor | None:
    """For each row i, the image index paired with caption i as a misaligned (fake) pair, or None.

    NVlabs rolls the batch by one (row i gets image i - 1). A pair whose caption (and control
    latent, in the ControlNet modes) equals row i's is a real, aligned pair: labelling it fake
    would teach the heads that correct images are fake. So row i gets image i - k with the smallest
    k >= 1 whose condition differs; with distinct captions this is exactly the roll by one. None
    when all conditions are equal (no misaligned pair exists). text (B, L, Dc), mask (B, L).
    """
    b = text.shape[0]
    keys = [(text * mask[..., None].to(text.dtype)).flatten(1), mask.flatten(1)]  # padding ignored
    if control is not None:
        keys.append(control.flatten(1))  # (B, C * h * w)
    rows = torch.arange(b, device=text.device)
    partner = torch.full((b,), -1, dtype=torch.long, device=text.device)
    for k in range(1, b):
        j = (rows - k) % b
        differs = torch.stack([(key != key[j]).any(dim=1) for key in keys]).any(dim=0)  # (B,)
        partner = torch.where((partner < 0) & differs, j, partner)
    return None if bool((partner < 0).any()) else partner


def discriminator_step(nets: Nets, batch: Batch, cfg: DistillConfig, draws: Draws) -> dict[str, Tensor]:
    """Forward + backward of the hinge discriminator loss on frozen teacher features."""
    real, fake = fake_and_real(nets, batch, cfg, draws)
    nets.disc.train()  # spectral norm: one power iteration per forward (NVlabs `disc.train()`)
    n_real = real[0].shape[0]
    with torch.no_grad():
        x, t, text, mask = (torch.cat([r, f]) for r, f in zip(real, fake))
        # rows: real, fake (and misaligned fakes), each in batch order, so the controls repeat per block
        feats = teacher_features(nets.teacher, nets.teacher.dit, nets.disc_core.blocks, x / SIGMA_DATA, t, text, mask,
                                 **batch.model_kwargs(x.shape[0] // n_real))
    real_logits, fake_logits = nets.disc({k: v[:n_real] for k, v in feats.items()},
                                         {k: v[n_real:] for k, v in feats.items()})
    loss = losses.hinge_discriminator_loss(real_logits, fake_logits)
    loss.backward()
    return {"loss_d": loss.detach()}
