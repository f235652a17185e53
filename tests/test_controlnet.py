"""SanaControlNet: diffusers parity, the NVlabs data flow, zero init, strength, sampling, DiT hooks."""

from __future__ import annotations

import pytest
import torch

from sana_sprint_core import trigflow
from sana_sprint_core.controlnet import (
    ControlInput, ControlledDiT, ControlNetConfig, SanaControlNet, sample_with_control,
)
from sana_sprint_core.dit import SanaSprintDiT
from sana_sprint_core.dit_keys import diffusers_to_ours
from sana_sprint_core.dit_layers import mask_to_bias
from sana_sprint_core.sampler import sample
from sana_sprint_core.trigflow_model import TrigFlowModel
from tests.fixtures.controlnet import randomize_, tiny_diffusers_controlnet
from tests.fixtures.dit import tiny_diffusers_transformer, tiny_dit_config

TOL = 1e-5


def _inputs(batch: int = 2, side: int = 8):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(batch, 32, side, side, generator=g)
    ctx = torch.randn(batch, 7, 48, generator=g)
    mask = torch.ones(batch, 7)
    mask[-1, 4:] = 0  # padded caption in the last sample
    tau = torch.linspace(0.3, 0.8, batch)
    guidance = torch.linspace(4.5, 3.0, batch)
    control = torch.randn(batch, 32, side, side, generator=g)
    return x, tau, ctx, mask, guidance, control


def _ours_dit(tf, layers: int) -> SanaSprintDiT:
    dit = SanaSprintDiT(tiny_dit_config(num_layers=layers))
    dit.load_state_dict(tf.state_dict(), strict=True)
    return dit.eval()


def _random_controlnet(dit: SanaSprintDiT, wiring: str, blocks: int = 2, seed: int = 3) -> SanaControlNet:
    cfg = ControlNetConfig(dit.config, blocks, wiring)
    return randomize_(SanaControlNet(cfg), seed).eval()


@pytest.mark.parametrize("layers, blocks, strength", [(4, 2, 0.7), (3, 2, 1.0), (5, 3, 1.3)])
def test_diffusers_wiring_matches_diffusers(layers, blocks, strength):
    """Same random weights in ours and diffusers' SanaControlNetModel + SanaTransformer2DModel.

    (3, 2): the last sample lands on the output of the last block, i.e. the final layer's input.
    """
    tf = tiny_diffusers_transformer(num_layers=layers)
    cn = tiny_diffusers_controlnet(num_layers=blocks)
    dit = _ours_dit(tf, layers)
    ours = SanaControlNet(ControlNetConfig(tiny_dit_config(num_layers=blocks, qk_norm=False), blocks, "diffusers"))
    ours.load_state_dict(diffusers_to_ours(cn.state_dict()), strict=True)
    x, tau, ctx, mask, g, control = _inputs()
    with torch.no_grad():
        samples = cn(x, encoder_hidden_states=ctx, timestep=tau, controlnet_cond=control,
                     conditioning_scale=strength, encoder_attention_mask=mask, return_dict=False)[0]
        ref = tf(x, encoder_hidden_states=ctx, timestep=tau, guidance=g * 0.1, encoder_attention_mask=mask,
                 controlnet_block_samples=samples, return_dict=False)[0]
        base = tf(x, encoder_hidden_states=ctx, timestep=tau, guidance=g * 0.1, encoder_attention_mask=mask,
                  return_dict=False)[0]
        out = ControlledDiT(dit, ours.eval())(x, tau, ctx, mask, g, control=ControlInput(control, strength))
    assert (ref - base).abs().max() > 1.0  # the control really changes the output
    assert (out - ref).abs().max().item() <= TOL


