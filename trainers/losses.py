"""The distillation losses of SANA-Sprint as small pure functions (tensors in, tensors out).

Notation as in sana_sprint_core/trigflow.py: TrigFlow time t in radians, sigma_d the data std,
x_t = cos(t) x0 + sin(t) z with z ~ N(0, sigma_d^2), F the network output in sigma_d-normalised
units. Per-sample tensors t, w, logvar have shape (B,) and are broadcast against images
(B, C, H, W) here. Sources: sCM = Lu & Song 2024, "Simplifying, Stabilizing and Scaling
Continuous-Time Consistency Models", Sec. 4; LADD = Sauer et al. 2024, Sec. 3; SANA-Sprint
Sec. 3.2-3.3; the NVlabs trainer train_scripts/train_scm_ladd.py (reference 6.3-6.5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sana_sprint_core import trigflow
from sana_sprint_core.constants import SIGMA_DATA


def teacher_cfg_derivative(f_uncond: Tensor, f_cond: Tensor, w: Tensor, sigma_data: float = SIGMA_DATA) -> Tensor:
    """dx_t/dt of the teacher PF-ODE with CFG: sigma_d (F_u + w (F_c - F_u)).

    TrigFlow PF-ODE dx_t/dt = sigma_d F(x_t / sigma_d, t) (sCM Eq. for TrigFlow diffusion models),
    with classifier-free guidance applied to F (SANA-Sprint Sec. 3.2; reference 6.3).
    """
    w = trigflow.bcast(w, f_cond)
    return sigma_data * (f_uncond + w * (f_cond - f_uncond))


def scm_jvp_tangents(t: Tensor, dxt_dt: Tensor, sigma_data: float = SIGMA_DATA) -> tuple[Tensor, Tensor]:
    """Tangents (v_x, v_t) = (cos t sin t dx_t/dt / sigma_d, cos t sin t) for the student's JVP.

    The JVP of F(x_t / sigma_d, t) along them is cos t sin t dF/dt (sCM Sec. 4: the cos t sin t
    factor of the time derivative is folded into the tangent, as in the NVlabs trainer).
    """
    cs = torch.cos(t) * torch.sin(t)
    return trigflow.bcast(cs, dxt_dt) * dxt_dt / sigma_data, cs


def tangent_warmup(step: int, warmup_steps: int) -> float:
    """r = min(1, step / warmup_steps) (sCM Sec. 4.2, "tangent warmup"); r = 1 without warmup."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, step / warmup_steps)


def scm_tangent(
    f_minus: Tensor, dF: Tensor, dxt_dt: Tensor, x_t: Tensor, t: Tensor, r: float, sigma_data: float = SIGMA_DATA
) -> Tensor:
    """g = -cos^2 t (sigma_d F^- - dx_t/dt) - r (cos t sin t x_t + sigma_d dF).

    The tangent of the continuous-time consistency objective (sCM Sec. 4.1, df^-/dt of
    f(x_t, t) = cos t x_t - sin t sigma_d F, scaled by cos t), with the tangent warmup factor r
    on the second term (Sec. 4.2). `dF` is the JVP along `scm_jvp_tangents`, i.e. already
    multiplied by cos t sin t. f_minus, dF: normalised units; dxt_dt, x_t: data units.
    """
    cos, sin = torch.cos(t), torch.sin(t)
    cos, sin = trigflow.bcast(cos, x_t), trigflow.bcast(sin, x_t)
    return -cos**2 * (sigma_data * f_minus - dxt_dt) - r * (cos * sin * x_t + sigma_data * dF)


def normalize_tangent(g: Tensor, eps: float) -> Tensor:
    """g / (||g||_2 + c), the norm per sample over all non-batch dims (sCM Sec. 4.2, c = 0.1)."""
    norm = torch.linalg.vector_norm(g.flatten(1), dim=1)  # (B,)
    return g / (trigflow.bcast(norm, g) + eps)


def scm_loss(
    f: Tensor, f_minus: Tensor, g: Tensor, t: Tensor, logvar: Tensor, sigma_data: float = SIGMA_DATA
) -> Tensor:
    """mean[ w(t) / exp(logvar) * (F - F^- - g)^2 + logvar ], w(t) = 1 / (sigma_d tan t).

    The sCM objective with adaptive weighting (sCM Sec. 4.3: a learned per-time log-variance
    turns the weighting into a Gaussian NLL), mean over batch and elements as in the NVlabs
    trainer. `logvar` has shape (B,) or (B, 1).
    """
    weight = 1.0 / (sigma_data * torch.tan(t))  # (B,)
    logvar = trigflow.bcast(logvar.reshape(-1), f)
    per_elem = trigflow.bcast(weight, f) / torch.exp(logvar) * (f - f_minus - g) ** 2 + logvar
    return per_elem.mean()


def hinge_generator_loss(fake_logits: Tensor) -> Tensor:
    """-mean(D(fake)), the hinge GAN generator loss (LADD Sec. 3; reference 6.4)."""
    return -fake_logits.mean()


def hinge_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """0.5 (mean ReLU(1 - D(real)) + mean ReLU(1 + D(fake))), the hinge discriminator loss (reference 6.5)."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def with_max_time(t: Tensor, u: Tensor, prob: float, t_max: float) -> Tensor:
    """t replaced by t_max where u < prob (LADD "max-time weighting", SANA-Sprint Sec. 3.3).

    u are uniforms in [0, 1) of the same shape as t. t_max is constants.T_MAX (~pi/2), never 0.5.
    """
    return torch.where(u < prob, torch.full_like(t, t_max), t)


def denoising_loss(f: Tensor, x0: Tensor, noise: Tensor, t: Tensor, sigma_data: float = SIGMA_DATA) -> Tensor:
    """mean (F - (cos t z - sin t x0) / sigma_d)^2: the TrigFlow diffusion loss (sCM Sec. 2).

    The target is dx_t/dt / sigma_d for x_t = cos t x0 + sin t z (z ~ N(0, sigma_d^2)); at zero loss
    the one-step estimate cos t x_t - sin t sigma_d F equals x0. Used to train a ControlNet on a
    frozen consistency model without a teacher (controlnet.mode 'train'). f, x0, noise (B, C, H, W).
    """
    target = trigflow.prediction_from_x0_noise(x0, noise, trigflow.bcast(t, x0)) / sigma_data
    return ((f.float() - target.float()) ** 2).mean()


def flow_matching_loss(v_pred: Tensor, x0: Tensor, noise: Tensor) -> Tensor:
    """mean (v - (eps - x0))^2: rectified-flow velocity loss of SANA, x_tau = (1 - tau) x0 + tau eps."""
    return ((v_pred.float() - (noise - x0).float()) ** 2).mean()
