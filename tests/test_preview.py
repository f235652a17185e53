"""Latent previews: linear map, its least-squares fit, false colour."""

import pytest
import torch

from sana_sprint_core import preview


def test_fit_recovers_a_linear_map_exactly():
    g = torch.Generator().manual_seed(0)
    factors, bias = torch.randn(8, 3, generator=g) * 0.2, torch.tensor([0.1, -0.2, 0.05])
    latents = torch.randn(4, 8, 5, 6, generator=g)
    rgb = latents.movedim(1, -1) @ factors + bias  # (N, h, w, 3) in about [-1, 1]
    images = ((rgb + 1) / 2).movedim(-1, 1).repeat_interleave(4, 2).repeat_interleave(4, 3)  # 4x upscaled
    got_f, got_b = preview.fit_latent_rgb(latents, images)
    torch.testing.assert_close(got_f, factors, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_b, bias, atol=1e-5, rtol=0)
    out = preview.linear_rgb(latents[1], got_f, got_b)
    torch.testing.assert_close(out, images[1, :, ::4, ::4].movedim(0, -1).clamp(0, 1), atol=1e-5, rtol=0)


def test_fit_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"expected latents \(N, C, h, w\) and images \(N, 3, H, W\)"):
        preview.fit_latent_rgb(torch.zeros(2, 8, 4, 4), torch.zeros(3, 3, 16, 16))


def test_false_colour_shows_structure_in_range_and_stable_sign():
    x = torch.zeros(32, 4, 6)
    x[0, :, :3] = 5.0  # left half differs along channel 0
    rgb = preview.false_colour(x)
    assert rgb.shape == (4, 6, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert (rgb[:, :3, 0] - rgb[:, 3:, 0]).abs().min() > 0.9  # the two halves get opposite ends
    torch.testing.assert_close(preview.false_colour(-x)[..., 0], 1 - rgb[..., 0])  # basis sign fixed, so -x mirrors
    assert preview.to_uint8(rgb).dtype == torch.uint8