def _nvlabs_reference(dit, cn, x, tau, ctx, mask, g, control, strength):
    """NVlabs SanaMSControlNet.forward in its own order (reference 5.1), from our modules' parts."""
    hw = x.shape[-2:]
    patch = lambda z: dit.patch_embed.proj(z).flatten(2).transpose(1, 2)  # noqa: E731
    t0, c = dit.embed_conditions(tau, g, x.dtype)
    y = dit.caption_norm(dit.caption_projection(ctx))
    bias = mask_to_bias(mask, x.dtype)
    blocks, n = dit.transformer_blocks, cn.config.num_blocks
    h = blocks[0](patch(x), y, bias, t0, hw)
    ctrl = patch(control)  # the SHARED base patch embedding
    for i in range(1, n + 1):
        if i == 1:
            ctrl = cn.transformer_blocks[0](h + cn.input_block(ctrl), y, bias, t0, hw)
        else:
            ctrl = cn.transformer_blocks[i - 1](ctrl, y, bias, t0, hw)
        skip = cn.controlnet_blocks[i - 1](ctrl) * strength
        h = blocks[i](h + skip, y, bias, t0, hw)
    for block in blocks[n + 1:]:
        h = block(h, y, bias, t0, hw)
    return dit.unpatchify(dit.final_layer(h, c), hw)


@pytest.mark.parametrize("layers, blocks", [(4, 2), (3, 2)])
def test_nvlabs_wiring_follows_the_reference_order(layers, blocks):
    dit = _ours_dit(tiny_diffusers_transformer(num_layers=layers), layers)
    cn = _random_controlnet(dit, "nvlabs", blocks)
    x, tau, ctx, mask, g, control = _inputs()
    with torch.no_grad():
        ref = _nvlabs_reference(dit, cn, x, tau, ctx, mask, g, control, 0.8)
        out = ControlledDiT(dit, cn)(x, tau, ctx, mask, g, control=ControlInput(control, 0.8))
        base = dit(x, tau, ctx, mask, g)
        as_diffusers = SanaControlNet(ControlNetConfig(dit.config, blocks, "diffusers"))
        as_diffusers.load_state_dict({**as_diffusers.state_dict(), **cn.state_dict()}, strict=True)
        other = ControlledDiT(dit, as_diffusers.eval())(x, tau, ctx, mask, g, control=ControlInput(control, 0.8))
    assert (ref - base).abs().max() > 1.0
    assert (other - ref).abs().max() > 1.0  # the two wirings really differ
    assert (out - ref).abs().max().item() <= TOL


def test_nvlabs_wiring_runs_base_block_zero_once():
    dit = _ours_dit(tiny_diffusers_transformer(num_layers=3), 3)
    cn = _random_controlnet(dit, "nvlabs")
    calls = []
    dit.transformer_blocks[0].register_forward_hook(lambda *a: calls.append(1))
    x, tau, ctx, mask, g, control = _inputs()
    with torch.no_grad():
        ControlledDiT(dit, cn)(x, tau, ctx, mask, g, control=ControlInput(control))
    assert calls == [1]


@pytest.mark.parametrize("wiring", ["nvlabs", "diffusers"])
def test_zero_initialised_projections_leave_the_base_unchanged(wiring):
    dit = _ours_dit(tiny_diffusers_transformer(num_layers=4), 4)
    cn = SanaControlNet.from_base(dit, num_blocks=2, wiring=wiring).eval()
    for j in range(2):  # the copies hold the base block weights, the projections are zero
        for k, v in cn.transformer_blocks[j].state_dict().items():
            assert torch.equal(v, dit.transformer_blocks[j].state_dict()[k])
    assert all(not p.any() for m in (cn.input_block, *cn.controlnet_blocks) for p in m.parameters())
    x, tau, ctx, mask, g, control = _inputs()
    with torch.no_grad():
        base = dit(x, tau, ctx, mask, g)
        out = ControlledDiT(dit, cn)(x, tau, ctx, mask, g, control=ControlInput(control, 1.0))
        randomize_(cn.controlnet_blocks[1], 9)  # one non-zero projection must show
        moved = ControlledDiT(dit, cn)(x, tau, ctx, mask, g, control=ControlInput(control, 1.0))
    assert torch.equal(out, base)
    assert (moved - base).abs().max() > 1.0


