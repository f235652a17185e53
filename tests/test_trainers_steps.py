"""G and D steps on a tiny teacher: JVP vs finite differences, checkpointing, gradient routing, max time."""

import pytest
import torch

import sana_sprint_core.dit as dit_module
from sana_sprint_core.constants import T_MAX
from tests.fixtures.distill import one_thread  # noqa: F401 (fixture)
from tests.fixtures.distill import tiny_batch, tiny_teacher
from trainers.config import DistillConfig, ModelConfig
from trainers.discriminator import Discriminator
from trainers.optim import apply_update
from trainers.steps import Draws, Nets, discriminator_step, generator_step, scm_target
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
    pair, disc, nets = make(mode="full")  # (a LoRA-mode teacher runs through the same student.model)
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


LADD_ONLY = DistillConfig(scm=False, head_blocks=[0, 2])


def test_generator_step_ladd_gradient_is_the_direct_autograd_gradient():
    """The leaf/grad splice of generator_step equals plain autograd of
    adv_lambda * -mean(D(teacher features of cos t_D x0_hat + sin t_D sigma_d n))), with
    x0_hat = cos t' x_t' - sin t' sigma_d F'(student), the same draws, and the heads in eval mode."""
    import copy

    from trainers import losses
    from trainers.discriminator import teacher_features

    pair, disc, nets = make(mode="full", checkpointing=False, dtype=torch.float64)
    batch = tiny_batch(3, dtype=torch.float64)
    disc.float()  # the heads compute in fp32 (DiscHead casts its input)
    ref_disc = copy.deepcopy(disc).eval()  # the heads as they are before the step
    draws = Draws(torch.Generator().manual_seed(4), "cpu")
    w = draws.choice(LADD_ONLY.cfg_scales, 3)
    t_g = losses.with_max_time(draws.scm_time(3, 0.2, 1.6), draws.uniform(3), 0.5, T_MAX)
    x_g = draws.noised(0.5 * batch.latents, t_g)
    f, _ = pair.student(x_g / 0.5, t_g, batch.text, batch.mask, w)
    c, s = torch.cos(t_g)[:, None, None, None], torch.sin(t_g)[:, None, None, None]
    x0_hat = c * x_g - s * 0.5 * f
    t_d = draws.scm_time(3, -0.6, 1.0)
    fake = draws.noised(x0_hat, t_d)
    feats = teacher_features(pair.teacher, pair.teacher.dit, [0, 2], fake / 0.5, t_d, batch.text, batch.mask)
    loss = LADD_ONLY.adv_lambda * -ref_disc(feats)[0].mean()
    params = [p for p in pair.student.parameters() if p.requires_grad]
    want = torch.autograd.grad(loss, params, allow_unused=True)
    out = generator_step(nets, batch, LADD_ONLY, 0, Draws(torch.Generator().manual_seed(4), "cpu"))
    torch.testing.assert_close(out["loss_adv"], loss / LADD_ONLY.adv_lambda)
    for p, g in zip(params, want):
        if g is None:  # the logvar head does not feed the adversarial loss
            assert p.grad is None or not p.grad.any()
        else:
            torch.testing.assert_close(p.grad, g, rtol=1e-9, atol=1e-12)
    assert any(g is not None and g.abs().max() > 0 for g in want)


def _head_state(disc):
    return {k: v.detach().clone() for k, v in disc.state_dict().items()}


def test_generator_step_leaves_the_heads_untouched_and_discriminator_step_runs_power_iterations():
    """G phase: heads in eval mode (NVlabs disc.eval()), so spectral norm's u, v buffers do not move;
    D phase: train mode, one power iteration per forward updates them."""
    _, disc, nets = make(mode="full")
    before = _head_state(disc)
    generator_step(nets, tiny_batch(2), CFG, 5, Draws(torch.Generator().manual_seed(0), "cpu"))
    after_g = _head_state(disc)
    for key in before:
        assert torch.equal(after_g[key], before[key]), key
    assert not disc.training
    discriminator_step(nets, tiny_batch(2), CFG, Draws(torch.Generator().manual_seed(0), "cpu"))
    assert disc.training
    after_d = _head_state(disc)
    square = [k for k in before if k.endswith("_u") and before[k].numel() > 1]  # the (D, D) convs; cls has u = +-1
    assert len(square) == 4 and all(not torch.equal(after_d[k], before[k]) for k in square)


def _record_times(monkeypatch):
    calls = []
    real = Draws.scm_time

    def scm_time(self, n, p_mean, p_std):
        out = real(self, n, p_mean, p_std)
        calls.append(((p_mean, p_std), out.clone()))
        return out

    monkeypatch.setattr(Draws, "scm_time", scm_time)
    return calls


