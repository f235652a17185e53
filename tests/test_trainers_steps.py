"""G and D steps on a tiny teacher: JVP vs finite differences, checkpointing, gradient routing, max time."""

import pytest
import torch

import sana_sprint_core.dit as dit_module
from sana_sprint_core.constants import T_MAX
from tests.fixtures.distill import one_thread  # noqa: F401 (fixture)
from tests.fixtures.distill import tiny_batch, tiny_teacher
from trainers.config import DistillConfig, ModelConfig
from trainers.discriminator import Discriminator
from trainers.steps import Draws, Nets, apply_update, discriminator_step, generator_step, scm_target
from trainers.student import build_pair

CFG = DistillConfig(head_blocks=[0, 2], tangent_warmup_steps=10)

pytestmark = pytest.mark.usefixtures("one_thread")


def make(mode="lora", checkpointing=True, dtype=torch.float32, seed=0):
    pair = build_pair(tiny_teacher(dtype=dtype), ModelConfig(mode=mode, lora_rank=4, gradient_checkpointing=checkpointing,
                                                              weights_dtype="fp32"))
    torch.manual_seed(seed)
    disc = Discriminator(64, CFG.head_blocks).to(dtype)
    with torch.no_grad():  # adapters away from zero so the student differs from the teacher
        for n, p in pair.student.named_parameters():
            if p.requires_grad and "lora_B" in n:
                p.normal_(0, 0.05)
    return pair, disc, Nets.local(pair.student.to(dtype), pair.teacher, disc)


def test_scm_target_jvp_matches_finite_differences():
    pair, _, nets = make(mode="full", dtype=torch.float64)
    batch = tiny_batch(2, dtype=torch.float64)
    t = torch.tensor([0.3, 1.2], dtype=torch.float64)
    w = torch.tensor([4.0, 5.0], dtype=torch.float64)
    x_t = 0.5 * batch.latents
    r = 0.7
    f_minus, g = scm_target(nets, batch, x_t, t, w, r, CFG)
    model = pair.student.model
    with torch.no_grad():
        f_u = pair.teacher(x_t / 0.5, t, batch.null_text, batch.null_mask)
        f_c = pair.teacher(x_t / 0.5, t, batch.text, batch.mask)
        dxdt = 0.5 * (f_u + w[:, None, None, None] * (f_c - f_u))
        cs = (torch.cos(t) * torch.sin(t))[:, None, None, None]
        v_x, v_t = cs * dxdt / 0.5, torch.cos(t) * torch.sin(t)
        eps = 1e-6
        plus = model(x_t / 0.5 + eps * v_x, t + eps * v_t, batch.text, batch.mask, w)
        minus = model(x_t / 0.5 - eps * v_x, t - eps * v_t, batch.text, batch.mask, w)
        d_f = (plus - minus) / (2 * eps)
        f0 = model(x_t / 0.5, t, batch.text, batch.mask, w)
    cos = torch.cos(t)[:, None, None, None]
    want = -cos**2 * (0.5 * f0 - dxdt) - r * (cs * x_t + 0.5 * d_f)
    want = want / (want.flatten(1).norm(dim=1)[:, None, None, None] + 0.1)
    torch.testing.assert_close(f_minus, f0)
    torch.testing.assert_close(g, want, rtol=1e-6, atol=1e-7)


