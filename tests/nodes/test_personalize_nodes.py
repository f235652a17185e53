"""SanaSprintPersonalize inside ComfyUI on tiny models (stubbed comfy modules, inference mode as ComfyUI
runs nodes): both stages with progress and 1- + 2-step previews, the Sprint MODEL and teacher left alone,
the Sprint LoRA saved and loaded back on the Sprint model by SanaSprintLoraLoader, prior preservation
from a CONDITIONING, interrupt + exact resume across the stages, input errors."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sana_sprint_core.constants import COMFY_DIT_NAME, COMFY_TEACHER_NAME, COMFY_TEXT_ENCODER_NAME, COMFY_VAE_NAME
from tests.fixtures.comfy_training import write_training_images
from tests.fixtures.distill import one_thread  # noqa: F401 (fixture)
from tests.nodes import stubs
from tests.nodes.test_training_nodes import input_dir, run, single_thread, weights

pytestmark = pytest.mark.usefixtures("one_thread")
NODE = "SanaSprintPersonalize"
# 2 teacher-LoRA updates, then 2 Sprint iterations (one G, one D)
FAST = dict(rank=4, teacher_steps=2, teacher_learning_rate=1e-3, teacher_rank=4, steps=2, learning_rate=1e-3,
            batch_size=1, scm_weight=1.0, ladd_weight=0.5, max_time_probability=0.5, seed=7, save_every=0,
            preview_every=1, resume=False)


@pytest.fixture(scope="module")
def env(nodes, models_dir):
    with single_thread():
        write_training_images(input_dir() / "personal_set")
        sprint = run(nodes["SanaSprintDiTLoader"], model_name=COMFY_DIT_NAME, weight_dtype="fp32")[0]
        teacher = run(nodes["SanaSprintDiTLoader"], model_name=COMFY_TEACHER_NAME, weight_dtype="fp32")[0]
        te = run(nodes["SanaSprintTextEncoderLoader"], text_encoder_name=COMFY_TEXT_ENCODER_NAME,
                 weight_dtype="fp32")[0]
        vae = run(nodes["SanaSprintVAELoader"], vae_name=COMFY_VAE_NAME, weight_dtype="fp32")[0]
        data = run(nodes["SanaSprintDataset"], folder="personal_set", resolution=64, buckets=True,
                   skip_bad_files=False, caption_extension=".txt")[0]
        cache = run(nodes["SanaSprintPrecompute"], dataset=data, text_encoder=te, vae=vae, preview_prompt="a house",
                    complex_human_instruction=True)[0]
        prior = run(nodes["SanaSprintTextEncode"], text_encoder=te, text="a photo of a house",
                    complex_human_instruction=True)[0]
    return SimpleNamespace(sprint=sprint, teacher=teacher, cache=cache, prior=prior)


def personalize(nodes, env, output_name, node=None, **changes):
    inputs = {"teacher": env.teacher, "sprint": env.sprint, "cache": env.cache, **FAST, "output_name": output_name,
              **changes}
    return run(node or nodes[NODE], **inputs).args


def run_dir(name: str) -> Path:
    return Path(sys.modules["folder_paths"].get_output_directory()) / "sana_sprint_training" / name


@pytest.fixture(scope="module")
def trained(nodes, env):
    with single_thread():
        stubs.reset_state()
        before = weights(env.sprint), weights(env.teacher)
        node = type("Clone", (nodes[NODE],), {"hidden": SimpleNamespace(unique_id="31")})
        outputs = personalize(nodes, env, "personal", node=node)
        reports = SimpleNamespace(texts=list(stubs.STATE.texts), progress=list(stubs.STATE.progress))
    return SimpleNamespace(outputs=outputs, before=before, reports=reports)


def test_both_stages_report_progress_and_previews(trained):
    texts = [t for t, node_id in trained.reports.texts if node_id == "31"]
    assert texts[0].startswith("teacher LoRA step 1/2  loss_fm ") and texts[1].startswith("teacher LoRA step 2/2")
    assert texts[2].startswith("step 1/2 (G)  loss_scm ") and texts[3].startswith("step 2/2 (D)  loss_d ")
    assert [(v, t) for v, t, _ in trained.reports.progress] == [(1, 2), (2, 2), (1, 2), (2, 2)]
    previews = [p[2] for p in trained.reports.progress if p[2] is not None]
    assert len(previews) == 2  # stage 2 only, every iteration (preview_every=1)
    fmt, image, _ = previews[0]
    assert fmt == "JPEG" and image.size == (4, 2)  # 1 step | 2 steps, side by side (2 x 2 latent each)


def test_the_models_are_left_alone_and_the_lora_loads_on_the_sprint_model(nodes, env, trained, pack):
    model, lora, teacher_lora, losses = trained.outputs
    for module, before in zip((env.sprint, env.teacher), trained.before):
        assert all(torch.equal(v, before[k]) for k, v in weights(module).items()) and not module.patches
    assert losses["phase"] == ["G", "D"] and losses["loss"] == [
        pytest.approx(losses["loss_scm"][0] + 0.5 * losses["loss_adv"][0])]
    assert not any(k.endswith((".diff", ".diff_b")) for k in lora.tensors)  # the Sprint embedder is not in it
    assert lora.metadata["sana_sprint.kind"] == "lora" and teacher_lora.metadata["sana_sprint.kind"] == "teacher_lora"
    assert any(v.abs().max() > 0 for k, v in lora.tensors.items() if k.endswith("lora_up.weight"))
    saved = run(nodes["SanaSprintSaveLoRA"], lora=lora, filename_prefix="personal", destination="loras",
                weight_dtype="fp32").args[0]
    loaded = run(nodes["SanaSprintLoraLoader"], model=env.sprint, lora_name=Path(saved).name, strength=1.0)[0]
    latent = run(nodes["SanaSprintEmptyLatent"], width=64, height=64, batch_size=1, aspect_ratio="custom")[0]

    def sample(m):
        out = run(nodes["SanaSprintSampler"], model=m, positive=env.prior, latent_image=latent, seed=3, steps=1,
                  guidance=4.5, max_timestep=1.5708, intermediate_timestep=1.3, denoise=1.0, timesteps="")
        return out[0]["samples"]

    from_node, from_file, plain = sample(model), sample(loaded), sample(env.sprint)
    torch.testing.assert_close(from_file, from_node, rtol=1e-5, atol=1e-5)
    assert (from_node - plain).abs().max() > 1e-4  # the LoRA changes the Sprint model's samples
    assert (run_dir("personal") / "teacher_lora" / "teacher_lora.safetensors").is_file()


def test_prior_conditioning_is_generated_and_trained_on(nodes, env):
    personalize(nodes, env, "personal_prior", prior=env.prior, prior_images=2, prior_weight=0.5, preview_every=0)
    folder = run_dir("personal_prior") / "teacher_lora"
    from sana_sprint_core.checkpoint_io import read_state_dict

    prior = read_state_dict(folder / "prior.safetensors")
    assert prior["latents"].shape[0] == 2 and torch.isfinite(prior["latents"]).all()
    rows = (folder / "loss.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert all(float(r.split(",")[header.index("loss_prior")]) > 0 for r in rows[1:])


def test_interrupt_in_stage_one_then_resume_equals_a_straight_run(nodes, env):
    straight = personalize(nodes, env, "p_straight", steps=4, teacher_steps=4, preview_every=0)

    def interrupt_at_two(value, total):
        if value == 2:
            stubs.STATE.interrupt = True

    stubs.STATE.on_progress = interrupt_at_two
    try:
        with pytest.raises(stubs.InterruptProcessingException):
            personalize(nodes, env, "p_chunked", steps=4, teacher_steps=4, preview_every=0)
    finally:
        stubs.STATE.on_progress = None
    assert not (run_dir("p_chunked") / "teacher_lora" / "teacher_lora.safetensors").exists()
    with pytest.raises(FileExistsError, match="already holds a run"):
        personalize(nodes, env, "p_chunked", steps=4, teacher_steps=4, preview_every=0)
    resumed = personalize(nodes, env, "p_chunked", steps=4, teacher_steps=4, preview_every=0, resume=True)
    assert resumed[3] == straight[3]  # every stage-2 loss
    for i in (1, 2):
        a, b = straight[i].tensors, resumed[i].tensors
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_input_errors(nodes, env):
    with pytest.raises(ValueError, match="teacher has a guidance \\(CFG\\) embedder"):
        personalize(nodes, env, "x", teacher=env.sprint)
    with pytest.raises(ValueError, match="sprint has no guidance \\(CFG\\) embedder"):
        personalize(nodes, env, "x", sprint=env.teacher)
    with pytest.raises(ValueError, match="scm_weight and ladd_weight are both 0"):
        personalize(nodes, env, "x", scm_weight=0.0, ladd_weight=0.0)
    assert "output_name '../x' must be a plain folder name" in nodes[NODE].validate_inputs("../x")
    assert "prior_weight" in str(nodes[NODE].validate_inputs("x", prior_weight=float("nan")))


def test_shipped_workflow_runs_end_to_end(nodes, env):
    """The shipped API workflow with CI-sized values (64 px, 2 + 2 iterations), through every node: both
    LoRAs saved to models/loras, the loss graph drawn, the personalised model sampled at 1 and 2 steps."""
    import json

    from tests.nodes.test_training_nodes import _execute

    workflow = Path(__file__).resolve().parents[2] / "workflows" / "api" / "sana_sprint_personalize.json"
    prompt = json.loads(workflow.read_text())
    for node in prompt.values():
        if node["class_type"] == "SanaSprintDiTLoader":
            node["inputs"]["weight_dtype"] = "fp32"
    kinds = {v["class_type"]: k for k, v in prompt.items()}
    prompt[kinds["SanaSprintDataset"]]["inputs"].update(folder="personal_set", resolution=64)
    prompt[kinds["SanaSprintPersonalize"]]["inputs"].update(
        steps=2, teacher_steps=2, rank=4, teacher_rank=4, preview_every=1, save_every=1, output_name="p_workflow")
    prompt[kinds["SanaSprintEmptyLatent"]]["inputs"].update(width=64, height=64, aspect_ratio="custom")
    saved, outputs = _execute(prompt, nodes)
    one, two = saved["SanaSprint_trained_1step"], saved["SanaSprint_trained_2step"]
    assert one.shape == two.shape == (1, 64, 64, 3) and not torch.equal(one, two)
    files = sorted(Path(outputs[k][0]).name for k, v in prompt.items() if v["class_type"] == "SanaSprintSaveLoRA")
    assert files == ["sana_sprint_personal_00001.safetensors", "sana_sprint_personal_teacher_00001.safetensors"]
    assert outputs[kinds["SanaSprintLossGraph"]][0].shape[-1] == 3