@pytest.mark.parametrize("wiring", ["nvlabs", "diffusers"])
def test_strength_scales_residuals_per_sample(wiring):
    dit = _ours_dit(tiny_diffusers_transformer(num_layers=4), 4)
    cn = _random_controlnet(dit, wiring)
    model = ControlledDiT(dit, cn)
    x, tau, ctx, mask, g, control = _inputs()
    with torch.no_grad():
        per_sample = model(x, tau, ctx, mask, g, control=ControlInput(control, torch.tensor([0.0, 0.6])))
        zero = model(x, tau, ctx, mask, g, control=ControlInput(control, 0.0))
        scaled = model(x, tau, ctx, mask, g, control=ControlInput(control, 0.6))
        base = dit(x, tau, ctx, mask, g)
    assert torch.equal(zero, base)
    torch.testing.assert_close(per_sample[0], base[0], rtol=0, atol=TOL)
    torch.testing.assert_close(per_sample[1], scaled[1], rtol=0, atol=TOL)
    assert (scaled - base).abs().max() > 1e-2


@pytest.mark.parametrize("wiring", ["nvlabs", "diffusers"])
def test_trigflow_wrapper_feeds_the_control_latent_unscaled(wiring):
    dit = _ours_dit(tiny_diffusers_transformer(num_layers=4), 4)
    controlled = ControlledDiT(dit, _random_controlnet(dit, wiring))
    x, _, ctx, mask, g, control = _inputs()
    s = torch.tensor([1.2, 0.4])
    ci = ControlInput(control, 1.0)
    with torch.no_grad():
        got = TrigFlowModel(controlled)(x, s, ctx, mask, g, control=ci)
        tau = trigflow.flow_time(s)
        x_flow = x * trigflow.flow_input_scale(trigflow.bcast(tau, x))
        v = controlled(x_flow, tau, ctx, mask, g, control=ci)  # same control latent, as is
        want = trigflow.trigflow_output(x_flow, v, trigflow.bcast(tau, x))
    torch.testing.assert_close(got, want, rtol=0, atol=TOL)


def test_sample_with_control():
    dit = _ours_dit(tiny_diffusers_transformer(num_layers=4), 4)
    _, _, ctx, mask, _, _ = _inputs(batch=1, side=2)
    control = torch.randn(1, 32, 2, 2)
    kw = dict(width=64, height=64, steps=2, seed=7)
    plain = sample(dit, ctx, mask, **kw)
    zero = sample_with_control(dit, SanaControlNet.from_base(dit, 2), control, ctx, mask, **kw)
    steered = sample_with_control(dit, _random_controlnet(dit, "nvlabs"), control, ctx, mask, strength=0.5, **kw)
    assert torch.equal(zero, plain)
    assert (steered - plain).abs().max() > 1e-3
    with pytest.raises(ValueError, match="model_kwargs"):
        sample_with_control(dit, SanaControlNet.from_base(dit, 2), control, ctx, mask, model_kwargs={}, **kw)


def test_control_latent_batch_and_shape():
    dit = _ours_dit(tiny_diffusers_transformer(num_layers=3), 3)
    model = ControlledDiT(dit, _random_controlnet(dit, "nvlabs"))
    x, tau, ctx, mask, g, control = _inputs()
    with torch.no_grad():
        one = model(x, tau, ctx, mask, g, control=ControlInput(control[:1]))
        both = model(x, tau, ctx, mask, g, control=ControlInput(control[:1].expand(2, -1, -1, -1)))
    assert torch.equal(one, both)
    with pytest.raises(ValueError, match=r"control latent has shape \(2, 32, 4, 4\), expected \(B, 32, 8, 8\)"):
        model(x, tau, ctx, mask, g, control=ControlInput(control[:, :, :4, :4]))
    with pytest.raises(ValueError, match="control latent has batch 3, expected 1 or 2"):
        model(x, tau, ctx, mask, g, control=ControlInput(torch.randn(3, 32, 8, 8)))
    with pytest.raises(ValueError, match=r"\['block_hook'\] cannot be passed together with control"):
        model(x, tau, ctx, mask, g, control=ControlInput(control), block_hook=lambda *a: None)


