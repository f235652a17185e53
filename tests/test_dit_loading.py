"""load_dit: every supported source gives back the exact weights; every bad source names the file."""

import json

import pytest
import torch
from safetensors.torch import save_file

from sana_sprint_core import dit_loading
from sana_sprint_core.dit import SanaSprintDiT
from sana_sprint_core.dit_config import PRESETS
from sana_sprint_core.dit_keys import DiTLayout, detect_layout, split_spec, to_canonical
from sana_sprint_core.checkpoint_io import TensorSpec
from sana_sprint_core.dit_loading import dit_from_state_dict, load_dit, resolve_config
from tests.fixtures.dit import ours_from_diffusers, tiny_diffusers_transformer, tiny_dit_config, to_nvlabs_state_dict


@pytest.fixture(scope="module")
def sprint():
    return tiny_diffusers_transformer(seed=0)


@pytest.fixture(scope="module")
def sd(sprint):
    return sprint.state_dict()


def assert_weights(model, want, dtype=torch.float32):
    got = model.state_dict()
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert got[k].dtype == dtype, k
        assert torch.equal(got[k], v.to(dtype)), k


def save_st(sd, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, path)
    return path


# --- sources --------------------------------------------------------------------------------------


def test_diffusers_folder_needs_no_config(tmp_path, sprint, sd):
    sprint.save_pretrained(tmp_path / "transformer")
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "SanaSprintPipeline"}))
    for path in (tmp_path / "transformer", tmp_path):  # the transformer folder and the pipeline folder
        model = load_dit(path)
        assert model.config == tiny_dit_config()
        assert_weights(model, sd)


def test_sharded_diffusers_folder_and_index(tmp_path, sprint, sd):
    sprint.save_pretrained(tmp_path, max_shard_size="60KB")
    index = tmp_path / "diffusion_pytorch_model.safetensors.index.json"
    assert len(set(json.loads(index.read_text())["weight_map"].values())) > 2
    for path in (tmp_path, index):
        model = load_dit(path)
        assert model.config == tiny_dit_config()
        assert_weights(model, sd)


def test_single_diffusers_file_with_explicit_config(tmp_path, sd):
    model = load_dit(save_st(sd, tmp_path / "sprint.safetensors"), config=tiny_dit_config())
    assert model.config == tiny_dit_config()
    assert_weights(model, sd)


def test_unreleased_width_needs_heads(tmp_path, sd):
    path = save_st(sd, tmp_path / "sprint.safetensors")
    with pytest.raises(ValueError, match=r"sprint\.safetensors: hidden size 64 is not a released Sana width "
                                         r"\(\[1152, 2240\]\).*overrides=\{'cross_heads': N\}"):
        load_dit(path)
    model = load_dit(path, overrides={"cross_heads": 4})  # self-attn heads: 64 / 32 = 2
    assert model.config == tiny_dit_config()
    assert_weights(model, sd)


