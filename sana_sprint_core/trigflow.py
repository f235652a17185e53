"""TrigFlow time and state algebra of SANA-Sprint, as small pure functions.

Notation: s is TrigFlow time in [0, pi/2], tau is flow-matching (FM) time in [0, 1], sigma_d the
data std. The TrigFlow state is x_s = cos(s) x0 + sin(s) z with z ~ N(0, sigma_d^2) (sCM, Lu & Song
2024, Eq. 1), the FM state is x_tau = (1 - tau) x0 + tau eps. All equations cite SANA-Sprint
(Chen et al., ICCV 2025), Sec. 3.1 / Proposition 3.1, unless stated otherwise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .constants import SIGMA_DATA


def flow_time(s: Tensor) -> Tensor:
    """tau(s) = sin s / (sin s + cos s)  (Prop. 3.1, time transform)."""
    sin, cos = torch.sin(s), torch.cos(s)
    return sin / (sin + cos)


def trig_time(tau: Tensor) -> Tensor:
    """Inverse of flow_time: s(tau) = atan2(tau, 1 - tau), so tan s = tau / (1 - tau)."""
    return torch.atan2(tau, 1.0 - tau)


def flow_input_scale(tau: Tensor) -> Tensor:
    """sqrt(tau^2 + (1 - tau)^2), which equals 1 / (sin s + cos s)  (Prop. 3.1, state transform).

    Multiplying a sigma_d-normalised TrigFlow input x_s / sigma_d by it gives the FM input x_tau.
    """
    return torch.sqrt(tau**2 + (1.0 - tau) ** 2)


def trigflow_output(x_flow: Tensor, velocity: Tensor, tau: Tensor) -> Tensor:
    """F = [(1 - 2 tau) x_tau + (1 - 2 tau + 2 tau^2) v] / sqrt(tau^2 + (1 - tau)^2)  (Prop. 3.1).

    `velocity` v = eps - x0 is the FM prediction at x_tau; `tau` broadcasts against x. In normalised
    units the result is F = cos(s) eps - sin(s) x0.
    """
    scale = flow_input_scale(tau)
    return ((1.0 - 2.0 * tau) * x_flow + (1.0 - 2.0 * tau + 2.0 * tau**2) * velocity) / scale


def add_noise(x0: Tensor, noise: Tensor, s: Tensor) -> Tensor:
    """x_s = cos(s) x0 + sin(s) z  (sCM Eq. 1); `noise` z already carries the std sigma_d."""
    return torch.cos(s) * x0 + torch.sin(s) * noise


def x0_from_prediction(x_s: Tensor, pred: Tensor, s: Tensor) -> Tensor:
    """x0 = cos(s) x_s - sin(s) sigma_d F, with `pred` = sigma_d F  (sCM Eq. 7, consistency fn)."""
    return torch.cos(s) * x_s - torch.sin(s) * pred


def prediction_from_x0_noise(x0: Tensor, noise: Tensor, s: Tensor) -> Tensor:
    """The exact target sigma_d F = cos(s) z - sin(s) x0 (d x_s / ds), the inverse of the above."""
    return torch.cos(s) * noise - torch.sin(s) * x0


def sample_scm_time(
    shape: tuple[int, ...],
    p_mean: float,
    p_std: float,
    *,
    sigma_data: float = SIGMA_DATA,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """sCM training times: sigma = exp(P_mean + P_std n), n ~ N(0,1); s = atan(sigma / sigma_d)  (sCM Sec. 4)."""
    n = torch.randn(shape, generator=generator, device=device)
    return torch.atan(torch.exp(p_mean + p_std * n) / sigma_data)


def bcast(t: Tensor, like: Tensor) -> Tensor:
    """View a per-sample (B,) tensor as (B, 1, 1, ...) so it broadcasts against `like`."""
    return t.reshape(t.shape[0], *([1] * (like.ndim - 1)))


def is_terminal(s: float) -> bool:
    """True for the final time s = 0 of a sampling schedule (the step returns x0)."""
    return math.isclose(s, 0.0, abs_tol=1e-12)
