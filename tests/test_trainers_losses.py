"""Each loss of trainers/losses.py against tensors computed by hand (2 x 1 x 2 x 2 inputs)."""

import math

import pytest
import torch

from sana_sprint_core.constants import T_MAX
from trainers import losses

QUARTER = math.pi / 4  # cos = sin = 1/sqrt(2): cos^2 = cos*sin = 0.5, tan = 1


def img(*values):
    """(2, 1, 2, 2) from 8 numbers, sample-major."""
    return torch.tensor(values, dtype=torch.float64).reshape(2, 1, 2, 2)


def test_teacher_cfg_derivative():
    f_u, f_c = img(1, 1, 1, 1, 0, 0, 0, 0), img(3, 3, 3, 3, 2, 2, 2, 2)
    w = torch.tensor([4.0, 1.0], dtype=torch.float64)
    # sample 0: 0.5 * (1 + 4 * 2) = 4.5; sample 1 (w=1 = conditional only): 0.5 * 2 = 1
    expected = img(4.5, 4.5, 4.5, 4.5, 1, 1, 1, 1)
    torch.testing.assert_close(losses.teacher_cfg_derivative(f_u, f_c, w, 0.5), expected)


def test_scm_jvp_tangents():
    t = torch.tensor([QUARTER, 0.0], dtype=torch.float64)
    dxdt = img(2, 2, 2, 2, 5, 5, 5, 5)
    v_x, v_t = losses.scm_jvp_tangents(t, dxdt, 0.5)
    # cos t sin t = [0.5, 0]; v_x = 0.5 * 2 / 0.5 = 2 for sample 0, 0 for sample 1
    torch.testing.assert_close(v_x, img(2, 2, 2, 2, 0, 0, 0, 0))
    torch.testing.assert_close(v_t, torch.tensor([0.5, 0.0], dtype=torch.float64))


def test_tangent_warmup():
    assert losses.tangent_warmup(0, 4000) == 0.0
    assert losses.tangent_warmup(1000, 4000) == 0.25
    assert losses.tangent_warmup(9000, 4000) == 1.0
    assert losses.tangent_warmup(3, 0) == 1.0


def test_scm_tangent():
    t = torch.tensor([QUARTER, QUARTER], dtype=torch.float64)
    f_minus = img(2, 0, 0, 0, 4, 0, 0, 0)
    dxdt = img(1, 1, 0, 0, 0, 0, 0, 0)
    x_t = img(0, 0, 2, 0, 0, 0, 0, 0)
    d_f = img(0, 0, 0, 4, 0, 0, 0, 2)
    # g = -0.5 (0.5 F - dxdt) - r (0.5 x + 0.5 dF), r = 0.5
    # sample 0: [-0.5*(1-1), -0.5*(0-1), -0.5*0.5*2, -0.5*0.5*4] = [0, 0.5, -0.5, -1]
    # sample 1: [-0.5*2, 0, 0, -0.5*0.5*2] = [-1, 0, 0, -0.5]
    expected = img(0, 0.5, -0.5, -1, -1, 0, 0, -0.5)
    torch.testing.assert_close(losses.scm_tangent(f_minus, d_f, dxdt, x_t, t, 0.5, 0.5), expected)


def test_normalize_tangent_per_sample():
    g = img(3, 4, 0, 0, 0, 0, 0, 1)
    # norms 5 and 1; c = 0.1
    expected = img(3 / 5.1, 4 / 5.1, 0, 0, 0, 0, 0, 1 / 1.1)
    torch.testing.assert_close(losses.normalize_tangent(g, 0.1), expected)


def test_scm_loss_adaptive_weighting():
    t = torch.tensor([QUARTER, QUARTER], dtype=torch.float64)  # w(t) = 1 / (0.5 * 1) = 2
    f = img(1, 1, 1, 1, 2, 2, 2, 2)
    f_minus = img(0, 0, 0, 0, 0, 0, 0, 0)
    g = img(0, 1, 2, 3, 0, 0, 0, 0)  # diffs sample 0: [1, 0, -1, -2]; sample 1: [2, 2, 2, 2]
    logvar = torch.tensor([[0.0], [math.log(2.0)]], dtype=torch.float64)
    # sample 0: 2 * [1, 0, 1, 4] = [2, 0, 2, 8]; sample 1: 2 / 2 * 4 + ln 2 = 4 + ln 2 each
    expected = (2 + 0 + 2 + 8 + 4 * (4 + math.log(2.0))) / 8
    assert losses.scm_loss(f, f_minus, g, t, logvar, 0.5).item() == pytest.approx(expected, rel=1e-12)


def test_hinge_losses():
    real = torch.tensor([[2.0, 0.5, -1.0]])
    fake = torch.tensor([[-2.0, 0.0, 1.0]])
    # relu(1 - real) = [0, 0.5, 2] -> 5/6; relu(1 + fake) = [0, 1, 2] -> 1
    assert losses.hinge_discriminator_loss(real, fake).item() == pytest.approx(0.5 * (5 / 6 + 1))
    assert losses.hinge_generator_loss(fake).item() == pytest.approx(1 / 3)


def test_with_max_time_uses_half_pi_not_the_probability():
    t = torch.tensor([0.3, 0.7, 1.1])
    u = torch.tensor([0.2, 0.9, 0.49])
    out = losses.with_max_time(t, u, 0.5, T_MAX)
    torch.testing.assert_close(out, torch.tensor([T_MAX, 0.7, T_MAX]))
    assert out[0].item() == pytest.approx(math.pi / 2, abs=1e-4)  # never 0.5 (the diffusers-example bug)


def test_flow_matching_loss():
    x0, noise = img(1, 1, 1, 1, 0, 0, 0, 0), img(0, 0, 0, 0, 1, 1, 1, 1)
    v = img(-1, -1, 0, 0, 1, 1, 1, 3)  # target eps - x0 = [-1]*4, [1]*4: errors [0,0,1,1,0,0,0,2]
    assert losses.flow_matching_loss(v, x0, noise).item() == pytest.approx(6 / 8)