@pytest.mark.parametrize("wrap", ["flat", "training"])
def test_nvlabs_pth(tmp_path, sd, wrap):
    nv = to_nvlabs_state_dict(sd)
    training = {"state_dict": nv, "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}}, "step": 5}
    ckpt = nv if wrap == "flat" else training
    torch.save(ckpt, tmp_path / "sprint.pth")
    model = load_dit(tmp_path / "sprint.pth", config=tiny_dit_config())
    assert_weights(model, sd)


def test_nvlabs_safetensors(tmp_path, sd):
    model = load_dit(save_st(to_nvlabs_state_dict(sd), tmp_path / "nv.safetensors"), overrides={"cross_heads": 4})
    assert model.config == tiny_dit_config()
    assert_weights(model, sd)


@pytest.mark.parametrize(
    "prefix, nvlabs", [("model.diffusion_model.", False), ("diffusion_model.", True), ("model.", False)]
)
def test_comfy_prefixed_files(tmp_path, sd, prefix, nvlabs):
    src = to_nvlabs_state_dict(sd) if nvlabs else sd
    path = save_st({prefix + k: v for k, v in src.items()}, tmp_path / "comfy.safetensors")
    assert_weights(load_dit(path, config=tiny_dit_config()), sd)


def test_teacher_and_sana_diffusers_folders(tmp_path):
    teacher = tiny_diffusers_transformer(seed=2, guidance_embeds=False, timestep_scale=0.001, guidance_embeds_scale=0.2)
    teacher.save_pretrained(tmp_path / "teacher")
    model = load_dit(tmp_path / "teacher")
    assert model.config == tiny_dit_config(guidance_embeds=False, guidance_embed_scale=0.2)
    assert model.config.time_input_scale == 1.0  # 1000 * timestep_scale
    assert_weights(model, ours_from_diffusers(teacher.state_dict()))
    sana = tiny_diffusers_transformer(seed=3, guidance_embeds=False, qk_norm=False)
    sana.save_pretrained(tmp_path / "sana")
    assert load_dit(tmp_path / "sana").config.time_input_scale == 1000.0


@pytest.mark.parametrize("qk_norm, scale", [(True, 1.0), (False, 1000.0)], ids=["teacher", "sana"])
def test_time_scale_without_config_json(tmp_path, qk_norm, scale):
    ref = tiny_diffusers_transformer(seed=4, guidance_embeds=False, qk_norm=qk_norm)
    path = save_st(to_nvlabs_state_dict(ref.state_dict()), tmp_path / "nv.safetensors")
    model = load_dit(path, overrides={"cross_heads": 4})
    assert model.config.time_input_scale == scale and not model.config.guidance_embeds
    assert model.config.qk_norm == qk_norm


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("nvlabs", [False, True], ids=["diffusers", "nvlabs"])
def test_released_architectures_are_inferred_from_shapes(name, nvlabs):
    with torch.device("meta"):
        sd = SanaSprintDiT(PRESETS[name], device="meta").state_dict()
    if nvlabs:
        sd = to_nvlabs_state_dict(sd, extras=False)
    specs = {k: TensorSpec(tuple(v.shape), v.dtype) for k, v in sd.items()}
    layout = detect_layout(specs)
    assert layout == DiTLayout("nvlabs" if nvlabs else "diffusers")
    shapes = {k: s.shape for k, s in to_canonical(specs, layout, split_spec).items()}
    assert resolve_config(shapes) == PRESETS[name]


# --- dtype and memory -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, "bf16", "fp16"])
def test_dtype_on_request(tmp_path, sprint, sd, dtype):
    sprint.save_pretrained(tmp_path)
    want = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype, dtype)
    model = load_dit(tmp_path, dtype=dtype)
    assert_weights(model, sd, want)


def test_dtype_none_keeps_uniform_file_dtype_else_fp32(tmp_path, sd):
    half = {k: v.to(torch.bfloat16) for k, v in sd.items()}
    model = load_dit(save_st(half, tmp_path / "a" / "bf16.safetensors"), config=tiny_dit_config())
    assert_weights(model, half, torch.bfloat16)
    mixed = {**half, "caption_norm.weight": sd["caption_norm.weight"]}  # one fp32 tensor
    model = load_dit(save_st(mixed, tmp_path / "b" / "mixed.safetensors"), config=tiny_dit_config())
    assert_weights(model, {k: v.float() for k, v in mixed.items()})


def test_bad_dtype(tmp_path, sd):
    with pytest.raises(ValueError, match=r"dtype must be one of fp32, bf16, fp16, fp8_e4m3fn, fp8_e5m2, got 'int8'"):
        load_dit(save_st(sd, tmp_path / "s.safetensors"), dtype="int8", config=tiny_dit_config())


def test_build_is_on_meta_and_no_init_touches_real_memory(tmp_path, sprint, sd, monkeypatch):
    sprint.save_pretrained(tmp_path)
    devices = []

    def recording(fn):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            devices.append((args[0] if args and isinstance(args[0], torch.Tensor) else out).device.type)
            return out
        return wrapped

    for name in ("kaiming_uniform_", "uniform_", "normal_", "xavier_uniform_", "zeros_", "ones_", "trunc_normal_"):
        monkeypatch.setattr(torch.nn.init, name, recording(getattr(torch.nn.init, name)))
    monkeypatch.setattr(torch, "randn", recording(torch.randn))
    model = load_dit(tmp_path)
    assert devices and set(devices) == {"meta"}  # init ran, but only on meta tensors
    assert_weights(model, sd)


def test_loaded_tensors_become_the_parameters(sd):
    state = ours_from_diffusers({k: v.clone() for k, v in sd.items()})
    model = dit_from_state_dict(state, tiny_dit_config(), dtype=torch.float32)
    got = model.state_dict()
    assert all(got[k].data_ptr() == v.data_ptr() for k, v in state.items())  # no copy made