def test_base_must_fit_the_controlnet():
    dit = _ours_dit(tiny_diffusers_transformer(num_layers=3), 3)
    narrow = SanaControlNet(ControlNetConfig(tiny_dit_config(hidden_size=32, num_heads=1, cross_heads=2), 2))
    with pytest.raises(ValueError, match="ControlNet width 32 does not match the DiT's 64"):
        ControlledDiT(dit, narrow)
    ControlledDiT(dit, SanaControlNet(ControlNetConfig(dit.config, 3, "nvlabs")))  # 3 = the final layer's input
    deep = SanaControlNet(ControlNetConfig(dit.config, 4, "nvlabs"))
    with pytest.raises(ValueError, match="feeds the input of block 4, but the DiT has only 3 layers"):
        ControlledDiT(dit, deep)
    with pytest.raises(ValueError, match="feeds the input of block 4, but the DiT has only 3 layers"):
        ControlledDiT(dit, SanaControlNet(ControlNetConfig(dit.config, 3, "diffusers")))
    with pytest.raises(ValueError, match="num_blocks 4 exceeds the base DiT's 3 layers"):
        SanaControlNet.from_base(dit, 4)


def test_config_validation_and_round_trip():
    cfg = ControlNetConfig(tiny_dit_config(), 3, "diffusers", time_input_scale=1000.0)
    assert ControlNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown ControlNetConfig keys \['blocks'\]"):
        ControlNetConfig.from_dict({"blocks": 7})
    with pytest.raises(ValueError, match="wiring must be one of \\('nvlabs', 'diffusers'\\), got 'comfy'"):
        ControlNetConfig(wiring="comfy")
    with pytest.raises(ValueError, match="num_blocks must be at least 1, got 0"):
        ControlNetConfig(num_blocks=0)
    with pytest.raises(ValueError, match="time_input_scale must be positive or None, got 0"):
        ControlNetConfig(time_input_scale=0)


