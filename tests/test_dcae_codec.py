"""encode / decode: units, argument checks, tiled variants and the out-of-memory fallback."""

import logging
from fractions import Fraction

import pytest
import torch

from sana_sprint_core.dcae import DCAE, decode, decode_tiled, encode, encode_tiled
from sana_sprint_core.dcae.tiling import ramp, tile_starts, tiled_map
from tests.fixtures.dcae import LOCAL, SCALE, TINY, diffusers_dcae

pytest.importorskip("diffusers")


def _ours(cfg, seed=0) -> DCAE:
    vae = DCAE(cfg)
    vae.load_state_dict(diffusers_dcae(cfg, seed).state_dict())
    return vae.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def tiny():
    return _ours(TINY)


@pytest.fixture(scope="module")
def local():
    return _ours(LOCAL, seed=5)


def test_units_and_shapes(tiny):
    z = torch.randn(2, 4, 5, 3, dtype=torch.float64)
    img = decode(tiny, z)
    assert img.shape == (2, 3, 20, 12) and img.dtype == torch.float32
    assert img.min() >= 0 and img.max() <= 1
    raw = tiny.decoder(z.float() / SCALE)  # decode = (decoder(z / scale) + 1) / 2, clamped
    assert torch.equal(img, ((raw + 1) / 2).clamp(0, 1))
    x = torch.rand(1, 3, 16, 8)
    assert torch.equal(encode(tiny, x), tiny.encoder(x * 2 - 1) * SCALE)


def test_bfloat16_model_takes_float32_inputs():
    vae = _ours(TINY).to(torch.bfloat16)
    img = decode(vae, torch.randn(1, 4, 4, 4))
    lat = encode(vae, torch.rand(1, 3, 16, 16))
    assert img.dtype == lat.dtype == torch.float32 and torch.isfinite(lat).all()


@pytest.mark.parametrize(
    "images, match",
    [
        (torch.rand(1, 16, 16, 3), r"images must have 3 channels at dim 1 .* channels-last\? use .movedim\(-1, 1\)"),
        (torch.rand(3, 16, 16), r"images must be a float tensor \(B, 3, H, W\)"),
        (torch.rand(1, 3, 18, 16), r"image height must be a multiple of 4, got 18; nearest valid: 16 or 20"),
        (torch.rand(1, 3, 16, 2), r"image width must be a multiple of 4, got 2; nearest valid: 4 or 4"),
        (torch.rand(1, 3, 16, 16) * 2 - 1, r"images must hold values in \[0, 1\], got min -"),
        (torch.randint(0, 255, (1, 3, 16, 16), dtype=torch.uint8), r"images must be a float tensor"),
    ],
)
def test_encode_rejects_bad_images(tiny, images, match):
    with pytest.raises(ValueError, match=match):
        encode(tiny, images)


def test_decode_rejects_bad_latents(tiny):
    with pytest.raises(ValueError, match=r"latents must have 4 channels at dim 1 \(B, 4, H, W\), got \(1, 32, 4, 4\)"):
        decode(tiny, torch.randn(1, 32, 4, 4))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(tiled="yes"), r"tiled must be False, True or 'auto', got 'yes'"),
        (dict(tiled=1), r"tiled must be False, True or 'auto', got 1"),
        (dict(tiled=True, tile=0), r"tile must be at least 1 latent pixels, got 0"),
        (dict(tiled=True, tile=4, overlap=4), r"overlap must be >= 0 and smaller than tile \(4 latent pixels\), got 4"),
        (dict(tiled=True, tile=4.5), r"tile must be an int number of latent pixels, got 4.5"),
    ],
)
def test_decode_rejects_bad_tiling(tiny, kwargs, match):
    with pytest.raises(ValueError, match=match):
        decode(tiny, torch.randn(1, 4, 4, 4), **kwargs)


def test_encode_tiles_must_align_with_latent_pixels(tiny):
    with pytest.raises(ValueError, match=r"tile must be a multiple of 4 image pixels, got 10; nearest valid: 8 or 12"):
        encode_tiled(tiny, torch.rand(1, 3, 16, 16), tile=10, overlap=4)
    with pytest.raises(ValueError, match=r"overlap must be a multiple of 4 image pixels, got 2"):
        encode_tiled(tiny, torch.rand(1, 3, 16, 16), tile=8, overlap=2)


def test_one_tile_covering_the_input_is_exact(tiny):
    z = torch.randn(1, 4, 6, 5)
    assert torch.equal(decode_tiled(tiny, z, tile=6, overlap=2), decode(tiny, z))
    x = torch.rand(1, 3, 24, 20)
    assert torch.equal(encode_tiled(tiny, x, tile=24, overlap=8), encode(tiny, x))


