"""ControlNet training inside ComfyUI on tiny models (stubbed comfy modules, inference mode as ComfyUI
runs nodes): Precompute's HED control maps, SanaSprintDistillControlNet in both modes (progress,
previews, interrupt + exact resume, the Sprint MODEL left alone, the ControlNet steering the sampler),
SanaSprintSaveControlNet through the ControlNet loader, input errors, the shipped workflow."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

from sana_sprint_core.constants import (
    COMFY_CONTROLNET_NAME, COMFY_DIT_NAME, COMFY_TEACHER_NAME, COMFY_TEXT_ENCODER_NAME, COMFY_VAE_NAME, HED_FILE_NAME,
)
from tests.fixtures.comfy_training import write_training_images
from tests.fixtures.distill import one_thread  # noqa: F401 (fixture)
from tests.nodes import stubs, stubs_training
from tests.nodes.test_training_nodes import _execute, input_dir, run, single_thread, weights

pytestmark = pytest.mark.usefixtures("one_thread")
NODE = "SanaSprintDistillControlNet"
WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "api" / "sana_sprint_train_controlnet.json"
# Inputs of a 2-iteration run (one G, one D in mode distill) on the tiny models.
FAST = dict(mode="distill", teacher_controlnet=COMFY_CONTROLNET_NAME, init="auto", steps=2, learning_rate=1e-3,
            batch_size=1, scm_weight=1.0, ladd_weight=0.5, max_time_probability=0.5, seed=7, save_every=0,
            preview_every=1, resume=False)
HED = dict(control_maps="hed", hed_model=HED_FILE_NAME, thickness_min=0, thickness_max=4)


@pytest.fixture(scope="module")
def env(nodes, models_dir):
    with single_thread():
        write_training_images(input_dir() / "cn_train_set")
        sprint = run(nodes["SanaSprintDiTLoader"], model_name=COMFY_DIT_NAME, weight_dtype="fp32")[0]
        te = run(nodes["SanaSprintTextEncoderLoader"], text_encoder_name=COMFY_TEXT_ENCODER_NAME,
                 weight_dtype="fp32")[0]
        vae = run(nodes["SanaSprintVAELoader"], vae_name=COMFY_VAE_NAME, weight_dtype="fp32")[0]
        data = run(nodes["SanaSprintDataset"], folder="cn_train_set", resolution=64, buckets=True, skip_bad_files=False,
                   caption_extension=".txt")[0]
        cache = precompute(nodes, data, te, vae, **HED)
        cond = run(nodes["SanaSprintTextEncode"], text_encoder=te, text="a house", complex_human_instruction=True)[0]
        latent = run(nodes["SanaSprintEmptyLatent"], width=64, height=64, batch_size=1, aspect_ratio="custom")[0]
        image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(4))
        teacher_cn = run(nodes["SanaSprintControlNetLoader"], controlnet_name=COMFY_CONTROLNET_NAME,
                         weight_dtype="fp32", wiring="auto")[0]
    return SimpleNamespace(sprint=sprint, te=te, vae=vae, data=data, cache=cache, cond=cond, latent=latent,
                           image=image, teacher_cn=teacher_cn)


def precompute(nodes, data, te, vae, **control):
    return run(nodes["SanaSprintPrecompute"], dataset=data, text_encoder=te, vae=vae, preview_prompt="a house",
               complex_human_instruction=True, **control)[0]


def train(nodes, env, output_name, node=None, **changes):
    inputs = {"model": env.sprint, "cache": env.cache, **FAST, "output_name": output_name, **changes}
    return run(node or nodes[NODE], **inputs).args


def sample(nodes, env, controlnet, strength=1.0):
    """One 1-step sample of the Sprint MODEL steered by `controlnet` with the env's control image."""
    positive = run(nodes["SanaSprintControlNetApply"], positive=env.cond, controlnet=controlnet, vae=env.vae,
                   image=env.image, strength=strength, width=64, height=64)[0]
    return run(nodes["SanaSprintSampler"], model=env.sprint, positive=positive, latent_image=env.latent, seed=3,
               steps=1, guidance=4.5, max_timestep=1.5708, intermediate_timestep=1.3, denoise=1.0,
               timesteps="")[0]["samples"]


