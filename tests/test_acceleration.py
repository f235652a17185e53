"""Every speed path against the plain path it replaces, with the tolerance each one claims.

Tolerances (max abs difference unless said otherwise):
  - token-major residual stream / contiguous conv-linear: equal to F.linear within 1e-5 (fp32 rounding);
    weights above 32 MiB keep F.linear (the conv path's transient weight reorder would raise the peak);
  - caption padding dropped by the sampler: latents equal diffusers' (full padding) within 1e-4, as the
    sampler's own parity test;
  - DC-AE sub-pixel up-sampling: within 1e-5 x the output scale of nearest-x2 + conv3x3;
  - DC-AE fused RMS norm: within 1e-6 x the output scale; whole decoder fast vs plain: 1e-5 on images;
  - compile_dit (eager backend, full graph): equal to eager within 1e-6;
  - Gemma-2 with ops.Linear (fast_cpu_linears): within 1e-5 x the output scale of transformers' Linear;
  - bf16: a tiny DiT's 2-step latents within 3 % (relative L2) of fp32; linear attention keeps
    fp32 accumulators (bf16 inputs give the fp32 result of those inputs within 1e-6).
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sana_sprint_core.acceleration import CudaGraphTrigFlow, compile_dit
from sana_sprint_core.dcae import DCAE, decode
from sana_sprint_core.dcae.layers import RMSNorm2d, UpBlock, channel_to_space_repeat, set_fast_paths
from sana_sprint_core.dcae.subpixel import phase_kernels, upsample_conv
from sana_sprint_core.dit import SanaSprintDiT
from sana_sprint_core.dit_layers import relu_linear_attention
from sana_sprint_core.ops import linear_as_conv1x1
from sana_sprint_core.sampler import sample
from tests.fixtures.sprint_set import TINY_F32C32
from tests.test_dit import TINY, diffusers_model, inputs


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


# --- DiT: token-major residual stream -----------------------------------------------------------


def test_weights_above_the_reorder_bound_keep_f_linear(monkeypatch):
    from sana_sprint_core import ops

    monkeypatch.setattr(ops, "_MEASURED", {"conv": True})  # a CPU where the convolution wins
    calls = []
    real = F.conv2d
    monkeypatch.setattr(ops.F, "conv2d", lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))
    small, big = ops.Linear(64, 32), ops.Linear(1024, 8193, bias=False)  # 32 MiB + 4 KiB of fp32 weights
    x = torch.randn(1, 20, 64)
    with torch.no_grad():
        small(x)
        y = big(torch.randn(1, 20, 1024))
    assert calls == [(32, 64, 1, 1)] and y.shape == (1, 20, 8193)


def test_conv_linear_of_feature_strided_input_is_contiguous_and_exact():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 48, 40, generator=g).transpose(1, 2)  # (B, N, D) with the feature dim strided
    w, b = torch.randn(24, 48, generator=g), torch.randn(24, generator=g)
    y = linear_as_conv1x1(x, w, b)
    assert y.is_contiguous()
    assert (y - F.linear(x, w, b)).abs().max() <= 1e-5


def test_every_block_sees_a_contiguous_residual_stream_and_output_matches_diffusers():
    ref = diffusers_model(TINY)
    ours = SanaSprintDiT(TINY)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x, ctx, mask, tau = inputs()
    seen, g = [], torch.tensor([4.5, 3.0])
    with torch.no_grad():
        out = ours.eval()(x, tau, ctx, mask, g, block_hook=lambda i, h, _: seen.append(h.is_contiguous()))
        want = ref(x, encoder_hidden_states=ctx, timestep=tau, guidance=g * 0.1, encoder_attention_mask=mask,
                   return_dict=False)[0]
    assert seen == [True] * TINY.num_layers
    assert (out - want).abs().max() <= 1e-5


# --- Sampler: caption padding dropped ------------------------------------------------------------


def test_caption_padding_is_dropped_and_latents_still_match_diffusers():
    from tests.test_sampler import sampler_pair

    ours, pipe = sampler_pair()
    embeds = torch.randn(2, 7, TINY.caption_channels, generator=torch.Generator().manual_seed(5))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0]])
    seen = []
    ours.register_forward_pre_hook(lambda m, args: seen.append(args[2].shape[1]))
    got = sample(ours, embeds, mask, width=192, height=128, steps=2, seed=42)
    want = pipe(prompt_embeds=embeds, prompt_attention_mask=mask, height=128, width=192, guidance_scale=4.5,
                num_inference_steps=2, generator=torch.Generator().manual_seed(42), output_type="latent",
                use_resolution_binning=False, return_dict=False)[0]
    assert seen == [4, 4]  # the DiT saw the 4 positions some prompt uses, at both steps
    assert (got - want).abs().max() <= 1e-4


def test_caption_padding_is_kept_for_an_all_padding_prompt():
    from sana_sprint_core.sampler import drop_caption_padding

    ctx = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    assert drop_caption_padding(ctx, mask)[0].shape == (2, 5, 3)
    short, m = drop_caption_padding(ctx[:1], mask[:1])
    assert short.shape == (1, 2, 3) and torch.equal(m, mask[:1, :2])


# --- DC-AE: sub-pixel up-sampling and fused norm --------------------------------------------------


@pytest.mark.parametrize("c_in, c_out", [(16, 16), (16, 8), (32, 8), (8, 16)])
def test_subpixel_upsample_conv_equals_interpolate_then_conv(c_in, c_out):
    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(2, c_in, 5, 7, generator=g), torch.randn(c_out, c_in, 3, 3, generator=g), torch.randn(c_out)
    plain = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w, b, padding=1)
    got = upsample_conv(x, w, b)
    scale = plain.abs().max()
    assert got.shape == plain.shape and got.is_contiguous(memory_format=torch.channels_last)
    assert (got - plain).abs().max() <= 1e-5 * scale
    if 4 * c_out // c_in in (1, 2, 4) and (4 * c_out) % c_in == 0:
        with_skip = upsample_conv(x, w, b, shortcut=True)
        assert (with_skip - plain - channel_to_space_repeat(x, c_out)).abs().max() <= 1e-5 * scale


def test_phase_kernels_sum_the_right_taps():
    w = torch.arange(9.0).view(1, 1, 3, 3)  # taps w[r, c] = 3r + c
    k = phase_kernels(w).view(2, 2, 2, 2)  # (a, b, row tap, col tap)
    assert torch.equal(k[0, 0], torch.tensor([[0.0, 1 + 2], [3 + 6, 4 + 5 + 7 + 8]]))  # [t0, t1+t2] both ways
    assert torch.equal(k[1, 1], torch.tensor([[0 + 1 + 3 + 4, 2 + 5], [6 + 7, 8.0]]))  # [t0+t1, t2] both ways


def test_subpixel_rejects_a_shortcut_it_cannot_form():
    with pytest.raises(ValueError, match="4 \\* C_out / C_in in \\(1, 2, 4\\)"):
        upsample_conv(torch.randn(1, 12, 2, 2), torch.randn(8, 12, 3, 3), None, shortcut=True)


def test_fused_rms_norm_equals_plain():
    norm = RMSNorm2d(16)
    with torch.no_grad():
        norm.weight.normal_(1, 0.2)
        norm.bias.normal_(0, 0.2)
    x = torch.randn(2, 16, 6, 5).contiguous(memory_format=torch.channels_last) * 3
    with torch.no_grad():
        fast = norm(x)
        norm.fast = False
        plain = norm(x)
    assert (fast - plain).abs().max() <= 1e-6 * plain.abs().max()


@pytest.fixture(scope="module")
def tiny_vae():
    from tests.fixtures.dcae import diffusers_dcae

    ours = DCAE(TINY_F32C32)
    ours.load_state_dict(diffusers_dcae(TINY_F32C32, seed=4).state_dict(), strict=True)
    return ours.eval()


def test_fast_decoder_equals_plain_decoder_and_skips_the_upsampled_tensor(tiny_vae, monkeypatch):
    z = torch.randn(2, 32, 3, 2, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        set_fast_paths(tiny_vae, False)
        plain = decode(tiny_vae, z)
        set_fast_paths(tiny_vae, True)
        calls = []
        real = F.interpolate
        monkeypatch.setattr(F, "interpolate", lambda *a, **k: calls.append(1) or real(*a, **k))
        fast = decode(tiny_vae, z)
    assert calls == []  # no 4x up-sampled input was built
    assert plain.std() > 0.05 and (fast - plain).abs().max() <= 1e-5


def test_fast_paths_stay_off_for_half_precision_and_host_layers(monkeypatch):
    calls = []
    real = F.interpolate
    monkeypatch.setattr(F, "interpolate", lambda *a, **k: calls.append(1) or real(*a, **k))

    class HostConv(nn.Conv2d):  # a host's casting layer: its forward must run
        pass

    with torch.no_grad():
        UpBlock(8, 8).to(torch.bfloat16)(torch.randn(1, 8, 3, 3, dtype=torch.bfloat16))
        UpBlock(8, 8, operations=type("Ops", (), {"Conv2d": HostConv, "Linear": nn.Linear}))(torch.randn(1, 8, 3, 3))
    assert len(calls) == 2


# --- torch.compile, CUDA graphs ------------------------------------------------------------------


def test_compile_dit_full_graph_equals_eager_and_keeps_keys():
    torch.manual_seed(0)
    dit = SanaSprintDiT(TINY.replace(num_layers=1)).eval()
    keys = list(dit.state_dict())
    x, ctx, mask, tau = inputs(b=1)
    g = torch.tensor([4.5])
    with torch.no_grad():
        want = dit(x, tau[:1], ctx[:1], mask[:1], g)
        compile_dit(dit, backend="eager")  # fullgraph: a graph break would raise here
        got = dit(x, tau[:1], ctx[:1], mask[:1], g)
    assert list(dit.state_dict()) == keys
    assert (got - want).abs().max() <= 1e-6
    with pytest.raises(ValueError, match="already compiled"):
        compile_dit(dit)


def test_compile_dit_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mode must be one of"):
        compile_dit(SanaSprintDiT(TINY.replace(num_layers=1)), mode="fastest")
    with pytest.raises(TypeError, match="needs a SanaSprintDiT"):
        compile_dit(nn.Linear(2, 2))


def test_cuda_graphs_refuse_a_cpu_model():
    with pytest.raises(ValueError, match="CUDA graphs need the DiT on a CUDA device, got cpu"):
        CudaGraphTrigFlow(SanaSprintDiT(TINY.replace(num_layers=1)))


def test_cuda_check_script_says_when_there_is_no_gpu(capsys):
    """The GPU half (CUDA-graph sampling equals eager) is bench/cuda_check.py, run where a GPU is lent."""
    from bench import cuda_check

    if torch.cuda.is_available():
        assert cuda_check.main() == 0
    else:
        assert cuda_check.main() == 2 and "no CUDA device" in capsys.readouterr().err


def test_fast_cpu_linears_keep_gemma_outputs_and_keys():
    from sana_sprint_core import ops
    from sana_sprint_core.acceleration import fast_cpu_linears
    from tests.fixtures.text import tiny_gemma2

    model = tiny_gemma2(300)
    keys = list(model.state_dict())
    ids = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(input_ids=ids).last_hidden_state
        assert fast_cpu_linears(model) == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down)
        got = model(input_ids=ids).last_hidden_state
    assert all(type(m) is not nn.Linear for m in model.modules())
    assert sum(type(m) is ops.Linear for m in model.modules()) == 14
    assert list(model.state_dict()) == keys
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


# --- bf16 ----------------------------------------------------------------------------------------


def test_bf16_sampling_stays_close_to_fp32():
    ref = diffusers_model(TINY, seed=3)
    with torch.no_grad():
        for p in ref.parameters():
            p.mul_(0.5)
    fp32 = SanaSprintDiT(TINY)
    fp32.load_state_dict(ref.state_dict(), strict=True)
    bf16 = SanaSprintDiT(TINY, dtype=torch.bfloat16)
    bf16.load_state_dict(ref.state_dict(), strict=True)
    embeds = torch.randn(2, 7, 48, generator=torch.Generator().manual_seed(5))
    mask = torch.ones(2, 7, dtype=torch.int64)
    kw = dict(width=192, height=128, steps=2, seed=1)
    want = sample(fp32.eval(), embeds, mask, **kw)
    got = sample(bf16.eval(), embeds.bfloat16(), mask, **kw)
    assert got.dtype == torch.float32  # the sampler state stays fp32
    assert _rel(got, want) <= 0.03


def test_linear_attention_accumulates_in_fp32_for_bf16_inputs():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 256, 32, generator=g).bfloat16() for _ in range(3))
    got = relu_linear_attention(q, k, v, 1e-15)
    want = relu_linear_attention(q.float(), k.float(), v.float(), 1e-15)
    assert got.dtype == torch.float32 and (got - want).abs().max() <= 1e-6
