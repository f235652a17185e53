"""Our DC-AE against diffusers' AutoencoderDC with identical random weights, loaded from files in
both the diffusers and the original efficientvit layout (fp32, within tests/tolerance.py's bound:
1e-5 of the reference's largest value)."""

import dataclasses
import shutil
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sana_sprint_core.dcae import DCAE, decode, encode, load_vae
from sana_sprint_core.dcae.layers import relu_linear_attention, relu_quadratic_attention
from tests.fixtures.dcae import (
    LITE, SCALE, TINY, WIDE, diffusers_dcae, write_diffusers_folder, write_original_pth, write_original_safetensors,
)
from tests.tolerance import assert_fp32_close

pytest.importorskip("diffusers")


WRITERS = {
    "diffusers_folder": lambda m, d: write_diffusers_folder(m, d / "vae"),
    "diffusers_file": lambda m, d: write_diffusers_folder(m, d / "vae") / "diffusion_pytorch_model.safetensors",
    "original_safetensors": lambda m, d: write_original_safetensors(m, d / "orig"),
    "original_pth": lambda m, d: write_original_pth(m, d / "dc_ae.pth"),
}


@pytest.fixture(scope="module")
def tiny_ref():
    return diffusers_dcae(TINY, seed=0)


@pytest.fixture(scope="module")
def wide_ref():
    return diffusers_dcae(WIDE, seed=1)


def _assert_parity(ours: DCAE, ref, image_hw: tuple[int, int], seed: int = 0, batch: int = 2, api: bool = True):
    """Raw encoder/decoder (and the public encode/decode) against diffusers on the same inputs."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, *image_hw, generator=g)
    f = ours.config.downscale
    z = torch.randn(batch, ours.config.latent_channels, image_hw[0] // f, image_hw[1] // f, generator=g)
    with torch.no_grad():
        raw_lat, ref_lat = ours.encoder(images * 2 - 1), ref.encode(images * 2 - 1).latent
        raw_img, ref_img = ours.decoder(z / SCALE), ref.decode(z / SCALE).sample
        if api:
            lat, img = encode(ours, images), decode(ours, z)
    assert ref_img.abs().max() > 0.1 and ref_lat.abs().max() > 0.1  # not a vacuous comparison
    assert_fp32_close(raw_lat, ref_lat, "encoder")
    assert_fp32_close(raw_img, ref_img, "decoder")
    if api:  # diffusion latents = enc(2x - 1) * scale; images = (dec(z / scale) + 1) / 2 clamped
        assert_fp32_close(lat, ref_lat * SCALE, "encode()")
        assert_fp32_close(img, ((ref_img + 1) / 2).clamp(0, 1), "decode()")


@pytest.mark.parametrize("layout", list(WRITERS))
def test_tiny_parity_every_layout(tiny_ref, tmp_path, layout):
    ours = load_vae(WRITERS[layout](tiny_ref, tmp_path))
    assert ours.config == TINY
    # 32x48: linear attention at every EViT stage; 8x8: the last stage is 2x2 = 4 tokens <= head dim 4,
    # where diffusers (and efficientvit) switch to the explicit N x N attention map.
    _assert_parity(ours, tiny_ref, (32, 48))
    _assert_parity(ours, tiny_ref, (8, 8), seed=1)


@pytest.mark.parametrize("layout", ["diffusers_folder", "diffusers_file"])
def test_lite_decoder_parity_and_inferred_config(tmp_path, layout):
    """DC-AE-Lite's decoder (no stage-0 blocks, pixel-shuffle up-sampling, SiLU before the output conv)
    read from diffusers' own files: config inferred from keys and shapes (SiLU from config.json, or by
    the release rule for a bare file), outputs equal to AutoencoderDC's."""
    ref = diffusers_dcae(LITE, seed=3)
    ours = load_vae(WRITERS[layout](ref, tmp_path))
    assert ours.config == LITE
    assert type(ours.decoder.conv_out).__name__ == "UpBlock" and len(ours.decoder.up_blocks[0]) == 0
    _assert_parity(ours, ref, (32, 48))
    bare = tmp_path / "dc-ae-lite.safetensors"  # no config.json beside it: SiLU by the release rule
    shutil.copy(write_diffusers_folder(ref, tmp_path / "lite") / "diffusion_pytorch_model.safetensors", bare)
    assert load_vae(bare).config == LITE
    relu = diffusers_dcae(dataclasses.replace(LITE, decoder_out_act="relu"), seed=3)
    assert load_vae(write_diffusers_folder(relu, tmp_path / "relu")).config.decoder_out_act == "relu"


