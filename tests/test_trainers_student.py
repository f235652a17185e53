"""Student/teacher pair: init, LoRA teacher view, guidance-embedder init, attention kinds."""

import pytest
import torch

from sana_sprint_core.dit_layers import CrossAttention, LinearSelfAttention
from sana_sprint_core.trigflow_model import TrigFlowModel
from tests.fixtures.distill import one_thread  # noqa: F401 (fixture)
from tests.fixtures.distill import TINY_TEACHER, tiny_batch, tiny_teacher
from trainers.config import ModelConfig
from trainers.student import build_pair, check_teacher, trainable_state_dict

pytestmark = pytest.mark.usefixtures("one_thread")


def inputs(b=2, seed=3):
    batch = tiny_batch(b, seed=seed)
    s = torch.tensor([0.4, 1.3])[:b]
    return batch.latents, s, batch.text, batch.mask, torch.tensor([4.0, 5.0])[:b]


def perturb_trainables(student, scale=0.1):
    with torch.no_grad():
        for p in student.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * scale)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_student_starts_as_teacher_and_teacher_stays_fixed(mode):
    reference = TrigFlowModel(tiny_teacher())
    pair = build_pair(tiny_teacher(), ModelConfig(mode=mode, lora_rank=4, lora_alpha=4.0))
    x, s, ctx, mask, g = inputs()
    with torch.no_grad():
        want = reference(x, s, ctx, mask)
        f, logvar = pair.student(x, s, ctx, mask, g)
        torch.testing.assert_close(f, want, rtol=1e-5, atol=1e-5)  # sdpa vs math cross-attention only
        assert logvar.shape == (2, 1)
        perturb_trainables(pair.student)
        moved, _ = pair.student(x, s, ctx, mask, g)
        assert (moved - want).abs().max() > 1e-3
        torch.testing.assert_close(pair.teacher(x, s, ctx, mask), want, rtol=1e-5, atol=1e-5)
        again, _ = pair.student(x, s, ctx, mask, g)  # the teacher view was undone
        torch.testing.assert_close(again, moved)


def test_lora_mode_shares_base_weights_and_trains_only_adapters_and_new_heads():
    teacher = tiny_teacher()
    base_ptr = teacher.transformer_blocks[0].attn1.to_q.weight.data_ptr()
    pair = build_pair(teacher, ModelConfig(mode="lora", lora_rank=4))
    names = set(trainable_state_dict(pair.student))
    assert names and all(".lora_" in n or "guidance_embedder" in n or n.startswith("logvar_linear") for n in names)
    assert any("guidance_embedder" in n for n in names) and "logvar_linear.weight" in names
    q = pair.student.dit.transformer_blocks[0].attn1.to_q
    assert q.base_layer.weight.data_ptr() == base_ptr  # one copy of the base weights
    assert not q.base_layer.weight.requires_grad


def test_guidance_embedder_init_lets_the_first_linear_learn():
    pair = build_pair(tiny_teacher(), ModelConfig(mode="full"))
    emb = pair.student.dit.time_embed.guidance_embedder
    assert emb.linear_1.weight.std().item() == pytest.approx(0.02, rel=0.15)
    assert torch.count_nonzero(emb.linear_1.bias) == 0
    assert torch.count_nonzero(emb.linear_2.weight) == 0 and torch.count_nonzero(emb.linear_2.bias) == 0
    x, s, ctx, mask, g = inputs()
    f, _ = pair.student(x, s, ctx, mask, g)
    f.square().mean().backward()
    # with an all-zero init (diffusers example) this gradient would be exactly zero
    assert emb.linear_2.weight.grad.abs().max() > 0


def test_attention_kinds_linear_self_and_math_cross():
    pair = build_pair(tiny_teacher(), ModelConfig(mode="lora", lora_rank=2))
    blocks = pair.student.dit.transformer_blocks
    assert all(isinstance(b.attn1, LinearSelfAttention) for b in blocks)
    crosses = [m for m in pair.student.modules() if isinstance(m, CrossAttention)]
    assert crosses and all(m.impl == "math" for m in crosses)


def test_bad_teacher_and_bad_lora_target():
    plain = tiny_teacher(config=TINY_TEACHER.replace(qk_norm=False, time_input_scale=1000.0))
    with pytest.raises(ValueError, match="plain SANA model.*prepare.enabled"):
        check_teacher(plain, "sana.safetensors")
    sprint = tiny_teacher(config=TINY_TEACHER.replace(guidance_embeds=True))
    with pytest.raises(ValueError, match="already a distilled"):
        check_teacher(sprint, "sprint.safetensors")
    with pytest.raises(ValueError, match="'attn1.to_qq' matches no module"):
        build_pair(tiny_teacher(), ModelConfig(mode="lora", lora_targets=["attn1.to_qq"]))
