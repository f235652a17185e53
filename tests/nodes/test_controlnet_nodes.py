"""ControlNet nodes on tiny models: loader, HED / drawing scribbles, apply, and the sampler following it
(our sampler node, and the SAMPLER + SIGMAS route through the native MODEL's extra conds)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from sana_sprint_core.constants import (
    COMFY_CONTROLNET_NAME, COMFY_DIT_NAME, COMFY_TEXT_ENCODER_NAME, COMFY_VAE_NAME, DCAE_SCALE, HED_FILE_NAME,
)
from tests.nodes import stubs
from tests.nodes.test_execute import _comfy_route, run_twice

PROMPT = "a lighthouse drawn with a pencil"
SAMPLE = dict(seed=5, steps=2, guidance=4.5, max_timestep=1.5708, intermediate_timestep=1.3, denoise=1.0,
              timesteps="")


@pytest.fixture(scope="module")
def cn(nodes):
    model = nodes["SanaSprintDiTLoader"].execute(COMFY_DIT_NAME, "auto")[0]
    te = nodes["SanaSprintTextEncoderLoader"].execute(COMFY_TEXT_ENCODER_NAME, "auto")[0]
    vae = nodes["SanaSprintVAELoader"].execute(COMFY_VAE_NAME, "auto")[0]
    controlnet = nodes["SanaSprintControlNetLoader"].execute(COMFY_CONTROLNET_NAME, "auto", "auto")[0]
    cond = nodes["SanaSprintTextEncode"].execute(te, PROMPT, True)[0]
    image = torch.rand(1, 80, 112, 3, generator=torch.Generator().manual_seed(3))
    return SimpleNamespace(model=model, vae=vae, controlnet=controlnet, cond=cond, image=image)


def _apply(nodes, cn, strength=1.0, width=128, height=96, image=None):
    image = cn.image if image is None else image
    return nodes["SanaSprintControlNetApply"].execute(cn.cond, cn.controlnet, cn.vae, image, strength, width, height)[0]


def _latent(nodes, width=128, height=96, batch=2):
    return nodes["SanaSprintEmptyLatent"].execute(width, height, batch, "custom")[0]


def _sample(nodes, cn, positive, latent, **kw):
    return nodes["SanaSprintSampler"].execute(model=cn.model, positive=positive, latent_image=latent,
                                              **{**SAMPLE, **kw})[0]["samples"]


def _models_dir(pack) -> str:
    return pack.nodes.model_files.folder_paths.models_dir


# --------------------------------------------------------------------------------------------------
# Loader


def test_loader_gives_the_files_controlnet_under_model_management(pack, nodes, cn):
    node = nodes["SanaSprintControlNetLoader"]
    assert node.validate_inputs(COMFY_CONTROLNET_NAME) is True
    again = node.execute(COMFY_CONTROLNET_NAME, "fp32", "nvlabs")[0]
    assert again is not cn.controlnet
    core = pack.sana_sprint_core.controlnet_loading.load_controlnet(
        os.path.join(_models_dir(pack), "controlnet", COMFY_CONTROLNET_NAME))
    for managed in (cn.controlnet, again):
        net = managed.payload
        assert isinstance(net, pack.sana_sprint_core.controlnet.SanaControlNet) and managed.kind == "sana_controlnet"
        assert (net.config.num_blocks, net.config.wiring, net.config.dit.qk_norm) == (2, "nvlabs", False)
        assert managed.patcher.model.inner is net  # the ModelPatcher ComfyUI loads and offloads
        assert net.state_dict().keys() == core.state_dict().keys()
        assert all(torch.equal(v, core.state_dict()[k].to(v.dtype)) for k, v in net.state_dict().items())
    # auto on the CPU: bf16 weights computed in fp32 (ComfyUI's manual cast); fp32 asked: fp32 as stored
    assert (cn.controlnet.payload.dtype, cn.controlnet.payload.compute_dtype) == (torch.bfloat16, torch.float32)
    assert (again.payload.dtype, again.payload.compute_dtype) == (torch.float32, None)  # the stream's dtype
    assert float(core.input_block.weight.detach().abs().sum()) > 0  # the fixture's projections are not the zero init


def test_loader_errors(nodes):
    node = nodes["SanaSprintControlNetLoader"]
    message = node.validate_inputs("nope.pth")
    assert "'controlnet' folder" in message and "'nope.pth'" in message
    assert "Efficient-Large-Model/Sana_1600M_1024px_BF16_ControlNet_HED" in message
    with pytest.raises(FileNotFoundError, match="Sana ControlNet 'nope.pth' not found in ComfyUI's 'controlnet'"):
        node.execute("nope.pth", "auto", "auto")
    with pytest.raises(ValueError, match="the diffusers wiring needs the ControlNet's own patch_embed"):
        node.execute(COMFY_CONTROLNET_NAME, "auto", "diffusers")


# --------------------------------------------------------------------------------------------------
# HED preprocessor


def test_annotators_folder_is_registered_with_the_controlnet_aux_fallback(pack, tmp_path):
    files = pack.nodes.model_files
    fp = files.folder_paths
    roots = fp.get_folder_paths("annotators")
    custom = fp.get_folder_paths("custom_nodes")[0]
    assert roots == [os.path.join(fp.models_dir, "annotators"),
                     os.path.join(custom, "comfyui_controlnet_aux", "ckpts", "lllyasviel", "Annotators")]
    files.register_annotators()  # idempotent
    assert fp.get_folder_paths("annotators") == roots
    os.makedirs(roots[1], exist_ok=True)
    extra = os.path.join(roots[1], "hed_copy.pth")
    os.symlink(os.path.join(roots[0], HED_FILE_NAME), extra)
    try:
        assert files.list_models(files.HED) == [HED_FILE_NAME, "hed_copy.pth"]
        assert str(files.resolve(files.HED, "hed_copy.pth")) == extra
    finally:
        os.remove(extra)


def test_hed_mode_equals_the_core_scribble_and_shows_a_preview(pack, nodes, cn):
    hed = pack.sana_sprint_core.hed
    node = nodes["SanaSprintHEDPreprocessor"]
    assert node.validate_inputs("hed", HED_FILE_NAME) is True
    out = run_twice(node, image=cn.image, mode="hed", detect_resolution=128, thickness=2, hed_model=HED_FILE_NAME)[0]
    net = hed.load_hed(os.path.join(_models_dir(pack), "annotators", HED_FILE_NAME))
    expected = hed.scribble_from_edges(hed.hed_edges(net, cn.image.movedim(-1, 1), 128), 2)
    assert out.shape == (1, 128, 192, 3)  # short side 80 -> 128; 112 * 128 / 80 = 179.2 -> 192
    assert torch.equal(out, expected.expand(-1, 3, -1, -1).movedim(1, -1))
    assert 0.02 < float(out.mean()) < 0.98 and set(out.unique().tolist()) == {0.0, 1.0}
    assert len(stubs.STATE.previews) == 2 and torch.equal(stubs.STATE.previews[0], out)
    default = node.execute(cn.image, "hed", 128, 2)[0]  # hed_model left out: the default file
    assert torch.equal(default, out)
    thick = node.execute(cn.image, "hed", 128, 8, HED_FILE_NAME)[0]
    assert thick.sum() > out.sum()


def test_drawing_modes_threshold_without_hed(nodes):
    node = nodes["SanaSprintHEDPreprocessor"]
    drawing = torch.zeros(1, 64, 128, 3)  # sides multiples of 64: the detect size equals the input size
    drawing[:, 30:34, 10:80] = 1.0  # a white stroke on black
    assert node.validate_inputs("drawing", "missing.pth") is True  # no HED needed
    out = run_twice(node, image=drawing, mode="drawing", detect_resolution=64, thickness=1,
                    hed_model="missing.pth")[0]
    assert out.shape == (1, 64, 128, 3)
    assert out[0, 30:34, 12:78].min() == 1 and out[0, :28].max() == 0 and out[0, 36:].max() == 0
    inverted = node.execute(1.0 - drawing, "drawing_inverted", 64, 1, None)[0]
    assert torch.equal(inverted, out)
    thick = node.execute(drawing, "drawing", 64, 8, None)[0]  # dilate 4 x 4: rows 30..33 -> 29..35
    assert thick[0, 29:36, 12:78].min() == 1 and thick[0, :28].max() == 0 and thick[0, 37:].max() == 0


def test_hed_errors(nodes, cn):
    node = nodes["SanaSprintHEDPreprocessor"]
    message = node.validate_inputs("hed", "missing.pth")
    assert "HED annotator 'missing.pth' not found in ComfyUI's 'annotators' folder" in message
    assert "lllyasviel/Annotators" in message and HED_FILE_NAME in message
    with pytest.raises(FileNotFoundError, match="'annotators' folder"):
        node.execute(cn.image, "hed", 128, 2, "missing.pth")
    with pytest.raises(ValueError, match="mode must be one of"):
        node.execute(cn.image, "canny", 128, 2, None)
    with pytest.raises(ValueError, match="thickness must be an integer >= 0"):
        node.execute(cn.image, "drawing", 128, -1, None)


# --------------------------------------------------------------------------------------------------
# Apply


def test_apply_encodes_once_into_copied_conditioning(pack, nodes, cn):
    out = run_twice(nodes["SanaSprintControlNetApply"], positive=cn.cond, controlnet=cn.controlnet, vae=cn.vae,
                    image=cn.image, strength=0.8, width=128, height=96)[0]
    (embeds, extra), = out
    original = cn.cond[0][1]
    assert embeds is cn.cond[0][0] and extra is not original
    assert set(original) == {"attention_mask"} and extra["attention_mask"] is original["attention_mask"]
    assert extra["sana_controlnet"] is cn.controlnet and extra["sana_control_strength"] == 0.8
    assert extra["additional_models"] == [cn.controlnet.patcher]
    control = pack.sana_sprint_core.hed.to_control_image(cn.image.movedim(-1, 1), 128, 96)
    expected = pack.sana_sprint_core.controlnet.encode_control_image(cn.vae.payload, control)
    assert extra["sana_control_latent"].shape == (1, 32, 3, 4)
    assert torch.equal(extra["sana_control_latent"], expected)  # diffusion units (DC-AE latent x 0.41407)
    assert any(p is cn.vae.patcher for p, _ in stubs.STATE.loads)


def test_apply_errors(nodes, cn):
    with pytest.raises(ValueError, match="stacking several ControlNets is not supported"):
        nodes["SanaSprintControlNetApply"].execute(_apply(nodes, cn), cn.controlnet, cn.vae, cn.image, 1.0, 128, 96)
    with pytest.raises(ValueError, match="width must be a positive multiple of 32.*got 100"):
        _apply(nodes, cn, width=100)


# --------------------------------------------------------------------------------------------------
# Sampling with the control


def test_sampler_with_control_equals_the_core_controlled_sampler(pack, nodes, cn):
    positive, latent = _apply(nodes, cn, strength=0.7), _latent(nodes)
    out = run_twice(nodes["SanaSprintSampler"], model=cn.model, positive=positive, latent_image=latent,
                    **SAMPLE)[0]["samples"]
    embeds, extra = positive[0]
    expected = pack.sana_sprint_core.controlnet.sample_with_control(
        cn.model.model.diffusion_model, cn.controlnet.payload, extra["sana_control_latent"], embeds,
        extra["attention_mask"], strength=0.7, width=128, height=96, steps=2, seed=5, latent=latent["samples"])
    torch.testing.assert_close(out, expected / DCAE_SCALE, rtol=0, atol=0)
    plain = _sample(nodes, cn, cn.cond, latent)
    assert (out - plain).abs().max() > 0.05  # the control changes the image
    assert any(p is cn.controlnet.patcher for p, _ in stubs.STATE.loads)  # loaded beside the MODEL
    zero = _sample(nodes, cn, _apply(nodes, cn, strength=0.0), latent)
    assert torch.equal(zero, plain)  # strength 0 adds exactly zero residuals


def test_sampler_rejects_a_control_image_of_another_size(nodes, cn):
    with pytest.raises(ValueError, match="encoded at 128x96 but the latent is 64x64; set width and height"):
        _sample(nodes, cn, _apply(nodes, cn), _latent(nodes, 64, 64))


@pytest.mark.parametrize("steps", [1, 2])
def test_scm_sampler_route_follows_the_control_in_the_conds(nodes, cn, steps):
    """SamplerCustomAdvanced's way: the control rides in the model's extra conds (CONDConstant + CONDRegular)."""
    positive, latent = _apply(nodes, cn, strength=0.7), _latent(nodes)
    base = cn.model.model
    conds = base.extra_conds(cross_attn=positive[0][0], **positive[0][1])
    assert isinstance(conds["sana_controlnet"], stubs.CONDConstant) and conds["sana_controlnet"].cond is cn.controlnet
    assert conds["sana_control_strength"].cond.tolist() == [pytest.approx(0.7)]
    sampler = nodes["SanaSprintSCMSampler"].execute()[0]
    sigmas = nodes["SanaSprintSigmas"].execute(steps, 1.5708, 1.3, 1.0, "")[0]
    got, _ = _comfy_route(base, positive, latent, sigmas, 9, sampler.sampler_function)
    ours = _sample(nodes, cn, positive, latent, seed=9, steps=steps)
    torch.testing.assert_close(got, ours, rtol=1e-5, atol=1e-5 * float(ours.abs().max()))
    plain, _ = _comfy_route(base, cn.cond, latent, sigmas, 9, sampler.sampler_function)
    assert (got - plain).abs().max() > 0.05
