"""dit_keys: layout detection from key names and the NVlabs -> diffusers mapping (pure functions)."""

import pytest
import torch
from tests.fixtures.dit import ours_from_diffusers, tiny_diffusers_transformer, to_nvlabs_state_dict

from sana_sprint_core.checkpoint_io import TensorSpec
from sana_sprint_core.dit_keys import (
    NVLABS_DROPPED, DiTLayout, describe_foreign, detect_layout, diffusers_to_ours, nvlabs_to_diffusers,
    split_spec, split_tensor, to_canonical,
)


@pytest.fixture(scope="module")
def sprint_sd():
    return tiny_diffusers_transformer(seed=0).state_dict()


@pytest.fixture(scope="module")
def sana_sd():  # an original Sana: no guidance embedder, no QK-norm
    return tiny_diffusers_transformer(seed=1, guidance_embeds=False, qk_norm=False).state_dict()


def assert_same(got, want):
    assert sorted(got) == sorted(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model.", "diffusion_model.", "model.", "module."])
@pytest.mark.parametrize("kind", ["diffusers", "nvlabs"])
def test_detect_layout_and_prefix(sprint_sd, kind, prefix):
    sd = sprint_sd if kind == "diffusers" else to_nvlabs_state_dict(sprint_sd)
    assert detect_layout([prefix + k for k in sd]) == DiTLayout(kind, prefix)


def test_mixed_layouts_are_refused(sprint_sd):
    keys = list(sprint_sd) + list(to_nvlabs_state_dict(sprint_sd))
    with pytest.raises(ValueError, match=r"f\.pth: keys mix DiT layouts"):
        detect_layout(keys, "f.pth")


def test_combined_checkpoint_is_refused(sprint_sd):
    keys = ["model.diffusion_model." + k for k in sprint_sd] + ["first_stage_model.encoder.conv_in.weight"]
    msg = r"all\.safetensors: a DiT sits under prefix\(es\) \['model\.diffusion_model\.'\] but 1 key\(s\) lie outside"
    with pytest.raises(ValueError, match=msg + r".*first_stage_model"):
        detect_layout(keys, "all.safetensors")


def test_dcae_keys_from_diffusers_model_are_recognised():
    from diffusers import AutoencoderDC

    vae = AutoencoderDC(
        latent_channels=4, attention_head_dim=2, encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"), encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8), encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1),
    )
    assert describe_foreign(vae.state_dict()).startswith("a DC-AE autoencoder")


@pytest.mark.parametrize(
    "keys, what",
    [
        (["encoder.project_in.conv.weight", "encoder.stages.0.op_list.0.main.conv1.conv.weight",
          "decoder.project_out.2.conv.weight"],
         r"a DC-AE autoencoder \(encoder\.\*/decoder\.\* keys\); load it with the VAE loader"),
        (["encoder.down.0.block.0.conv1.weight", "decoder.up.0.block.0.conv1.weight", "quant_conv.weight"],
         r"a VAE / autoencoder"),
        (["model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.out.2.weight"],
         r"a Stable Diffusion / SDXL UNet \(input_blocks\.\* keys\)"),
        (["double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight"], r"a Flux transformer"),
        (["joint_blocks.0.x_block.attn.qkv.weight"], r"an SD3 MMDiT"),
        (["model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight"],
         r"a text encoder / language model such as Gemma.*text-encoder loader"),
        (["transformer_blocks.0.attn1.to_q.lora_A.weight", "transformer_blocks.0.attn1.to_q.lora_B.weight"],
         r"a LoRA \(lora_\* keys\)"),
        (["patch_embed.proj.weight", "controlnet_blocks.0.weight", "input_block.weight"], r"a Sana ControlNet"),
        (["foo.weight", "bar.bias"], r"no known model: it has no patch_embed\.proj\.weight \(diffusers\)"),
    ],
    ids=["dcae_original", "sd_vae", "sd_unet", "flux", "sd3", "gemma", "lora", "controlnet", "unknown"],
)
def test_foreign_models_are_named(keys, what):
    with pytest.raises(ValueError, match=rf"x\.safetensors is not a Sana DiT checkpoint; it looks like {what}"):
        detect_layout(keys, "x.safetensors")


@pytest.mark.parametrize("which", ["sprint", "sana"])
def test_nvlabs_mapping_reproduces_diffusers_weights(request, which):
    sd = request.getfixturevalue(f"{which}_sd")
    nv = to_nvlabs_state_dict(sd)
    assert_same(nvlabs_to_diffusers(nv, split_tensor), ours_from_diffusers(sd))


def test_only_documented_keys_are_dropped(sprint_sd):
    nv = to_nvlabs_state_dict(sprint_sd)
    assert NVLABS_DROPPED <= set(nv)
    mapped = nvlabs_to_diffusers({**nv, "blocks.0.attn.extra.weight": torch.zeros(1), "mystery": torch.zeros(1)},
                                 split_tensor)
    assert {"blocks.0.attn.extra.weight", "mystery"} <= set(mapped)  # unknown keys pass through by name
    assert len(mapped) == len(ours_from_diffusers(sprint_sd)) + 2


def test_spec_mapping_matches_tensor_mapping(sprint_sd):
    nv = to_nvlabs_state_dict(sprint_sd)
    specs = {k: TensorSpec(tuple(v.shape), v.dtype) for k, v in nv.items()}
    by_spec = nvlabs_to_diffusers(specs, split_spec)
    by_tensor = nvlabs_to_diffusers(nv, split_tensor)
    assert {k: s.shape for k, s in by_spec.items()} == {k: tuple(v.shape) for k, v in by_tensor.items()}


def test_fused_rows_must_divide():
    msg = r"fused tensor 'blocks\.0\.attn\.qkv\.weight' has 7 rows, not divisible into 3"
    with pytest.raises(ValueError, match=msg):
        nvlabs_to_diffusers({"blocks.0.attn.qkv.weight": torch.zeros(7, 2)}, split_tensor)


def test_diffusers_non_guidance_time_embedder_is_renamed(sana_sd):
    assert any(k.startswith("time_embed.emb.timestep_embedder.") for k in sana_sd)
    ours = diffusers_to_ours(sana_sd)
    assert "time_embed.timestep_embedder.linear_1.weight" in ours
    assert not any(k.startswith("time_embed.emb.") for k in ours)
    clash = {**sana_sd, "time_embed.timestep_embedder.linear_1.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"f: holds both time_embed\.emb\.timestep_embedder\.\*"):
        diffusers_to_ours(clash, "f")


def test_to_canonical_strips_prefix_and_maps(sprint_sd):
    nv = {"diffusion_model." + k: v for k, v in to_nvlabs_state_dict(sprint_sd).items()}
    assert_same(to_canonical(nv, DiTLayout("nvlabs", "diffusion_model."), split_tensor), sprint_sd)