@pytest.mark.parametrize("independent", [True, False])
def test_discriminator_times(monkeypatch, independent):
    """D phase: student time from (0.2, 1.6); fake, real and misaligned noise times from (-0.6, 1.0),
    real drawn independently of fake (NVlabs diff_timesteps_D) unless switched off."""
    _, disc, nets = make(mode="full")
    calls = _record_times(monkeypatch)
    seen = []
    original = disc.forward
    monkeypatch.setattr(disc, "forward", lambda *sets: seen.append(sets) or original(*sets))
    import trainers.steps as steps_module

    times = []
    real_features = steps_module.teacher_features
    monkeypatch.setattr(steps_module, "teacher_features",
                        lambda t, d, blocks, x, s, *a: times.append(s.clone()) or real_features(t, d, blocks, x, s, *a))
    cfg = DistillConfig(head_blocks=[0, 2], independent_disc_times=independent)
    discriminator_step(nets, tiny_batch(3), cfg, Draws(torch.Generator().manual_seed(2), "cpu"))
    params = [c[0] for c in calls]
    disc_draws = [c[1] for c in calls if c[0] == (-0.6, 1.0)]
    assert params[0] == (0.2, 1.6)
    assert params[1:] == [(-0.6, 1.0)] * (3 if independent else 2)
    t_real, t_fake = times[0][:3], times[0][3:6]
    torch.testing.assert_close(t_fake, disc_draws[0])
    torch.testing.assert_close(times[0][6:], disc_draws[-1])  # misaligned pairs: their own times
    assert torch.equal(t_real, t_fake) != independent


def test_generator_step_ladd_times(monkeypatch):
    """G phase LADD: t' from (0.2, 1.6) (then T_MAX with the configured probability), t_D from (-0.6, 1.0)."""
    pair, _, nets = make(mode="full")
    calls = _record_times(monkeypatch)
    seen = []
    original = pair.student.forward
    monkeypatch.setattr(pair.student, "forward", lambda x, s, *a: seen.append(s.clone()) or original(x, s, *a))
    for prob, want_max in ((1.0, True), (0.0, False)):
        calls.clear(), seen.clear()
        cfg = DistillConfig(scm=False, head_blocks=[0, 2], largest_timestep_prob=prob)
        generator_step(nets, tiny_batch(3), cfg, 0, Draws(torch.Generator().manual_seed(3), "cpu"))
        assert [c[0] for c in calls] == [(0.2, 1.6), (-0.6, 1.0)]
        assert len(seen) == 1
        assert bool(torch.all(seen[0] == T_MAX)) == want_max
        if not want_max:
            torch.testing.assert_close(seen[0], calls[0][1])


def test_steps_leave_no_hooks_on_the_teacher():
    for mode in ("lora", "full"):
        pair, _, nets = make(mode=mode)
        for _ in range(2):
            generator_step(nets, tiny_batch(2), CFG, 5, Draws(torch.Generator().manual_seed(0), "cpu"))
            discriminator_step(nets, tiny_batch(2), CFG, Draws(torch.Generator().manual_seed(0), "cpu"))
        for block in list(pair.teacher.dit.transformer_blocks) + list(pair.student.dit.transformer_blocks):
            assert not block._forward_hooks


def test_misaligned_partners():
    from trainers.steps import misaligned_partners

    g = torch.Generator().manual_seed(0)
    text = torch.randn(5, 3, 4, generator=g)
    mask = torch.ones(5, 3, dtype=torch.int64)
    # distinct captions: NVlabs' roll by one, row i gets image i - 1
    assert misaligned_partners(text, mask).tolist() == torch.arange(5).roll(1).tolist() == [4, 0, 1, 2, 3]
    # rows 1 and 2 share a caption (as do 3 and 4): row 2 skips image 1 and takes image 0
    dup = text.clone()
    dup[2], dup[4] = dup[1], dup[3]
    assert misaligned_partners(dup, mask).tolist() == [4, 0, 0, 2, 2]
    # tokens under the mask do not count; the mask itself does
    padded, pmask = text[[0, 0]].clone(), mask[[0, 0]].clone()
    pmask[:, 2] = 0
    padded[1, 2] += 1.0
    assert misaligned_partners(padded, pmask) is None
    pmask[1, 2] = 1
    assert misaligned_partners(padded, pmask).tolist() == [1, 0]
    assert misaligned_partners(text[[2, 2, 2]], mask[:3]) is None
    # ControlNet modes: one caption, but different control latents are still misaligned pairs
    control = torch.randn(3, 2, 4, 4, generator=g)
    assert misaligned_partners(text[[2, 2, 2]], mask[:3], control).tolist() == [2, 0, 1]
    assert misaligned_partners(text[[2, 2, 2]], mask[:3], control[[1, 1, 1]]) is None


def test_misaligned_pairs_are_never_correctly_captioned(monkeypatch):
    """A batch whose captions are all equal has no misaligned pair: no real image is labelled fake."""
    _, disc, nets = make(mode="full")
    sizes = []
    original = disc.forward
    monkeypatch.setattr(disc, "forward", lambda *sets: sizes.append([s[0].shape[0] for s in sets]) or original(*sets))
    batch = tiny_batch(3)
    batch.text, batch.mask = batch.text[[1, 1, 1]], batch.mask[[1, 1, 1]]
    discriminator_step(nets, batch, CFG, Draws(torch.Generator().manual_seed(1), "cpu"))
    assert sizes == [[3, 3]]