def test_load_dit_does_not_copy_file_tensors(tmp_path, sd, monkeypatch):
    path = save_st(sd, tmp_path / "s.safetensors")
    read, original = {}, dit_loading.read_state_dict

    def spy(p):
        read.update(original(p))
        return read

    monkeypatch.setattr(dit_loading, "read_state_dict", spy)
    model = load_dit(path, config=tiny_dit_config())
    params = model.state_dict()
    assert read and all(params[k].data_ptr() == v.data_ptr() for k, v in read.items())


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "keys, what",
    [
        (["encoder.conv_in.weight", "encoder.down_blocks.0.0.conv1.weight", "decoder.conv_out.weight"],
         r"a DC-AE autoencoder \(encoder\.\*/decoder\.\* keys\); load it with the VAE loader"),
        (["model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.middle_block.0.emb_layers.1.weight"],
         r"a Stable Diffusion / SDXL UNet"),
        (["double_blocks.0.img_attn.qkv.weight", "img_in.weight"], r"a Flux transformer"),
        (["model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight", "model.norm.weight"],
         r"a text encoder / language model such as Gemma"),
    ],
    ids=["dcae", "sd_unet", "flux", "gemma"],
)
def test_other_models_are_named(tmp_path, keys, what):
    path = save_st({k: torch.zeros(2, 2) for k in keys}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match=rf"other\.safetensors is not a Sana DiT checkpoint; it looks like {what}"):
        load_dit(path)


def test_truncated_and_foreign_files(tmp_path, sd):
    path = save_st(sd, tmp_path / "cut.safetensors")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"cut\.safetensors: truncated safetensors file"):
        load_dit(path)
    png = tmp_path / "img.pth"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.raises(ValueError, match=r"img\.pth: not a PyTorch checkpoint; it looks like a PNG image"):
        load_dit(png)


def test_pickle_with_code_is_refused(tmp_path, sd):
    import argparse

    ckpt = {"state_dict": to_nvlabs_state_dict(sd), "config": argparse.Namespace(model="SanaMSCM")}
    torch.save(ckpt, tmp_path / "t.pth")
    with pytest.raises(ValueError, match=r"t\.pth: .*We never execute pickles"):
        load_dit(tmp_path / "t.pth")


def test_missing_and_unexpected_keys_are_listed(tmp_path, sd):
    cfg = tiny_dit_config()
    missing = {k: v for k, v in sd.items() if k != "caption_norm.weight"}
    msg = r"m\.safetensors: keys do not match the Sana DiT; missing 1: caption_norm\.weight; unexpected 0"
    with pytest.raises(ValueError, match=msg):
        load_dit(save_st(missing, tmp_path / "m.safetensors"), config=cfg)
    extra = {**sd, "transformer_blocks.0.attn1.extra.weight": torch.zeros(2)}
    with pytest.raises(ValueError, match=r"missing 0: none; unexpected 1: transformer_blocks\.0\.attn1\.extra\.weight"):
        load_dit(save_st(extra, tmp_path / "x.safetensors"), config=cfg)
    nv = {**to_nvlabs_state_dict(sd), "blocks.1.mlp.fc1.weight": torch.zeros(2)}  # an unknown NVlabs key
    with pytest.raises(ValueError, match=r"unexpected 1: blocks\.1\.mlp\.fc1\.weight"):
        load_dit(save_st(nv, tmp_path / "nv.safetensors"), config=cfg)


def test_long_key_lists_are_truncated(tmp_path, sd):
    no_cross = {k: v for k, v in sd.items() if ".attn2." not in k}
    n_missing = len(sd) - len(no_cross)
    assert n_missing == 20
    msg = r"missing 20: (transformer_blocks\.\d\.attn2\.[\w.]+, ){7}[\w.]+ \.\.\. and 12 more"
    with pytest.raises(ValueError, match=msg):
        load_dit(save_st(no_cross, tmp_path / "s.safetensors"), config=tiny_dit_config())


def test_shape_mismatch_names_key_expected_and_got(tmp_path, sd):
    bad = {**sd, "caption_norm.weight": torch.ones(63)}
    msg = r"s\.safetensors: 1 shape mismatch\(es\): caption_norm\.weight: expected \(64,\), got \(63,\)"
    with pytest.raises(ValueError, match=msg):
        load_dit(save_st(bad, tmp_path / "s.safetensors"), config=tiny_dit_config())


