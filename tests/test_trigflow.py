"""TrigFlow identities against closed forms."""

import math

import torch

from sana_sprint_core import trigflow
from sana_sprint_core.constants import SIGMA_DATA

S = torch.linspace(0.0, math.pi / 2, 101, dtype=torch.float64)


def test_flow_time_endpoints_and_monotone():
    tau = trigflow.flow_time(S)
    assert tau[0].item() == 0.0
    assert abs(tau[-1].item() - 1.0) < 1e-15
    assert abs(trigflow.flow_time(torch.tensor(math.pi / 4, dtype=torch.float64)).item() - 0.5) < 1e-15
    assert torch.all(tau[1:] > tau[:-1])


def test_time_round_trip():
    assert torch.allclose(trigflow.trig_time(trigflow.flow_time(S)), S, atol=1e-12)
    tau = torch.linspace(0, 1, 57, dtype=torch.float64)
    assert torch.allclose(trigflow.flow_time(trigflow.trig_time(tau)), tau, atol=1e-12)


def test_input_scale_is_inverse_of_sin_plus_cos():
    tau = trigflow.flow_time(S)
    want = 1.0 / (torch.sin(S) + torch.cos(S))
    assert torch.allclose(trigflow.flow_input_scale(tau), want, atol=1e-12)


def test_trigflow_output_of_true_velocity_is_trigflow_target():
    # x_tau = (1 - tau) x0 + tau eps and v = eps - x0 must give F = cos(s) eps - sin(s) x0.
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64)
    s = torch.tensor([0.2, 0.9, 1.5], dtype=torch.float64).view(-1, 1, 1, 1)
    tau = trigflow.flow_time(s)
    x_flow = (1 - tau) * x0 + tau * eps
    # the state transform: x_flow is x_s (with unit-std noise) times 1/(sin s + cos s)
    x_s = trigflow.add_noise(x0, eps, s)
    assert torch.allclose(x_s * trigflow.flow_input_scale(tau), x_flow, atol=1e-12)
    got = trigflow.trigflow_output(x_flow, eps - x0, tau)
    assert torch.allclose(got, torch.cos(s) * eps - torch.sin(s) * x0, atol=1e-12)


def test_x0_recovered_exactly_from_true_prediction():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    z = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64) * SIGMA_DATA
    for s_val in (0.0, 0.3, 1.0, math.pi / 2):
        s = torch.tensor(s_val, dtype=torch.float64)
        x_s = trigflow.add_noise(x0, z, s)
        pred = trigflow.prediction_from_x0_noise(x0, z, s)
        assert torch.allclose(trigflow.x0_from_prediction(x_s, pred, s), x0, atol=1e-12)


def test_add_noise_endpoints():
    x0, z = torch.ones(2), torch.full((2,), 3.0)
    assert torch.equal(trigflow.add_noise(x0, z, torch.tensor(0.0)), x0)
    assert torch.allclose(trigflow.add_noise(x0, z, torch.tensor(math.pi / 2)), z, atol=1e-6)


def test_scm_time_distribution():
    g = torch.Generator().manual_seed(0)
    s = trigflow.sample_scm_time((200_000,), 0.2, 1.6, generator=g)
    assert s.min() > 0 and s.max() < math.pi / 2
    # median of sigma = exp(P_mean), so median s = atan(exp(0.2) / 0.5)
    assert abs(s.median().item() - math.atan(math.exp(0.2) / 0.5)) < 0.01


def test_bcast_shape():
    assert trigflow.bcast(torch.zeros(3), torch.zeros(3, 4, 5, 6)).shape == (3, 1, 1, 1)
