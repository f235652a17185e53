"""The CPU fast path of ops.Linear computes the same affine map as torch.nn.Linear."""

import torch
import torch.nn.functional as F

from sana_sprint_core.ops import Linear, linear_as_conv1x1


def test_conv_path_equals_linear_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 37, 48, generator=g, requires_grad=True)
    w = torch.randn(40, 48, generator=g, requires_grad=True)
    b = torch.randn(40, generator=g, requires_grad=True)
    got = linear_as_conv1x1(x, w, b)
    want = F.linear(x, w, b)
    assert got.shape == want.shape == (2, 37, 40)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # fp32 accumulation order only
    grads = torch.autograd.grad(got.square().sum(), (x, w, b))
    want_grads = torch.autograd.grad(want.square().sum(), (x, w, b))
    for a, e in zip(grads, want_grads):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


def test_non_contiguous_input_and_no_bias():
    x = torch.randn(48, 3, 5).transpose(0, 2)  # (5, 3, 48), last dim strided
    w = torch.randn(7, 48)
    torch.testing.assert_close(linear_as_conv1x1(x, w, None), F.linear(x, w), rtol=1e-5, atol=1e-5)


def test_linear_module_uses_plain_path_off_fp32_cpu():
    layer = Linear(8, 4).to(torch.float64)
    x = torch.randn(3, 8, dtype=torch.float64)
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))  # float64: exact torch path
    layer32 = Linear(8, 4)
    x32 = torch.randn(30, 8)
    torch.testing.assert_close(layer32(x32), F.linear(x32, layer32.weight, layer32.bias), rtol=1e-6, atol=1e-6)
    assert set(layer32.state_dict()) == {"weight", "bias"}


def test_linear_path_is_measured_once_or_fixed_by_the_environment(monkeypatch):
    from sana_sprint_core import ops

    for value, want in (("conv", True), ("GEMM", False)):
        monkeypatch.setattr(ops, "_MEASURED", {})  # not decided yet in this process
        monkeypatch.setenv(ops.LINEAR_PATH_ENV, value)
        assert ops.conv_linear_faster() is want
        monkeypatch.setenv(ops.LINEAR_PATH_ENV, "conv" if not want else "gemm")
        assert ops.conv_linear_faster() is want  # decided once: a later change of the variable is not read
    monkeypatch.setattr(ops, "_MEASURED", {})
    monkeypatch.delenv(ops.LINEAR_PATH_ENV)
    assert ops.conv_linear_faster() in (True, False) and list(ops._MEASURED) == ["conv"]  # measured once
    calls = []
    real = F.conv2d
    monkeypatch.setattr(ops.F, "conv2d", lambda *a, **k: calls.append(1) or real(*a, **k))
    layer, x = Linear(16, 8), torch.randn(1, 40, 16)
    for faster, want in ((True, [1]), (False, [])):
        calls.clear()
        monkeypatch.setattr(ops, "_MEASURED", {"conv": faster})
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-6, atol=1e-6)
        assert calls == want