def test_key_needed_for_inference_is_named(tmp_path, sd):
    bad = {k: v for k, v in sd.items() if not k.startswith("proj_out.")}
    msg = r"s\.safetensors: key 'proj_out\.weight' is missing; it is needed to infer out_channels"
    with pytest.raises(ValueError, match=msg):
        load_dit(save_st(bad, tmp_path / "s.safetensors"), config=tiny_dit_config())


def test_block_numbering_gap(tmp_path, sd):
    renamed = {k.replace("transformer_blocks.1.", "transformer_blocks.2."): v for k, v in sd.items()}
    with pytest.raises(ValueError, match=r"transformer blocks must be numbered 0\.\.N-1; found \[0, 2\]"):
        load_dit(save_st(renamed, tmp_path / "s.safetensors"), config=tiny_dit_config())


def test_explicit_config_must_fit(tmp_path, sd):
    path = save_st(sd, tmp_path / "s.safetensors")
    msg = r"s\.safetensors: the config does not fit the weights: num_layers: config 3, weights 2"
    with pytest.raises(ValueError, match=msg):
        load_dit(path, config=tiny_dit_config(num_layers=3))
    msg = r"qk_norm: config False, weights True; guidance_embeds: config False, weights True"
    with pytest.raises(ValueError, match=msg):
        load_dit(path, config=tiny_dit_config(qk_norm=False, guidance_embeds=False))
    with pytest.raises(ValueError, match=r"unknown DiTConfig override\(s\) \['cross_head'\]"):
        load_dit(path, overrides={"cross_head": 4})


def test_config_json_must_fit(tmp_path, sprint):
    sprint.save_pretrained(tmp_path)
    cfg_path = tmp_path / "config.json"
    good = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**good, "num_layers": 5}))
    msg = r"config\.json does not fit the weights \(hidden size 64\): num_layers = 5 \(weights: 2\)"
    with pytest.raises(ValueError, match=msg):
        load_dit(tmp_path)
    cfg_path.write_text(json.dumps({**good, "num_cross_attention_heads": 8}))
    with pytest.raises(ValueError, match=r"num_cross_attention_heads \* cross_attention_head_dim = 128"):
        load_dit(tmp_path)
    cfg_path.write_text(json.dumps({**good, "interpolation_scale": 1.0}))
    with pytest.raises(ValueError, match=r"interpolation_scale = 1\.0 \(positional embedding, unsupported\)"):
        load_dit(tmp_path)


def test_combined_checkpoint_is_refused(tmp_path, sd):
    both = {"model.diffusion_model." + k: v for k, v in sd.items()}
    both["first_stage_model.decoder.conv_out.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"all\.safetensors: a DiT sits under prefix.*combined checkpoints"):
        load_dit(save_st(both, tmp_path / "all.safetensors"))


def test_saved_dit_round_trips_with_its_config_in_metadata(tmp_path):
    from sana_sprint_core.dit_config import DiTConfig
    from sana_sprint_core.dit_loading import CONFIG_METADATA_KEY, save_dit

    # a width that is no released one, so only the metadata can tell the head counts
    cfg = DiTConfig(hidden_size=48, num_layers=1, num_heads=3, cross_heads=6, caption_channels=24)
    torch.manual_seed(0)
    model = SanaSprintDiT(cfg)
    path = tmp_path / "student.safetensors"
    save_dit(model, path, metadata={"steps": "7"})
    loaded = load_dit(path)
    assert loaded.config == cfg
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert f.metadata()["steps"] == "7" and CONFIG_METADATA_KEY in f.metadata()


def test_bad_config_metadata_is_named(tmp_path):
    from sana_sprint_core.checkpoint_io import save_safetensors_atomic
    from sana_sprint_core.dit_config import DiTConfig

    cfg = DiTConfig(hidden_size=48, num_layers=1, num_heads=3, cross_heads=6, caption_channels=24)
    path = tmp_path / "bad.safetensors"
    save_safetensors_atomic(SanaSprintDiT(cfg).state_dict(), path, metadata={"sana_sprint_config": '{"hiden": 3}'})
    with pytest.raises(ValueError, match=r"bad.safetensors: metadata 'sana_sprint_config' is not a valid DiT config.*hiden"):
        load_dit(path)
