"""load_controlnet / load_controlnet_base / save_controlnet: NVlabs, diffusers and our files, and errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from sana_sprint_core.controlnet import ControlNetConfig, SanaControlNet
from sana_sprint_core.controlnet_loading import (
    infer_controlnet_config, load_controlnet, load_controlnet_base, save_controlnet,
)
from sana_sprint_core.dit import SanaSprintDiT
from sana_sprint_core.dit_keys import diffusers_to_ours
from tests.fixtures.controlnet import randomize_, tiny_diffusers_controlnet, to_nvlabs_controlnet_state_dict
from tests.fixtures.dit import tiny_diffusers_transformer, tiny_dit_config, to_nvlabs_state_dict

BLOCKS = 2


def _tiny_cn_config(wiring="nvlabs", **dit_changes):
    return ControlNetConfig(tiny_dit_config(**dit_changes), BLOCKS, wiring)


@pytest.fixture(scope="module")
def base_tf():
    return tiny_diffusers_transformer(num_layers=3)


@pytest.fixture(scope="module")
def nvlabs_parts(base_tf):
    """(base diffusers state dict, our random nvlabs-wiring ControlNet, the NVlabs checkpoint dict)."""
    cn = randomize_(SanaControlNet(_tiny_cn_config()), 4).eval()
    return base_tf.state_dict(), cn, to_nvlabs_controlnet_state_dict(base_tf.state_dict(), cn.state_dict())


def _same_state(a: torch.nn.Module, b: dict):
    sa = a.state_dict()
    assert sorted(sa) == sorted(b)
    for k, v in b.items():
        assert torch.equal(sa[k], v.to(sa[k].dtype)), k


def test_nvlabs_pth_loads_the_controlnet_part(tmp_path, nvlabs_parts):
    _, cn, nv = nvlabs_parts
    path = tmp_path / "Sana_ControlNet.pth"
    torch.save({"state_dict": nv, "optimizer": {}}, path)
    with pytest.raises(ValueError, match="width 64 is not a released Sana width"):
        load_controlnet(path)
    loaded = load_controlnet(path, config=_tiny_cn_config())
    assert loaded.wiring == "nvlabs" and not hasattr(loaded, "patch_embed")
    _same_state(loaded, cn.state_dict())


def test_nvlabs_safetensors_with_prefix_and_dtype(tmp_path, nvlabs_parts):
    _, cn, nv = nvlabs_parts
    path = tmp_path / "cn.safetensors"
    save_file({"net." + k: v.contiguous() for k, v in nv.items()}, str(path))
    loaded = load_controlnet(path, dtype="bf16", config=_tiny_cn_config())
    assert next(loaded.parameters()).dtype == torch.bfloat16
    _same_state(loaded, {k: v.to(torch.bfloat16) for k, v in cn.state_dict().items()})


def test_nvlabs_base_part_loads_as_a_dit(tmp_path, nvlabs_parts, base_tf):
    base_sd, _, nv = nvlabs_parts
    path = tmp_path / "cn.pth"
    torch.save({"state_dict": nv}, path)
    base = load_controlnet_base(path, overrides={"num_heads": 2, "cross_heads": 4})
    assert isinstance(base, SanaSprintDiT) and base.config.num_layers == 3
    _same_state(base, base_sd)


def test_diffusers_folder_loads_with_diffusers_wiring(tmp_path):
    """Exact weights and the diffusers wiring; that wiring's parity with diffusers is test_controlnet's."""
    cn = tiny_diffusers_controlnet(num_layers=BLOCKS)
    cn.save_pretrained(tmp_path / "cn")  # config.json (head counts) + diffusion_pytorch_model.safetensors
    loaded = load_controlnet(tmp_path / "cn")
    assert loaded.wiring == "diffusers" and loaded.config.time_input_scale is None
    dit_cfg = loaded.config.dit
    assert (dit_cfg.num_heads, dit_cfg.cross_heads, dit_cfg.qk_norm, dit_cfg.caption_channels) == (2, 4, False, 48)
    _same_state(loaded, diffusers_to_ours(cn.state_dict()))
    dit = SanaSprintDiT(tiny_dit_config(num_layers=4))
    x, ctx, control = torch.randn(1, 32, 4, 4), torch.randn(1, 5, 48), torch.randn(1, 32, 4, 4)
    kw = loaded.dit_kwargs(dit, x, torch.tensor([0.6]), ctx, None, control)
    assert sorted(kw["block_residuals"]) == [2, 3]  # sample j -> output of block j + 1


def test_diffusers_file_can_run_the_nvlabs_wiring(tmp_path):
    cn = tiny_diffusers_controlnet(num_layers=BLOCKS)
    cn.save_pretrained(tmp_path / "cn")
    loaded = load_controlnet(tmp_path / "cn", wiring="nvlabs")
    assert loaded.wiring == "nvlabs" and not hasattr(loaded, "time_embed")
    kept = ("transformer_blocks", "input_block", "controlnet_blocks")
    want = {k: v for k, v in cn.state_dict().items() if k.startswith(kept)}
    _same_state(loaded, want)


@pytest.mark.parametrize("wiring", ["nvlabs", "diffusers"])
def test_save_round_trip_carries_the_config(tmp_path, wiring):
    scale = 1000.0 if wiring == "diffusers" else None
    cfg = ControlNetConfig(tiny_dit_config(), BLOCKS, wiring, time_input_scale=scale)
    cn = randomize_(SanaControlNet(cfg), 6)
    save_controlnet(cn, tmp_path / "ours.safetensors", metadata={"note": "x"})
    loaded = load_controlnet(tmp_path / "ours.safetensors")  # width 64 needs no config: metadata has it
    assert loaded.config == cfg
    _same_state(loaded, cn.state_dict())


def test_a_dit_file_is_named_as_such(tmp_path, base_tf):
    path = tmp_path / "dit.safetensors"
    save_file({k: v.contiguous() for k, v in base_tf.state_dict().items()}, str(path))
    with pytest.raises(ValueError, match="looks like a Sana DiT, not a ControlNet.*load it with the DiT loader"):
        load_controlnet(path)
    nv = tmp_path / "dit_nvlabs.pth"
    torch.save({"state_dict": to_nvlabs_state_dict(base_tf.state_dict())}, nv)
    with pytest.raises(ValueError, match="looks like a Sana DiT, not a ControlNet"):
        load_controlnet(nv)


def test_other_models_are_named(tmp_path):
    path = tmp_path / "vae.safetensors"
    save_file({"encoder.conv_in.weight": torch.zeros(2, 3, 3, 3), "decoder.conv_out.weight": torch.zeros(3, 2, 3, 3)},
              str(path))
    with pytest.raises(ValueError, match="is not a Sana ControlNet checkpoint; it looks like a VAE"):
        load_controlnet(path)


def test_diffusers_file_has_no_base(tmp_path):
    tiny_diffusers_controlnet(num_layers=BLOCKS).save_pretrained(tmp_path / "cn")
    with pytest.raises(ValueError, match="holds no base model"):
        load_controlnet_base(tmp_path / "cn")


def test_strict_key_accounting(tmp_path, nvlabs_parts):
    _, _, nv = nvlabs_parts
    extra = dict(nv, **{"controlnet.1.before_proj.weight": torch.zeros(64, 64)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"unexpected 1: controlnet\.1\.before_proj\.weight"):
        load_controlnet(tmp_path / "extra.pth", config=_tiny_cn_config())
    short = {k: v for k, v in nv.items() if k != "controlnet.1.after_proj.bias"}
    torch.save(short, tmp_path / "short.pth")
    with pytest.raises(ValueError, match=r"short\.pth: keys do not match the Sana ControlNet; missing 1: "
                                         r"controlnet_blocks\.1\.bias"):
        load_controlnet(tmp_path / "short.pth", config=_tiny_cn_config())
    torch.save(nv, tmp_path / "ok.pth")
    with pytest.raises(ValueError, match="shape mismatch"):
        load_controlnet(tmp_path / "ok.pth", config=_tiny_cn_config(mlp_ratio=3.0))


def test_wiring_errors(tmp_path, nvlabs_parts):
    torch.save(nvlabs_parts[2], tmp_path / "cn.pth")
    with pytest.raises(ValueError, match="diffusers wiring needs the ControlNet's own patch_embed"):
        load_controlnet(tmp_path / "cn.pth", config=_tiny_cn_config(), wiring="diffusers")
    with pytest.raises(ValueError, match="wiring must be one of \\('nvlabs', 'diffusers'\\) or None"):
        load_controlnet(tmp_path / "cn.pth", config=_tiny_cn_config(), wiring="sideways")


def test_bad_metadata_config(tmp_path):
    cn = SanaControlNet(_tiny_cn_config())
    save_file({k: v.contiguous() for k, v in cn.state_dict().items()}, str(tmp_path / "m.safetensors"),
              metadata={"sana_sprint_controlnet_config": json.dumps({"wiring": "nvlabs", "layers": 3})})
    with pytest.raises(ValueError, match="metadata 'sana_sprint_controlnet_config' is not a valid ControlNet config"):
        load_controlnet(tmp_path / "m.safetensors")


@pytest.mark.parametrize("dim, hidden, heads", [(2240, 5600, (70, 20)), (1152, 2880, (36, 16))])
def test_released_widths_infer_heads_from_shapes(dim, hidden, heads):
    shapes = {"input_block.weight": (dim, dim), "transformer_blocks.0.ff.conv_point.weight": (dim, hidden, 1, 1),
              **{f"transformer_blocks.{j}.scale_shift_table": (6, dim) for j in range(7)}}
    cfg = infer_controlnet_config(shapes, "nvlabs")
    assert (cfg.dit.num_heads, cfg.dit.cross_heads, cfg.dit.mlp_ratio, cfg.dit.qk_norm) == (*heads, 2.5, False)
    assert (cfg.num_blocks, cfg.wiring) == (7, "nvlabs")
    gap = {k: v for k, v in shapes.items() if not k.startswith("transformer_blocks.3.")}
    with pytest.raises(ValueError, match=r"blocks must be numbered 0..N-1; found \[0, 1, 2, 4, 5, 6\]"):
        infer_controlnet_config(gap, "nvlabs")
