"""Our DiT against diffusers' SanaTransformer2DModel with identical random weights."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sana_sprint_core.dit import SanaSprintDiT, set_cross_attention
from sana_sprint_core.dit_config import PRESETS, DiTConfig
from sana_sprint_core.trigflow_model import TrigFlowModel

diffusers = pytest.importorskip("diffusers")

TINY = DiTConfig(hidden_size=64, num_layers=2, num_heads=2, cross_heads=4, caption_channels=48)


def diffusers_model(cfg: DiTConfig, seed: int = 0):
    torch.manual_seed(seed)
    model = diffusers.SanaTransformer2DModel(
        in_channels=cfg.in_channels, out_channels=cfg.out_channels, num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.head_dim, num_layers=cfg.num_layers, num_cross_attention_heads=cfg.cross_heads,
        cross_attention_head_dim=cfg.cross_head_dim, cross_attention_dim=cfg.hidden_size,
        caption_channels=cfg.caption_channels, mlp_ratio=cfg.mlp_ratio, sample_size=8, patch_size=cfg.patch_size,
        norm_elementwise_affine=False, norm_eps=1e-6, interpolation_scale=None,
        guidance_embeds=cfg.guidance_embeds, qk_norm="rms_norm_across_heads" if cfg.qk_norm else None,
    )
    with torch.no_grad():  # every weight random, so a skipped norm or swapped weight shows
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return model.eval()


def inputs(b=2, h=4, w=6, length=7, channels=48, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 32, h, w, generator=g)
    ctx = torch.randn(b, length, channels, generator=g)
    mask = torch.ones(b, length, dtype=torch.int64)
    mask[0, 4:] = 0  # first prompt padded after 4 tokens
    tau = torch.tensor([0.3, 0.9])
    return x, ctx, mask, tau


def ours_from(ref, cfg):
    model = SanaSprintDiT(cfg)
    model.load_state_dict(ref.state_dict(), strict=True)
    return model.eval()


@pytest.mark.parametrize("cfg", [TINY, TINY.replace(guidance_embeds=False)], ids=["sprint", "teacher"])
def test_forward_matches_diffusers(cfg):
    ref = diffusers_model(cfg)
    sd = ref.state_dict()
    if not cfg.guidance_embeds:  # diffusers' AdaLayerNormSingle names; our single naming
        sd = {k.replace("time_embed.emb.timestep_embedder", "time_embed.timestep_embedder"): v for k, v in sd.items()}
    ours = SanaSprintDiT(cfg)
    ours.load_state_dict(sd, strict=True)
    x, ctx, mask, tau = inputs()
    g = torch.tensor([4.5, 3.0]) if cfg.guidance_embeds else None
    with torch.no_grad():
        kw = {"guidance": g * 0.1} if g is not None else {}
        want = ref(x, encoder_hidden_states=ctx, timestep=tau, encoder_attention_mask=mask, return_dict=False, **kw)[0]
        got = ours.eval()(x, tau, ctx, mask, g)
    assert got.shape == (2, 32, 4, 6)
    assert (got - want).abs().max().item() <= 1e-5


def test_mask_changes_output_and_padding_is_ignored():
    cfg = TINY
    ours = ours_from(diffusers_model(cfg), cfg)
    x, ctx, mask, tau = inputs()
    g = torch.tensor([4.5, 4.5])
    with torch.no_grad():
        base = ours(x, tau, ctx, mask, g)
        ctx2 = ctx.clone()
        ctx2[0, 4:] += 5.0  # only masked positions of prompt 0 change
        assert torch.allclose(ours(x, tau, ctx2, mask, g)[0], base[0], atol=1e-5)
        assert not torch.allclose(ours(x, tau, ctx, None, g), base, atol=1e-3)


def test_guidance_required_for_sprint():
    ours = SanaSprintDiT(TINY)
    x, ctx, mask, tau = inputs()
    with pytest.raises(ValueError, match="guidance"):
        ours(x, tau, ctx, mask, None)


def test_operations_are_injectable():
    built = []

    class MyLinear(nn.Linear):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            built.append(self)

    ops = SimpleNamespace(Linear=MyLinear, Conv2d=nn.Conv2d)
    model = SanaSprintDiT(TINY, operations=ops)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(isinstance(m, MyLinear) for m in linears)
    assert len(built) == len(linears)


def test_meta_build_matches_real_parameter_count():
    # diffusers' meta build of Sprint 1.6B / 0.6B has these counts (reference table 1.1).
    for name, count in (("sprint_1600m", 1_610_237_472), ("sprint_600m", 593_501_216)):
        model = SanaSprintDiT(PRESETS[name], device="meta")
        assert sum(p.numel() for p in model.parameters()) == count


def test_config_rejects_unknown_keys_and_bad_heads():
    with pytest.raises(ValueError, match="lerning_rate"):
        DiTConfig.from_dict({"lerning_rate": 1})
    with pytest.raises(ValueError, match="not divisible"):
        DiTConfig(hidden_size=100, num_heads=3)
    assert DiTConfig.from_dict(TINY.to_dict()) == TINY


def test_trigflow_model_matches_manual_transform():
    ours = ours_from(diffusers_model(TINY), TINY)
    wrapper = TrigFlowModel(ours)
    x, ctx, mask, _ = inputs()
    s = torch.tensor([1.3, 0.4])
    g = torch.tensor([4.5, 4.5])
    with torch.no_grad():
        got = wrapper(x, s, ctx, mask, g)
        tau = (torch.sin(s) / (torch.sin(s) + torch.cos(s))).view(-1, 1, 1, 1)
        x_fm = x * torch.sqrt(tau**2 + (1 - tau) ** 2)
        v = ours(x_fm, tau.flatten(), ctx, mask, g)
        want = ((1 - 2 * tau) * x_fm + (1 - 2 * tau + 2 * tau**2) * v) / torch.sqrt(tau**2 + (1 - tau) ** 2)
    # same math in another order: fp32 rounding only (values reach ~20, so relative 1e-6)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)


def test_math_cross_attention_matches_sdpa_and_supports_jvp():
    ours = ours_from(diffusers_model(TINY), TINY)
    x, ctx, mask, tau = inputs()
    g = torch.tensor([4.5, 4.5])
    with torch.no_grad():
        fused = ours(x, tau, ctx, mask, g)
        set_cross_attention(ours, "math")
        explicit = ours(x, tau, ctx, mask, g)
    torch.testing.assert_close(explicit, fused, rtol=1e-5, atol=1e-5)
    wrapper = TrigFlowModel(ours).double()  # float64 so the finite difference is accurate
    x, ctx, g, s = x.double(), ctx.double(), g.double(), torch.tensor([0.5, 1.2], dtype=torch.float64)
    dx, ds = torch.randn_like(x), torch.tensor([0.3, -0.7], dtype=torch.float64)  # tangent in x and in s
    _, tangent = torch.func.jvp(lambda xx, ss: wrapper(xx, ss, ctx, mask, g), (x, s), (dx, ds))
    eps = 1e-6  # central difference along the same direction: O(eps^2) error
    with torch.no_grad():
        fd = (wrapper(x + eps * dx, s + eps * ds, ctx, mask, g) - wrapper(x - eps * dx, s - eps * ds, ctx, mask, g))
        fd = fd / (2 * eps)
    torch.testing.assert_close(tangent, fd, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="must be one of"):
        set_cross_attention(ours, "flash")
