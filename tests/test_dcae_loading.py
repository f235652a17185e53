"""load_vae: formats, architecture inference from shapes, strict key accounting, foreign files."""

import json

import pytest
import torch
from safetensors.torch import save_file

from sana_sprint_core.constants import DCAE_SCALE
from sana_sprint_core.dcae import DCAE, build_from_state_dict, infer_config, load_vae, original_to_diffusers
from tests.fixtures.dcae import (
    LOCAL, TINY, WIDE, diffusers_dcae, to_original_layout, write_diffusers_folder, write_original_pth,
    write_original_safetensors,
)

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def tiny_sd():
    return diffusers_dcae(TINY, seed=3).state_dict()


def _save(sd, path):
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


@pytest.mark.parametrize("cfg", [TINY, LOCAL, WIDE], ids=["tiny", "no_attention", "wide"])
def test_infer_config_from_shapes(cfg):
    with torch.device("meta"):
        sd = DCAE(cfg).state_dict()
    assert infer_config(sd) == cfg
    assert infer_config(original_to_diffusers(to_original_layout(sd))) == cfg


def test_original_to_diffusers_round_trip(tiny_sd):
    back = original_to_diffusers(to_original_layout(tiny_sd))
    assert sorted(back) == sorted(tiny_sd)
    assert all(torch.equal(back[k], tiny_sd[k]) for k in tiny_sd)


def test_both_upsample_conv_spellings_map():
    """efficientvit versions name the up-sample conv `main.conv.conv` (ConvLayer) or `main.conv` (nn.Conv2d)."""
    t = torch.zeros(2)
    for key in ("decoder.stages.1.op_list.0.main.conv.conv.bias", "decoder.stages.1.op_list.0.main.conv.bias"):
        assert list(original_to_diffusers({key: t})) == ["decoder.up_blocks.1.0.conv.bias"]


def test_qkv_rows_split_in_order():
    w = torch.arange(6 * 2, dtype=torch.float32).reshape(6, 2, 1, 1)  # C = 2
    out = original_to_diffusers({"encoder.stages.3.op_list.0.context_module.main.qkv.conv.weight": w})
    base = "encoder.down_blocks.3.0.attn."
    assert torch.equal(out[base + "to_q.weight"], w[0:2, :, 0, 0])
    assert torch.equal(out[base + "to_k.weight"], w[2:4, :, 0, 0])
    assert torch.equal(out[base + "to_v.weight"], w[4:6, :, 0, 0])


def test_load_nested_module_pth_and_scale_default(tiny_sd, tmp_path):
    ref = diffusers_dcae(TINY, seed=3)
    vae = load_vae(write_original_pth(ref, tmp_path / "ckpt.pt", nest="module"))
    assert vae.config.scaling_factor == DCAE_SCALE
    assert all(torch.equal(vae.state_dict()[k], tiny_sd[k]) for k in tiny_sd)


def test_folder_config_sets_scaling_factor(tmp_path):
    folder = write_diffusers_folder(diffusers_dcae(TINY.replace(scaling_factor=0.25)), tmp_path / "vae")
    assert load_vae(folder).config.scaling_factor == 0.25


def test_folder_config_contradicting_shapes(tmp_path):
    folder = write_diffusers_folder(diffusers_dcae(TINY), tmp_path / "vae")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["latent_channels"] = 32
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config.json says latent_channels=32 but the weights give 4"):
        load_vae(folder)


def test_dtype_device_and_assign_without_copy(tiny_sd):
    sd = {k: v.clone() for k, v in tiny_sd.items()}
    ptr = sd["decoder.conv_in.weight"].data_ptr()
    vae = build_from_state_dict(sd, infer_config(sd))
    assert vae.decoder.conv_in.weight.data_ptr() == ptr  # assigned, not copied
    assert not sd  # the source dict was emptied as tensors moved over
    assert all(p.device.type == "cpu" and not p.requires_grad for p in vae.parameters())
    half = build_from_state_dict(dict(tiny_sd), TINY, dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}