def test_checkpointing_off_inside_jvp_and_on_for_the_grad_forward(monkeypatch):
    calls = []
    real = dit_module.checkpoint
    monkeypatch.setattr(dit_module, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    _, _, nets = make(mode="lora")
    batch = tiny_batch(2)
    scm_target(nets, batch, 0.5 * batch.latents, torch.tensor([0.3, 1.2]), torch.tensor([4.0, 4.0]), 1.0, CFG)
    assert calls == []
    generator_step(nets, batch, CFG, 3, Draws(torch.Generator().manual_seed(0), "cpu"))
    assert len(calls) >= 3  # student and teacher blocks were checkpointed


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_generator_step_gradients_with_and_without_checkpointing_agree(mode):
    grads = []
    for ckpt in (False, True):
        pair, disc, nets = make(mode=mode, checkpointing=ckpt)
        out = generator_step(nets, tiny_batch(2), CFG, 5, Draws(torch.Generator().manual_seed(0), "cpu"))
        assert set(out) == {"loss_scm", "loss_adv"} and all(torch.isfinite(v) for v in out.values())
        assert all(p.grad is None for p in disc.parameters())  # G phase never trains the heads
        trainable = {n: p for n, p in pair.student.named_parameters() if p.requires_grad}
        assert all(p.grad is not None for p in trainable.values())
        assert all(p.grad is None for p in pair.student.parameters() if not p.requires_grad)
        grads.append({n: p.grad.clone() for n, p in trainable.items()})
    for name in grads[0]:  # recomputation inside the teacher view gives the same gradients
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def test_discriminator_step_trains_heads_only_and_uses_max_time(monkeypatch):
    pair, disc, nets = make(mode="lora")
    seen = []
    model = pair.student.model
    original = model.forward
    monkeypatch.setattr(model, "forward", lambda x, s, *a: seen.append(s.clone()) or original(x, s, *a))
    cfg = DistillConfig(head_blocks=[0, 2], largest_timestep_prob=1.0)
    out = discriminator_step(nets, tiny_batch(3), cfg, Draws(torch.Generator().manual_seed(0), "cpu"))
    assert torch.isfinite(out["loss_d"])
    assert len(seen) == 1 and torch.allclose(seen[0], torch.full((3,), T_MAX))
    assert all(p.grad is not None for p in disc.parameters())
    assert all(p.grad is None for p in pair.student.parameters())


def test_misaligned_pairs_extend_the_fake_batch(monkeypatch):
    _, disc, nets = make(mode="full")
    sizes = []
    original = disc.forward
    monkeypatch.setattr(disc, "forward", lambda *sets: sizes.append([s[0].shape[0] for s in sets]) or original(*sets))
    discriminator_step(nets, tiny_batch(2), CFG, Draws(torch.Generator().manual_seed(1), "cpu"))
    assert sizes == [[2, 4]]


def test_apply_update_clips_and_skips_non_finite_steps():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=1.0)
    p.grad = torch.tensor([3.0, 4.0, 0.0])
    norm, applied = apply_update(opt, [p], 0.5)
    assert applied and norm == pytest.approx(5.0)
    torch.testing.assert_close(p.detach(), torch.tensor([1 - 0.3, 1 - 0.4, 1.0]))  # clipped to norm 0.5
    assert p.grad is None
    p.grad = torch.tensor([float("nan"), 1.0, 0.0])
    before = p.detach().clone()
    norm, applied = apply_update(opt, [p], 0.5)
    assert not applied and torch.equal(p.detach(), before) and p.grad is None


def test_scm_tangent_is_cos_t_times_the_consistency_derivative():
    """g (r = 1, before normalisation) = cos t d/dt f(x_t, t) along the teacher's CFG ODE, with
    f(x, t) = cos t x - sin t sigma_d F(x / sigma_d, t) (sCM consistency function), by finite differences."""
    from trainers import losses

    pair, _, nets = make(mode="full", dtype=torch.float64)
    batch = tiny_batch(2, dtype=torch.float64)
    t = torch.tensor([0.4, 1.1], dtype=torch.float64)
    w = torch.tensor([4.0, 1.0], dtype=torch.float64)
    x_t = 0.5 * batch.latents
    model = pair.student.model
    with torch.no_grad():
        f_u = pair.teacher(x_t / 0.5, t, batch.null_text, batch.null_mask)
        f_c = pair.teacher(x_t / 0.5, t, batch.text, batch.mask)
        dxdt = losses.teacher_cfg_derivative(f_u, f_c, w)
        v_x, v_t = losses.scm_jvp_tangents(t, dxdt)
        f_minus, d_f = torch.func.jvp(lambda a, b: model(a, b, batch.text, batch.mask, w), (x_t / 0.5, t), (v_x, v_t))
        g = losses.scm_tangent(f_minus, d_f, dxdt, x_t, t, 1.0)

        def consistency(h):
            x, s = x_t + h * dxdt, t + h
            cos, sin = torch.cos(s)[:, None, None, None], torch.sin(s)[:, None, None, None]
            return cos * x - sin * 0.5 * model(x / 0.5, s, batch.text, batch.mask, w)

        eps = 1e-6
        df_dt = (consistency(eps) - consistency(-eps)) / (2 * eps)
    torch.testing.assert_close(g, torch.cos(t)[:, None, None, None] * df_dt, rtol=1e-6, atol=1e-8)