def test_diffusers_wiring_time_scale_defaults_to_the_base():
    """None feeds the ControlNet the base's embedder input (tau * scale); an explicit scale overrides it."""
    dit = _ours_dit(tiny_diffusers_transformer(num_layers=4), 4)
    cn = _random_controlnet(dit, "diffusers")
    x, tau, ctx, mask, _, control = _inputs()
    with torch.no_grad():
        follow = cn.dit_kwargs(dit, x, tau, ctx, mask, control)["block_residuals"]
        own = SanaControlNet(ControlNetConfig(dit.config, 2, "diffusers", time_input_scale=1000.0))
        own.load_state_dict(cn.state_dict())
        scaled = own.dit_kwargs(dit, x, tau / 1000.0, ctx, mask, control)["block_residuals"]
    assert sorted(follow) == [2, 3]
    for k in follow:
        torch.testing.assert_close(scaled[k], follow[k], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("wiring", ["nvlabs", "diffusers"])
def test_controlnet_may_hold_another_dtype_than_the_base(wiring):
    """A bf16 base with an fp32 ControlNet: inputs are cast to the ControlNet, residuals back."""
    dit = _ours_dit(tiny_diffusers_transformer(num_layers=3), 3)
    cn = _random_controlnet(dit, wiring)
    x, tau, ctx, mask, g, control = _inputs()
    with torch.no_grad():
        dit16 = dit.to(torch.bfloat16)
        out = ControlledDiT(dit16, cn)(x.bfloat16(), tau, ctx.bfloat16(), mask, g, control=ControlInput(control))
        base = dit16(x.bfloat16(), tau, ctx.bfloat16(), mask, g)
    assert out.dtype == torch.bfloat16 and next(cn.parameters()).dtype == torch.float32
    assert (out.float() - base.float()).abs().max() > 1.0


# --- the DiT's residual hooks (dit.py), used by the ControlNet -------------------------------------


def test_dit_residual_at_depth_is_the_final_layer_input():
    dit = _ours_dit(tiny_diffusers_transformer(num_layers=2), 2)
    x, tau, ctx, mask, g, _ = _inputs()
    r = torch.randn(2, 64, 64)
    last = []
    dit.transformer_blocks[1].register_forward_hook(lambda m, a, out: last.append(out))
    with torch.no_grad():
        got = dit(x, tau, ctx, mask, g, block_residuals={2: r})
        _, c = dit.embed_conditions(tau, g, x.dtype)
        want = dit.unpatchify(dit.final_layer(last[0] + r, c), (8, 8))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_dit_rejects_out_of_range_residuals():
    dit = _ours_dit(tiny_diffusers_transformer(num_layers=2), 2)
    x, tau, ctx, mask, g, _ = _inputs()
    r = torch.zeros(2, 64, 64)
    with pytest.raises(ValueError, match=r"residual block indices \[3\] are out of range: expected 0..2"):
        dit(x, tau, ctx, mask, g, block_residuals={3: r})
    with pytest.raises(ValueError, match=r"residual block indices \[1\] are out of range: expected 2..2"):
        dit(x, tau, ctx, mask, g, block_hook=lambda i, h, inp: {1: r} if i == 1 else None)


def test_dit_hook_residuals_add_to_given_ones():
    dit = _ours_dit(tiny_diffusers_transformer(num_layers=3), 3)
    x, tau, ctx, mask, g, _ = _inputs()
    r1, r2 = torch.randn(2, 64, 64), torch.randn(2, 64, 64)
    with torch.no_grad():
        summed = dit(x, tau, ctx, mask, g, block_residuals={2: r1 + r2})
        hooked = dit(x, tau, ctx, mask, g, block_residuals={2: r1},
                     block_hook=lambda i, h, inp: {2: r2} if i == 0 else None)
    torch.testing.assert_close(hooked, summed, rtol=0, atol=TOL)


@pytest.mark.parametrize("wiring", ["nvlabs", "diffusers"])
def test_jvp_through_the_controlnet_matches_finite_differences(wiring):
    """The sCM loss takes a forward-mode JVP of the controlled TrigFlow model along (v_x, v_s); float64,
    explicit-softmax cross-attention (the trainer's setting), central differences at eps 1e-6."""
    from sana_sprint_core.dit import set_cross_attention

    dit = randomize_(SanaSprintDiT(tiny_dit_config(num_layers=3)), 11, 0.1).double().eval()
    cn = randomize_(SanaControlNet(ControlNetConfig(dit.config, 2, wiring)), 12, 0.1).double().eval()
    controlled = ControlledDiT(dit, cn)
    set_cross_attention(controlled, "math")
    model = TrigFlowModel(controlled)
    x, tau, ctx, mask, g, control = (t.double() for t in _inputs(side=4))
    s = trigflow.trig_time(tau)
    gen = torch.Generator().manual_seed(7)
    v_x, v_s = torch.randn(x.shape, generator=gen, dtype=torch.float64), torch.tensor([0.3, -0.2], dtype=torch.float64)

    def f(x_in, s_in, latent=control):
        return model(x_in, s_in, ctx, mask, g, control=ControlInput(latent, 0.8))

    with torch.no_grad():
        _, df = torch.func.jvp(f, (x, s), (v_x, v_s))
        eps = 1e-6
        fd = (f(x + eps * v_x, s + eps * v_s) - f(x - eps * v_x, s - eps * v_s)) / (2 * eps)
        _, df_other = torch.func.jvp(lambda a, b: f(a, b, torch.zeros_like(control)), (x, s), (v_x, v_s))
    torch.testing.assert_close(df, fd, rtol=1e-6, atol=1e-6 * float(fd.abs().max()))
    assert (df - df_other).abs().max() > 1e-3 * df.abs().max()  # the control enters the derivative


def test_controlled_dit_exposes_the_base_blocks_and_embeddings():
    """What the trainer reads from a student or teacher DiT: hook points and the time/CFG embedding."""
    dit = SanaSprintDiT(tiny_dit_config(num_layers=3)).eval()
    controlled = ControlledDiT(dit, SanaControlNet(ControlNetConfig(dit.config, 2, "nvlabs")))
    assert controlled.transformer_blocks is dit.transformer_blocks
    tau, g = torch.tensor([0.2, 0.7]), torch.tensor([4.5, 3.0])
    for a, b in zip(controlled.embed_conditions(tau, g, torch.float32), dit.embed_conditions(tau, g, torch.float32)):
        assert torch.equal(a, b)