@pytest.mark.parametrize("layout", ["diffusers_file", "original_safetensors"])
def test_full_width_stage_parity(wide_ref, tmp_path, layout):
    ours = load_vae(WRITERS[layout](wide_ref, tmp_path))
    assert ours.config == WIDE
    assert ours.encoder.down_blocks[0][0].attn.to_q.weight.shape == (1024, 1024)  # 32 heads of 32
    _assert_parity(ours, wide_ref, (8, 8), batch=1, api=False)  # 64 tokens: linear attention
    _assert_parity(ours, wide_ref, (4, 4), seed=1, batch=1, api=False)  # 16 tokens <= 32: quadratic


def test_linear_and_quadratic_attention_agree():
    """Both compute sum_m v_m (k_m . q_n) / sum_m (k_m . q_n); only the evaluation order differs."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 4, 10, generator=g) for _ in range(3))  # (B, h, d, N)
    q, k = q.relu() + 0.1, k.relu() + 0.1  # keep every normaliser away from 0
    lin, quad = relu_linear_attention(q, k, v), relu_quadratic_attention(q, k, v)
    direct = torch.empty_like(v)
    for n in range(10):  # out[:, :, :, n] = sum_m v_m (k_m . q_n) / sum_m (k_m . q_n)
        w = (k * q[..., n : n + 1]).sum(2)  # (B, h, N_keys)
        direct[..., n] = (v * w[:, :, None]).sum(-1) / w.sum(-1)[..., None]
    assert (lin - direct).abs().max() < 1e-5 and (quad - direct).abs().max() < 1e-5


def test_per_head_interleave_is_positional():
    """Heads cut [to_q | to_k | to_v] rows into consecutive 3d-channel groups (reference 4.3).

    Stage 1 of TINY: C = 16, d = 4, 4 heads. Head 0 reads rows 0..11 of to_q (q, k, v all from to_q),
    head 1 to_q 12..15 + to_k 0..7, head 2 to_k 8..15 + to_v 0..3, head 3 to_v 4..15. With to_k and
    to_v zeroed, only head 0 has a non-zero v, so only its d output channels are non-zero; a
    semantic split (v = to_v for every head) would make all of them zero.
    """
    torch.manual_seed(0)
    attn = DCAE(TINY).encoder.down_blocks[1][0].attn
    seen = {}
    attn.to_out.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    with torch.no_grad():
        attn.to_k.weight.zero_()
        attn.to_v.weight.zero_()
        attn(torch.randn(1, 16, 6, 6))
    per_channel = seen["x"].abs().amax(dim=(0, 1, 2))  # (8 heads * d,): 4 plain heads, then 4 multiscale
    d = TINY.attention_head_dim
    assert per_channel[:d].min() > 0
    assert per_channel[d : 4 * d].max() == 0


def test_operations_namespace_is_used():
    class MyLinear(nn.Linear):
        pass

    class MyConv(nn.Conv2d):
        pass

    model = DCAE(TINY, operations=SimpleNamespace(Linear=MyLinear, Conv2d=MyConv))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert linears and convs
    assert all(type(m) is MyLinear for m in linears) and all(type(m) is MyConv for m in convs)


def test_state_dict_keys_equal_diffusers(tiny_ref):
    ours = DCAE(TINY).state_dict()
    ref = tiny_ref.state_dict()
    assert sorted(ours) == sorted(ref)
    assert all(ours[k].shape == ref[k].shape for k in ref)


def test_bfloat16_matches_diffusers_bit_for_bit(tiny_ref):
    """Same op sequence in the same dtypes -> identical bf16 results. This pins what fp32 cannot
    see: the switch to the explicit N x N attention when H*W <= head dim (8x8 image: last stage
    2x2 = 4 tokens = head dim 4), where the linear path would upcast to fp32 and round differently."""
    ours = DCAE(TINY)
    ours.load_state_dict(tiny_ref.state_dict())
    ours = ours.to(torch.bfloat16).eval()
    ref = diffusers_dcae(TINY, seed=0).to(torch.bfloat16)
    g = torch.Generator().manual_seed(2)
    x = (torch.rand(2, 3, 8, 8, generator=g) * 2 - 1).bfloat16()
    z = torch.randn(2, 4, 2, 2, generator=g).bfloat16()
    with torch.no_grad():
        assert torch.equal(ours.encoder(x), ref.encode(x).latent)
        assert torch.equal(ours.decoder(z), ref.decode(z).sample)


@pytest.mark.parametrize("c_in, c_out", [(16, 16), (16, 8), (32, 8), (8, 16)])
def test_in_place_up_shortcut_equals_repeat_then_shuffle(c_in, c_out):
    from sana_sprint_core.dcae.layers import add_channel_to_space, channel_to_space_repeat

    x, out = torch.randn(2, c_in, 5, 7), torch.randn(2, c_out, 10, 14)
    expected = out + channel_to_space_repeat(x, c_out)
    assert torch.equal(add_channel_to_space(out.clone(), x), expected)