def test_tiles_reproduce_a_local_decoder(local):
    """LOCAL has no attention: every output pixel depends on a bounded neighbourhood only.

    Its decoder's receptive-field radius in output pixels (f = 2): conv_in 1 latent = 2, the
    stage-1 ResBlock 2 latent = 4, the up-block conv 1, the stage-0 ResBlock 2, conv_out 1; total
    10. The blend window gives zero weight to the outer overlap/4 output pixels of a tile
    (24 latent = 48 px, / 4 = 12 px > 10), so every contributing pixel was computed with its whole
    neighbourhood inside the tile and equals the untiled value; the weighted mean of equal values
    differs only by fp32 rounding (convs over different sizes sum in other orders): < 1e-5.
    """
    z = torch.randn(1, 4, 56, 48)
    tiled, full = decode_tiled(local, z, tile=32, overlap=24), decode(local, z)
    assert tile_starts(56, 32, 24) == [0, 8, 16, 24]  # several tiles per side
    assert (tiled - full).abs().max() < 1e-5


def test_tiles_reproduce_a_local_encoder(local):
    """Encoder radius in latent pixels: conv_in 1/2, ResBlock 1, stride-2 conv 1/2, ResBlock 2,
    conv_out 1 = 5. Overlap 48 px = 24 latent; zero-weight margin 24/4 = 6 latent > 5."""
    x = torch.rand(1, 3, 96, 80)
    tiled, full = encode_tiled(local, x, tile=64, overlap=48), encode(local, x)
    assert (tiled - full).abs().max() < 1e-5


def test_blend_is_a_convex_combination_of_tiles(tiny):
    """With attention the tiles differ from the full decode; each output pixel must still lie
    between the smallest and largest tile value there, and equal the single tile where only one
    tile has weight (corners far from any seam)."""
    z = torch.randn(1, 4, 12, 12)
    tile, overlap, f = 8, 4, TINY.downscale
    starts = tile_starts(12, tile, overlap)
    with torch.no_grad():
        pieces = {(r, c): tiny.decoder(z[..., r : r + tile, c : c + tile] / SCALE) for r in starts for c in starts}
        out = tiled_map(tiny.decoder, z / SCALE, tile, overlap, Fraction(f))
    lo = torch.full_like(out, float("inf"))
    hi = torch.full_like(out, -float("inf"))
    for (r, c), p in pieces.items():
        win = (..., slice(r * f, (r + tile) * f), slice(c * f, (c + tile) * f))
        lo[win], hi[win] = torch.minimum(lo[win], p), torch.maximum(hi[win], p)
    assert (out >= lo - 1e-6).all() and (out <= hi + 1e-6).all()
    assert torch.equal(out[..., :8, :8], pieces[(0, 0)][..., :8, :8])
    assert not torch.equal(out, tiny.decoder(z / SCALE))  # the tiles really differ from the full decode


@pytest.mark.parametrize("size, tile, overlap", [(7, 3, 1), (16, 6, 5), (33, 8, 0), (5, 8, 2), (64, 16, 4)])
def test_windows_cover_every_pixel_and_pass_a_pointwise_map(size, tile, overlap):
    x = torch.randn(1, 2, size, size + 3)
    up = lambda t: t.repeat_interleave(3, dim=-1).repeat_interleave(3, dim=-2) * 2  # radius 0, x3
    out = tiled_map(up, x, tile, overlap, Fraction(3))
    assert torch.allclose(out, up(x), atol=1e-6, rtol=1e-6)


def test_ramp_shape():
    w = ramp(16, overlap=8.0, before=True, after=False)
    assert torch.equal(w[:2], torch.zeros(2))  # outer overlap/4 = 2 pixels: no weight
    assert 0 < w[2] < w[5] < 1 and torch.equal(w[6:], torch.ones(10))  # linear over overlap/2 = 4


def test_auto_falls_back_to_tiles_on_out_of_memory(tiny, monkeypatch, caplog):
    z = torch.randn(1, 4, 12, 10)
    expected = decode_tiled(tiny, z, tile=8, overlap=2)
    real_forward = tiny.decoder.forward
    calls = []

    def forward(h):  # the whole latent does not "fit"; tiles do
        calls.append(tuple(h.shape[-2:]))
        if h.shape[-2:] == z.shape[-2:]:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(h)

    monkeypatch.setattr(tiny.decoder, "forward", forward)
    with caplog.at_level(logging.WARNING):
        got = decode(tiny, z, tiled="auto", tile=8, overlap=2)
    assert torch.equal(got, expected)
    assert calls[0] == (12, 10) and len(calls) == 1 + 2 * 2
    assert "ran out of memory" in caplog.text
    with pytest.raises(torch.OutOfMemoryError):
        decode(tiny, z, tiled=False)


def test_auto_without_oom_is_the_plain_decode(tiny):
    z = torch.randn(1, 4, 12, 10)
    assert torch.equal(decode(tiny, z, tiled="auto", tile=8, overlap=2), decode(tiny, z))


def test_gradients_flow_through_decode():
    vae = _ours(TINY).requires_grad_(True)
    z = torch.randn(1, 4, 4, 4, requires_grad=True)
    decode(vae, z).square().mean().backward()  # in-place fast paths must stay off under autograd
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().max() > 0
    ref = diffusers_dcae(TINY, 0)
    ref.requires_grad_(True)
    z2 = z.detach().clone().requires_grad_(True)
    ((ref.decode(z2 / SCALE).sample + 1) / 2).clamp(0, 1).square().mean().backward()
    assert (z.grad - z2.grad).abs().max() < 1e-6