def state(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def distilled(nodes, env):
    """A 2-iteration distillation, run as ComfyUI runs it (hidden unique_id), with its progress reports."""
    with single_thread():
        stubs.reset_state()
        before = weights(env.sprint)
        node = type("Clone", (nodes[NODE],), {"hidden": SimpleNamespace(unique_id="21")})
        controlnet, losses = train(nodes, env, "cn_distill", node=node)
        reports = SimpleNamespace(texts=list(stubs.STATE.texts), progress=list(stubs.STATE.progress))
    return SimpleNamespace(controlnet=controlnet, losses=losses, before=before, reports=reports)


# --------------------------------------------------------------------------------------------------
# Precompute with control maps


def test_precompute_caches_the_hed_scribble_latents(pack, nodes, env):
    """The control latents are the core HED scribble (thickness drawn per image from a generator seeded
    0, in item order) at the image's bucket size, DC-AE encoded like the image; HED is released after."""
    core, trainers = pack.sana_sprint_core, pack.trainers
    cached = trainers.precompute.CachedDataset(env.cache.folder)
    assert env.cache.has_control and cached.has_control and len(cached) == 3
    hed = core.hed.load_hed(os.path.join(sys.modules["folder_paths"].models_dir, "annotators", HED_FILE_NAME))
    gen = torch.Generator().manual_seed(0)
    for i, item in enumerate(env.data.items):
        image = trainers.data.load_image(item.image, trainers.data.bucket_for(item.image, 64, True))[None]
        thickness = int(torch.randint(0, 5, (1,), generator=gen))
        scribble = core.hed.scribble_from_edges(core.hed.hed_edges(hed, image, 64), thickness)
        control = core.hed.to_control_image(scribble, image.shape[-1], image.shape[-2])
        want = core.dcae.encode(env.vae.payload, control, tiled="auto")[0]
        got = cached.get_control(i)
        assert got.shape == cached.get(i)[0].shape
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert len({float(cached.get_control(i).std()) for i in range(3)}) == 3  # one map per image
    stubs.STATE.loads.clear()
    stubs_training.TRAINING.unloads.clear()
    plain = precompute(nodes, env.data, env.te, env.vae)  # control_maps left out: no HED, no control latents
    assert not plain.has_control and not trainers.precompute.CachedDataset(plain.folder).has_control
    assert [p for p, _ in stubs.STATE.loads] == [env.te.patcher, env.vae.patcher]
    stubs.STATE.loads.clear()
    stubs_training.TRAINING.unloads.clear()
    precompute(nodes, env.data, env.te, env.vae, **HED)
    hed_patcher = pack.nodes.controlnet.hed_module(HED_FILE_NAME).patcher
    assert [p for p, _ in stubs.STATE.loads] == [env.te.patcher, hed_patcher, env.vae.patcher]
    assert stubs_training.TRAINING.unloads == [env.te.patcher, env.vae.patcher, hed_patcher]


def test_precompute_control_input_errors(nodes, env):
    node = nodes["SanaSprintPrecompute"]
    with pytest.raises(ValueError, match="thickness_min 5 is larger than thickness_max 2"):
        precompute(nodes, env.data, env.te, env.vae, **{**HED, "thickness_min": 5, "thickness_max": 2})
    missing = node.validate_inputs("hed", "nope.pth")
    assert "HED annotator 'nope.pth' not found in ComfyUI's 'annotators' folder" in missing
    assert "control_maps must be one of ('none', 'hed'), got 'depth'" == node.validate_inputs("depth", HED_FILE_NAME)
    assert node.validate_inputs("none", "nope.pth") is True and node.validate_inputs("hed", HED_FILE_NAME) is True
    with pytest.raises(FileNotFoundError, match="HED annotator 'nope.pth' not found"):
        precompute(nodes, env.data, env.te, env.vae, **{**HED, "hed_model": "nope.pth"})


# --------------------------------------------------------------------------------------------------
# SanaSprintDistillControlNet


def test_distill_mode_reports_progress_and_leaves_the_model_alone(distilled, env):
    texts = [t for t, node_id in distilled.reports.texts if node_id == "21"]
    assert texts[0].startswith("step 1/2 (G)  loss_scm ") and " loss_adv " in texts[0]
    assert texts[1].startswith("step 2/2 (D)  loss_d ")
    assert [(v, t) for v, t, _ in distilled.reports.progress] == [(1, 2), (2, 2)]
    fmt, image, _ = distilled.reports.progress[0][2]  # a latent preview with every update (preview_every=1)
    assert fmt == "JPEG" and image.size == (2, 2)
    losses = distilled.losses
    assert losses["phase"] == ["G", "D"] and losses["loss_d"][0] is None and "loss_denoise" not in losses
    assert losses["loss"] == [pytest.approx(losses["loss_scm"][0] + 0.5 * losses["loss_adv"][0])]
    after = weights(env.sprint)
    assert after.keys() == distilled.before.keys() and not env.sprint.patches
    assert all(torch.equal(v, distilled.before[k]) for k, v in after.items())
    run_dir = Path(sys.modules["folder_paths"].get_output_directory()) / "sana_sprint_training" / "cn_distill"
    assert json.loads((run_dir / "checkpoints" / "latest.json").read_text())["step"] == 2
    config = json.loads((run_dir / "config.json").read_text())["controlnet"]
    assert config["mode"] == "distill" and config["teacher_controlnet"].endswith(COMFY_CONTROLNET_NAME)


def test_distilled_controlnet_starts_from_the_teacher_and_steers_the_sampler(pack, nodes, env, distilled):
    managed = distilled.controlnet
    net, teacher = managed.payload, env.teacher_cn.payload
    assert isinstance(net, pack.sana_sprint_core.controlnet.SanaControlNet) and managed.kind == "sana_controlnet"
    assert net.config == teacher.config and net.dtype == torch.float32  # init auto: a copy of the teacher's
    assert type(net.input_block) is type(env.sprint.model.diffusion_model.proj_out)  # the MODEL's layer classes
    moved = [k for k, v in net.state_dict().items() if not torch.equal(v, teacher.state_dict()[k])]
    assert "input_block.weight" in moved and "controlnet_blocks.1.weight" in moved
    assert not any(p.requires_grad for p in net.parameters())
    meta = managed.patcher.model_options["sana_sprint_training"]
    assert meta["sana_sprint.kind"] == "controlnet" and meta["sana_sprint.steps"] == "2"
    assert len(meta["sana_sprint.base_model_sha256"]) == 64
    steered, plain = sample(nodes, env, managed), sample(nodes, env, managed, strength=0.0)
    assert torch.isfinite(steered).all() and (steered - plain).abs().max() > 1e-3
    assert (steered - sample(nodes, env, env.teacher_cn)).abs().max() > 1e-5  # not the teacher's ControlNet


def test_train_mode_starts_from_the_backbone_with_the_denoising_loss(pack, nodes, env):
    controlnet, losses = train(nodes, env, "cn_train", mode="train", teacher_controlnet="none", preview_every=0)
    assert losses["phase"] == ["G", "G"] and "loss_scm" not in losses
    assert losses["loss"] == losses["loss_denoise"] and all(v > 0 for v in losses["loss"])
    net = controlnet.payload
    assert (net.config.num_blocks, net.config.wiring, net.config.dit.qk_norm) == (2, "nvlabs", True)  # Sprint blocks
    assert net.controlnet_blocks[1].weight.abs().max() > 0  # left the zero init
    graph = run(nodes["SanaSprintLossGraph"], loss=losses)[0]
    assert graph.shape == (1, 250, 900, 3)  # one panel: the denoising loss


def test_teacher_model_replaces_the_base_in_the_file(nodes, env, distilled):
    teacher = run(nodes["SanaSprintDiTLoader"], model_name=COMFY_TEACHER_NAME, weight_dtype="fp32")[0]
    before = weights(teacher)
    _, losses = train(nodes, env, "cn_teacher_model", teacher_model=teacher, preview_every=0)
    for key, i in (("loss_adv", 0), ("loss_d", 1)):  # the heads read another teacher's features
        assert abs(losses[key][i] - distilled.losses[key][i]) > 1e-3, key
    assert all(torch.equal(v, before[k]) for k, v in weights(teacher).items())
    with pytest.raises(ValueError, match="teacher_model has a guidance \\(CFG\\) embedder"):
        train(nodes, env, "x", teacher_model=env.sprint)


def test_interrupt_leaves_a_checkpoint_that_resumes_exactly(nodes, env):
    straight = train(nodes, env, "cn_straight", steps=4, preview_every=0)

    def interrupt_at_two(value, total):
        if value == 2:
            stubs.STATE.interrupt = True

    stubs.STATE.on_progress = interrupt_at_two
    with pytest.raises(stubs.InterruptProcessingException):
        train(nodes, env, "cn_chunked", steps=4, preview_every=0)
    stubs.STATE.on_progress = None
    run_dir = Path(sys.modules["folder_paths"].get_output_directory()) / "sana_sprint_training" / "cn_chunked"
    assert json.loads((run_dir / "checkpoints" / "latest.json").read_text())["step"] == 2
    resumed = train(nodes, env, "cn_chunked", steps=4, preview_every=0, resume=True)
    assert resumed[1] == straight[1]  # every loss of iterations 0..3
    a, b = state(straight[0].payload), state(resumed[0].payload)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_input_errors(nodes, env):
    flow = run(nodes["SanaSprintDiTLoader"], model_name=COMFY_TEACHER_NAME, weight_dtype="fp32")[0]
    with pytest.raises(ValueError, match="model has no guidance \\(CFG\\) embedder, so it is not a distilled"):
        train(nodes, env, "x", model=flow)
    plain = SimpleNamespace(**{**vars(env.cache), "has_control": False})
    with pytest.raises(ValueError, match="the cache holds no control maps; set control_maps to 'hed'"):
        train(nodes, env, "x", cache=plain)
    with pytest.raises(ValueError, match="teacher_controlnet is 'none', but mode 'distill' needs the Sana ControlNet"):
        train(nodes, env, "x", teacher_controlnet="none")
    with pytest.raises(ValueError, match="init 'teacher' starts from a copy of it"):
        train(nodes, env, "x", mode="train", teacher_controlnet="none", init="teacher")
    with pytest.raises(ValueError, match="scm_weight and ladd_weight are both 0"):
        train(nodes, env, "x", scm_weight=0.0, ladd_weight=0.0)
    with pytest.raises(ValueError, match="output_name '../x' must be a plain folder name"):
        train(nodes, env, "../x")
    with pytest.raises(FileNotFoundError, match="Sana ControlNet 'nope.pth' not found in ComfyUI's 'controlnet'"):
        train(nodes, env, "x", teacher_controlnet="nope.pth")
    half = run(nodes["SanaSprintDiTLoader"], model_name=COMFY_DIT_NAME, weight_dtype="fp16")[0]
    with pytest.raises(ValueError, match="the model's weights are torch.float16; load it with weight_dtype bf16"):
        train(nodes, env, "x", model=half)
    other = SimpleNamespace(**{**vars(env.cache), "latent_channels": 16})
    with pytest.raises(ValueError, match="16-channel latents .* but the model expects 32 and 64"):
        train(nodes, env, "x", cache=other)


def test_validate_inputs(nodes):
    node = nodes[NODE]
    assert node.validate_inputs("distill", COMFY_CONTROLNET_NAME, "auto", "run") is True
    assert node.validate_inputs("train", "none", "backbone", "run") is True
    assert node.validate_inputs("train", "nope.pth", "backbone", "run") is True  # the file is not used
    assert "Sana ControlNet 'nope.pth' not found" in node.validate_inputs("distill", "nope.pth", "auto", "run")
    assert "mode 'distill' needs the Sana ControlNet" in node.validate_inputs("distill", "none", "auto", "run")
    assert node.validate_inputs("sketch", "none", "auto", "run") == ("mode must be one of ('distill', 'train'), "
                                                                      "got 'sketch'")
    assert "init must be one of" in node.validate_inputs("train", "none", "zero", "run")
    assert "plain folder name" in node.validate_inputs("train", "none", "auto", "a/b")
    assert node.validate_inputs(None, None, None, None) is True  # linked inputs: checked when it runs


# --------------------------------------------------------------------------------------------------
# Save ControlNet, and the shipped workflow


def test_saved_controlnet_loads_back_through_the_loader(pack, nodes, env, distilled, models_dir):
    save = nodes["SanaSprintSaveControlNet"]
    first = run(save, controlnet=distilled.controlnet, filename_prefix="trained/cn", destination="controlnet",
                weight_dtype="fp32")
    second = run(save, controlnet=distilled.controlnet, filename_prefix="trained/cn", destination="controlnet",
                 weight_dtype="bf16")
    path = Path(first[0])
    assert path == models_dir / "controlnet" / "trained" / "cn_00001.safetensors"
    assert Path(second[0]).name == "cn_00002.safetensors" and first.ui.as_dict()["text"] == (f"saved {path}",)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["sana_sprint.kind"] == "controlnet" and meta["sana_sprint.steps"] == "2"
    loader = nodes["SanaSprintControlNetLoader"]
    assert loader.validate_inputs("trained/cn_00001.safetensors") is True
    loaded = run(loader, controlnet_name="trained/cn_00001.safetensors", weight_dtype="fp32", wiring="auto")[0]
    want = state(distilled.controlnet.payload)
    got = state(loaded.payload)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    torch.testing.assert_close(sample(nodes, env, loaded), sample(nodes, env, distilled.controlnet), rtol=0, atol=0)
    with safe_open(second[0], framework="pt") as f:
        assert f.get_tensor("input_block.weight").dtype == torch.bfloat16
    converted = run(save, controlnet=env.teacher_cn, filename_prefix="nvlabs_copy", destination="output",
                    weight_dtype="fp32")[0]  # a loaded NVlabs ControlNet saves too, without training metadata
    assert Path(converted).parent == Path(sys.modules["folder_paths"].get_output_directory())
    with safe_open(converted, framework="pt") as f:
        assert f.metadata()["sana_sprint.kind"] == "controlnet" and "sana_sprint.steps" not in f.metadata()


def test_controlnet_training_workflow_runs_end_to_end(nodes, env):
    """The shipped API workflow with CI-sized values: 64 px images, 3 iterations, 128 px HED maps."""
    prompt = json.loads(WORKFLOW.read_text())
    kinds = {v["class_type"]: k for k, v in prompt.items()}
    prompt[kinds["SanaSprintDiTLoader"]]["inputs"]["weight_dtype"] = "fp32"
    prompt[kinds["SanaSprintDataset"]]["inputs"].update(folder="cn_train_set", resolution=64)
    prompt[kinds[NODE]]["inputs"].update(steps=3, preview_every=1, save_every=1, output_name="cn_workflow")
    prompt[kinds["SanaSprintEmptyLatent"]]["inputs"].update(width=64, height=64, aspect_ratio="custom")
    prompt[kinds["SanaSprintControlNetApply"]]["inputs"].update(width=64, height=64)
    prompt[kinds["SanaSprintHEDPreprocessor"]]["inputs"]["detect_resolution"] = 128
    load_image = kinds.pop("LoadImage")
    prompt[load_image] = {"class_type": "Const", "inputs": {}}
    saved, outputs = _execute(prompt, {**nodes, "Const": _constant(env.image)})
    (image,) = saved.values()
    assert image.shape == (1, 64, 64, 3) and image.std() > 0.01
    path = Path(outputs[kinds["SanaSprintSaveControlNet"]][0])
    assert path.name == "sana_sprint_controlnet_00001.safetensors" and path.parent.name == "controlnet"
    assert outputs[kinds["SanaSprintLossGraph"]][0].shape == (1, 750, 900, 3)
    assert [v for v, t, p in stubs.STATE.progress if t == 3 and p is not None] == [1, 2, 3]


def _constant(image: torch.Tensor) -> type:
    """A node double standing in for LoadImage: (image, mask)."""
    class Const:
        @classmethod
        def execute(cls):
            return SimpleNamespace(args=(image, torch.zeros(image.shape[:3])))
    return Const