def test_bad_dtype(tiny_sd):
    with pytest.raises(ValueError, match=r"dtype must be a floating torch.dtype or None, got torch.int8"):
        build_from_state_dict(dict(tiny_sd), TINY, dtype=torch.int8)


def test_missing_and_unexpected_keys_are_listed(tiny_sd, tmp_path):
    sd = dict(tiny_sd)
    del sd["decoder.norm_out.bias"]
    sd["decoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys \(1\): decoder.norm_out.bias; unexpected keys \(1\): "
                                         r"decoder.extra.weight") as e:
        load_vae(_save(sd, tmp_path / "broken.safetensors"))
    assert "broken.safetensors" in str(e.value)


def test_shape_mismatch_is_listed(tiny_sd, tmp_path):
    sd = dict(tiny_sd)
    sd["decoder.up_blocks.1.1.conv_out.conv_depth.weight"] = torch.zeros(64, 1, 5, 5)
    with pytest.raises(ValueError, match=r"shape mismatches \(1\): decoder.up_blocks.1.1.conv_out.conv_depth.weight: "
                                         r"file \(64, 1, 5, 5\), model \(128, 1, 3, 3\)"):
        load_vae(_save(sd, tmp_path / "shape.safetensors"))


def test_unknown_original_key_is_reported(tmp_path):
    orig = to_original_layout(diffusers_dcae(TINY).state_dict())
    orig["encoder.stages.0.op_list.0.main.conv1.norm.weight"] = torch.zeros(8)
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): encoder.stages.0.op_list.0.main.conv1.norm.weight"):
        load_vae(_save(orig, tmp_path / "model.safetensors"))


def test_dit_file_is_named(tmp_path):
    sd = {"transformer_blocks.0.attn1.to_q.weight": torch.zeros(4, 4), "caption_projection.linear_1.weight": torch.zeros(4, 4)}
    with pytest.raises(ValueError, match=r"dit\.safetensors: not a DC-AE checkpoint; it looks like a Sana DiT"):
        load_vae(_save(sd, tmp_path / "dit.safetensors"))


def test_text_encoder_file_is_named(tmp_path):
    sd = {"model.embed_tokens.weight": torch.zeros(4, 4), "model.layers.0.self_attn.q_proj.weight": torch.zeros(4, 4)}
    with pytest.raises(ValueError, match=r"gemma\.safetensors: not a DC-AE checkpoint; it looks like a text encoder"):
        load_vae(_save(sd, tmp_path / "gemma.safetensors"))


def test_kl_vae_file_is_named(tmp_path):
    sd = {"encoder.conv_in.weight": torch.zeros(4, 3, 3, 3), "quant_conv.weight": torch.zeros(8, 8, 1, 1)}
    with pytest.raises(ValueError, match=r"sdxl_vae\.safetensors: not a DC-AE checkpoint; it looks like a KL autoencoder"):
        load_vae(_save(sd, tmp_path / "sdxl_vae.safetensors"))


def test_unrelated_tensors_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"other\.safetensors: not a DC-AE checkpoint: it has neither"):
        load_vae(_save({"foo.weight": torch.zeros(2)}, tmp_path / "other.safetensors"))


def test_truncated_file_is_named(tmp_path):
    folder = write_original_safetensors(diffusers_dcae(TINY), tmp_path / "orig")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors: truncated"):
        load_vae(folder)


def test_non_checkpoint_file_is_named(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("these are not weights\n" * 10)
    with pytest.raises(ValueError, match=r"notes\.safetensors: not a safetensors file; it looks like a text file"):
        load_vae(path)


def test_missing_path():
    with pytest.raises(FileNotFoundError, match=r"no_such_vae"):
        load_vae("/nonexistent/no_such_vae")


def test_mixed_block_types_in_a_stage_are_rejected(tiny_sd):
    sd = {k: v for k, v in tiny_sd.items() if not k.startswith("encoder.down_blocks.1.1.")}
    sd["encoder.down_blocks.1.1.conv1.weight"] = torch.zeros(16, 16, 3, 3)
    with pytest.raises(ValueError, match=r"encoder stage 1 must hold >= 1 blocks of one type, found \['attn', 'res'\]"):
        infer_config(sd)
