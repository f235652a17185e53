"""LADD discriminator heads: local batch norm, spectral norm, hooks on teacher blocks."""

import pytest
import torch

from sana_sprint_core.dit_layers import mask_to_bias
from tests.fixtures.distill import one_thread  # noqa: F401 (fixture)
from tests.fixtures.distill import tiny_batch, tiny_teacher
from trainers.discriminator import BatchNormLocal, Discriminator, check_head_blocks, teacher_features
from trainers.student import Teacher

pytestmark = pytest.mark.usefixtures("one_thread")


def test_batchnorm_local_normalises_each_group_of_eight():
    torch.manual_seed(0)
    x = torch.randn(16, 3, 5) * torch.arange(1, 17.0)[:, None, None]  # groups differ in scale
    bn = BatchNormLocal(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        bn.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    out = bn(x)
    for g in (slice(0, 8), slice(8, 16)):
        part = x[g]
        mean = part.mean(dim=(0, 2), keepdim=True)
        var = ((part - mean) ** 2).mean(dim=(0, 2), keepdim=True)
        want = (part - mean) / torch.sqrt(var + 1e-5) * bn.weight[None, :, None] + bn.bias[None, :, None]
        torch.testing.assert_close(out[g], want)


def test_heads_shapes_and_spectral_norm():
    torch.manual_seed(0)
    disc = Discriminator(16, [0, 2])
    feats = {0: torch.randn(3, 10, 16), 2: torch.randn(3, 10, 16)}
    for _ in range(30):  # power iterations converge in training mode
        (logits,) = disc(feats)
    assert logits.shape == (3, 20)
    w = disc.heads["0"].block.conv.weight  # the normalised weight (D, D, 1)
    assert torch.linalg.matrix_norm(w.flatten(1), ord=2).item() == pytest.approx(1.0, rel=1e-3)
    real, fake = disc(feats, {k: v + 1 for k, v in feats.items()})
    assert real.shape == fake.shape == (3, 20) and not torch.equal(real, fake)


def test_hooks_return_block_outputs():
    dit = tiny_teacher()
    batch = tiny_batch(2)
    x, s = batch.latents, torch.tensor([0.5, 1.0])
    teacher = Teacher(dit)
    feats = teacher_features(teacher, dit, [0, 2], x, s, batch.text, batch.mask)
    # block 0 by hand: the DiT's own pieces, run up to the first block
    from sana_sprint_core import trigflow

    tau = trigflow.flow_time(s)
    x_flow = x * trigflow.flow_input_scale(trigflow.bcast(tau, x))
    with torch.no_grad():
        h = dit.patch_embed.proj(x_flow).flatten(2).transpose(1, 2)
        t0, _ = dit.embed_conditions(tau, None, h.dtype)
        y = dit.caption_norm(dit.caption_projection(batch.text))
        h0 = dit.transformer_blocks[0](h, y, mask_to_bias(batch.mask, h.dtype), t0, (4, 4))
    torch.testing.assert_close(feats[0], h0)
    assert feats[2].shape == (2, 16, 64) and not torch.allclose(feats[2], feats[0])
    assert not dit.transformer_blocks[0]._forward_hooks  # hooks removed


def test_bad_head_blocks():
    with pytest.raises(ValueError, match=r"indices \[19\] outside the teacher's 3 blocks"):
        check_head_blocks([0, 19], 3)
    with pytest.raises(ValueError, match="distinct"):
        Discriminator(8, [1, 1])


def test_heads_cannot_see_a_common_scale_of_a_group():
    """A property of the LADD head (StyleGAN-T design), not a bug: the first layer is conv -> local batch
    norm, so features scaled by the same factor across a whole group of 8 give the same logits. Real and
    fake are normalised apart, so a student whose samples are all too large (or too small) by a common
    factor is not penalised for it; this is why LADD alone overshoots the amplitude in bench.distill_toy."""
    torch.manual_seed(0)
    disc = Discriminator(16, [0]).eval()
    feats = torch.randn(8, 10, 16)
    (base,) = disc({0: feats})
    (scaled,) = disc({0: 1.4 * feats})
    torch.testing.assert_close(scaled, base, rtol=1e-4, atol=1e-4)
    (one_scaled,) = disc({0: torch.cat([1.4 * feats[:1], feats[1:]])})  # within a group the scale is visible
    assert (one_scaled - base).abs().max() > 1e-2
