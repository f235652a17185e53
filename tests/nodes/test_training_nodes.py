"""Training nodes on tiny models, run as ComfyUI runs them (inference mode, stubbed comfy modules):
dataset messages, precompute releasing the encoders, the training workflow end to end, an interrupt
that leaves a checkpoint which resumes exactly, the saved LoRA through our loader, saving the student."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from sana_sprint_core.checkpoint_io import read_state_dict_with_info
from sana_sprint_core.constants import COMFY_DIT_NAME, COMFY_TEACHER_NAME, COMFY_TEXT_ENCODER_NAME, COMFY_VAE_NAME
from tests.fixtures.comfy_training import write_training_images
from tests.fixtures.distill import one_thread  # noqa: F401 (fixture)
from tests.nodes import stubs, stubs_training
from tests.nodes.prompt_runner import run_prompt

pytestmark = pytest.mark.usefixtures("one_thread")
WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "api" / "sana_sprint_train_lora.json"
PROMPT = "a red square"
# Distill inputs of a 2-iteration run (one G, one D) on the tiny models.
FAST = dict(mode="lora", rank=4, alpha=4.0, steps=2, learning_rate=1e-3, batch_size=1, scm_weight=1.0,
            ladd_weight=0.5, max_time_probability=0.5, seed=7, save_every=0, preview_every=1, resume=False)


def run(node, **inputs):
    with torch.inference_mode():  # ComfyUI's executor runs every node so
        return node.execute(**inputs)


def input_dir() -> Path:
    return Path(sys.modules["folder_paths"].get_input_directory())


@contextmanager
def single_thread():
    """One intra-op thread (see tests/fixtures/distill.py one_thread), for module-scoped fixtures."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def env(nodes, models_dir):
    with single_thread():
        return _env(nodes, models_dir)


def _env(nodes, models_dir):
    assert (models_dir / "diffusion_models" / COMFY_TEACHER_NAME).is_dir()  # tests/nodes/conftest.py wrote it
    folder = write_training_images(input_dir() / "train_set")
    teacher = run(nodes["SanaSprintDiTLoader"], model_name=COMFY_TEACHER_NAME, weight_dtype="fp32")[0]
    te = run(nodes["SanaSprintTextEncoderLoader"], text_encoder_name=COMFY_TEXT_ENCODER_NAME, weight_dtype="fp32")[0]
    vae = run(nodes["SanaSprintVAELoader"], vae_name=COMFY_VAE_NAME, weight_dtype="fp32")[0]
    data = run(nodes["SanaSprintDataset"], folder="train_set", resolution=64, buckets=True, skip_bad_files=False,
               caption_extension=".txt")[0]
    cache = run(nodes["SanaSprintPrecompute"], dataset=data, text_encoder=te, vae=vae, preview_prompt="",
                complex_human_instruction=True)[0]
    cond = run(nodes["SanaSprintTextEncode"], text_encoder=te, text=PROMPT, complex_human_instruction=True)[0]
    latent = run(nodes["SanaSprintEmptyLatent"], width=64, height=64, batch_size=1, aspect_ratio="custom")[0]
    return SimpleNamespace(folder=folder, teacher=teacher, te=te, vae=vae, data=data, cache=cache, cond=cond,
                           latent=latent)


def distill(nodes, env, output_name, **changes):
    inputs = {"model": env.teacher, "cache": env.cache, **FAST, "output_name": output_name, **changes}
    return run(nodes["SanaSprintDistill"], **inputs).args


def sample(nodes, env, model, steps=1):
    return run(nodes["SanaSprintSampler"], model=model, positive=env.cond, latent_image=env.latent, seed=3,
               steps=steps, guidance=4.5, max_timestep=1.5708, intermediate_timestep=1.3, denoise=1.0,
               timesteps="")[0]["samples"]


def weights(model) -> dict:
    return {k: v.clone() for k, v in model.model.state_dict().items()}


# --------------------------------------------------------------------------------------------------
# Dataset and precompute


def test_dataset_summary_counts_buckets_and_skipped_files(nodes, env, tmp_path):
    node = nodes["SanaSprintDataset"]
    args = dict(resolution=64, buckets=True, skip_bad_files=False, caption_extension=".txt")
    data, summary = run(node, folder="train_set", **args).args
    assert [i.name for i in data.items] == ["img0.png", "img1.png", "img2.png"]
    assert summary.startswith("3 image(s), 3 training example(s)") and "64x64: 3" in summary
    assert summary.endswith("skipped: none")
    bad = write_training_images(tmp_path / "bad")
    (bad / "img1.txt").unlink()
    (bad / "img2.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match=r"1 image\(s\) without a .txt caption: img1.png; 1 unreadable image\(s\): "
                                         r"img2.png \(.*turn on skip_bad_files"):
        run(node, folder=str(bad), **args)
    data, summary = run(node, folder=str(bad), **{**args, "skip_bad_files": True}).args
    assert [i.name for i in data.items] == ["img0.png"]
    assert "skipped 2: img1.png (no .txt caption); img2.png (unreadable: " in summary


def test_dataset_folder_errors(nodes, tmp_path):
    node = nodes["SanaSprintDataset"]
    args = dict(resolution=64, buckets=True, skip_bad_files=True, caption_extension=".txt")
    with pytest.raises(ValueError, match=r"image folder '.*no_such_folder' not found; put your images"):
        run(node, folder="no_such_folder", **args)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"empty holds no images \(.png, .jpg"):
        run(node, folder=str(tmp_path / "empty"), **args)
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    Image.new("RGB", (32, 32)).save(only_bad / "x.png")
    with pytest.raises(ValueError, match=r"has no usable image: 1 image\(s\) without a .txt caption: x.png"):
        run(node, folder=str(only_bad), **args)
    with pytest.raises(ValueError, match="folder is empty"):
        run(node, folder="  ", **args)


def test_dataset_fingerprint_follows_the_files(nodes, env, tmp_path):
    folder = write_training_images(tmp_path / "set")
    before = nodes["SanaSprintDataset"].fingerprint_inputs(folder=str(folder))
    assert nodes["SanaSprintDataset"].fingerprint_inputs(folder=str(folder)) == before
    (folder / "img0.txt").write_text("a new caption, a different length")
    assert nodes["SanaSprintDataset"].fingerprint_inputs(folder=str(folder)) != before


def test_precompute_caches_everything_and_releases_the_encoders(pack, nodes, env):
    cached = pack.trainers.precompute.CachedDataset(env.cache.folder)
    assert len(cached) == 3 and (env.cache.latent_channels, env.cache.text_channels) == (32, 64)
    latent, text, mask = cached.get(0)
    assert latent.shape == (32, 2, 2) and text.shape == (300, 64) and mask.dtype == torch.int64
    prompts, _, _ = cached.validation_prompts()
    assert prompts == ["a red square on grey"]  # empty preview_prompt: the first caption
    temp = Path(sys.modules["folder_paths"].get_temp_directory())
    assert env.cache.folder.parent == temp / "sana_sprint_training"
    stubs.STATE.loads.clear()
    data = run(nodes["SanaSprintDataset"], folder="train_set", resolution=64, buckets=True, skip_bad_files=False,
               caption_extension=".txt")[0]
    run(nodes["SanaSprintPrecompute"], dataset=data, text_encoder=env.te, vae=env.vae, preview_prompt="a fox",
        complex_human_instruction=True)
    assert [p for p, _ in stubs.STATE.loads] == [env.te.patcher, env.vae.patcher]
    assert stubs_training.TRAINING.unloads == [env.te.patcher, env.vae.patcher]  # each released after its phase


# --------------------------------------------------------------------------------------------------
# Distill


def test_distill_trains_reports_progress_and_leaves_the_teacher_alone(nodes, env):
    before = weights(env.teacher)
    node = type("Clone", (nodes["SanaSprintDistill"],), {"hidden": SimpleNamespace(unique_id="12")})  # as executed
    student, lora, losses = run(node, model=env.teacher, cache=env.cache, **{**FAST, "output_name": "progress"}).args
    texts = [t for t, node_id in stubs.STATE.texts if node_id == "12"]
    assert texts[0].startswith("step 1/2 (G)  loss_scm ") and " loss_adv " in texts[0]
    assert texts[1].startswith("step 2/2 (D)  loss_d ")
    assert [(v, t) for v, t, _ in stubs.STATE.progress] == [(1, 2), (2, 2)]
    fmt, image, _ = stubs.STATE.progress[0][2]  # a latent preview with every update (preview_every=1)
    assert fmt == "JPEG" and image.size == (2, 2)
    assert losses["phase"] == ["G", "D"] and losses["step"] == [0, 1] and losses["loss_d"][0] is None
    assert losses["loss"] == [pytest.approx(losses["loss_scm"][0] + 0.5 * losses["loss_adv"][0])]
    assert set(weights(env.teacher)) == set(before)
    assert all(torch.equal(v, before[k]) for k, v in weights(env.teacher).items())
    assert not env.teacher.patches and student is not env.teacher
    up = lora.tensors["diffusion_model.transformer_blocks.0.attn1.to_q.lora_up.weight"]
    assert up.shape == (64, 4) and up.abs().max() > 0
    assert lora.metadata["sana_sprint.steps"] == "2" and lora.metadata["sana_sprint.lora_rank"] == "4"
    run_dir = Path(sys.modules["folder_paths"].get_output_directory()) / "sana_sprint_training" / "progress"
    assert json.loads((run_dir / "checkpoints" / "latest.json").read_text())["step"] == 2
    assert (run_dir / "loss.csv").is_file() and (run_dir / "config.json").is_file()


def test_interrupt_leaves_a_checkpoint_that_resumes_exactly(nodes, env):
    straight = distill(nodes, env, "straight", steps=4, preview_every=0)

    def interrupt_at_two(value, total):
        if value == 2:
            stubs.STATE.interrupt = True

    stubs.STATE.on_progress = interrupt_at_two
    with pytest.raises(stubs.InterruptProcessingException):
        distill(nodes, env, "chunked", steps=4, preview_every=0)
    stubs.STATE.on_progress = None
    assert not stubs.STATE.interrupt  # raised through ComfyUI's throw_exception_if_processing_interrupted
    run_dir = Path(sys.modules["folder_paths"].get_output_directory()) / "sana_sprint_training" / "chunked"
    assert json.loads((run_dir / "checkpoints" / "latest.json").read_text())["step"] == 2
    with pytest.raises(FileExistsError, match=r"already holds a run \(checkpoints, loss.csv\).* Continue it with resume on"):
        distill(nodes, env, "chunked", steps=4, preview_every=0)
    resumed = distill(nodes, env, "chunked", steps=4, preview_every=0, resume=True)
    assert resumed[2] == straight[2]  # every loss of iterations 0..3
    assert resumed[1].tensors.keys() == straight[1].tensors.keys()
    for key, value in straight[1].tensors.items():
        assert torch.equal(resumed[1].tensors[key], value), key


def test_distill_input_errors(nodes, env):
    with pytest.raises(ValueError, match="scm_weight and ladd_weight are both 0"):
        distill(nodes, env, "x", scm_weight=0.0, ladd_weight=0.0)
    assert "plain folder name" in nodes["SanaSprintDistill"].validate_inputs("../escape")
    assert nodes["SanaSprintDistill"].validate_inputs("my_run-2.v1") is True
    sprint = run(nodes["SanaSprintDiTLoader"], model_name=COMFY_DIT_NAME, weight_dtype="fp32")[0]
    with pytest.raises(ValueError, match="already a distilled Sprint model"):
        run(nodes["SanaSprintDistill"], model=sprint, cache=env.cache, **{**FAST, "output_name": "sprint"})
    with pytest.raises(ValueError, match="output_name '../x' must be a plain folder name"):
        distill(nodes, env, "../x")
    half = run(nodes["SanaSprintDiTLoader"], model_name=COMFY_TEACHER_NAME, weight_dtype="fp16")[0]
    with pytest.raises(ValueError, match="teacher's weights are torch.float16; load it with weight_dtype bf16 or fp32"):
        distill(nodes, env, "half", model=half)
    other = SimpleNamespace(**{**vars(env.cache), "text_channels": 2304})
    with pytest.raises(ValueError, match="2304-channel text embeddings, but the teacher expects 32 and 64"):
        distill(nodes, env, "x", cache=other)


def test_full_mode_gives_a_student_model_and_no_lora(nodes, env):
    student, lora, _ = distill(nodes, env, "full", mode="full", preview_every=0)
    assert lora is None
    dit = student.model.diffusion_model
    assert dit.config.guidance_embeds and dit is not env.teacher.model.diffusion_model
    assert sample(nodes, env, student).std() > 0
    with pytest.raises(ValueError, match="ran in full mode"):
        run(nodes["SanaSprintSaveLoRA"], lora=None, filename_prefix="x", destination="loras", weight_dtype="fp32")


# --------------------------------------------------------------------------------------------------
# Outputs: LoRA file, loader, student file, loss graph


@pytest.fixture(scope="module")
def trained(nodes, env):
    with single_thread():
        student, lora, losses = distill(nodes, env, "outputs")
    return SimpleNamespace(student=student, lora=lora, losses=losses)


def test_saved_lora_loads_through_our_loader_and_changes_the_output(nodes, env, trained, models_dir):
    save = nodes["SanaSprintSaveLoRA"]
    first = run(save, lora=trained.lora, filename_prefix="trained/sprint", destination="loras", weight_dtype="fp32")
    second = run(save, lora=trained.lora, filename_prefix="trained/sprint", destination="loras", weight_dtype="bf16")
    assert Path(first[0]).name == "sprint_00001.safetensors" and Path(second[0]).name == "sprint_00002.safetensors"
    assert first.ui.as_dict()["text"] == (f"saved {first[0]}",)
    tensors, info = read_state_dict_with_info(first[0])
    assert info.metadata["sana_sprint.lora_alpha"] == "4.0" and len(info.metadata["sana_sprint.base_model_sha256"]) == 64
    loader = nodes["SanaSprintLoraLoader"]
    assert loader.validate_inputs("trained/sprint_00001.safetensors") is True
    assert "not found in ComfyUI's 'loras' folder" in loader.validate_inputs("nope.safetensors")
    assert "points outside the 'loras' folder" in loader.validate_inputs("../x.safetensors")
    with pytest.raises(FileNotFoundError, match="'nope.safetensors' not found in ComfyUI's 'loras' folder"):
        run(loader, model=env.teacher, lora_name="nope.safetensors", strength=1.0)
    before = weights(env.teacher)
    full = run(loader, model=env.teacher, lora_name="trained/sprint_00001.safetensors", strength=1.0)[0]
    none = run(loader, model=env.teacher, lora_name="trained/sprint_00001.safetensors", strength=0.0)[0]
    assert all(torch.equal(v, before[k]) for k, v in weights(env.teacher).items()) and not env.teacher.patches
    with_lora, without = sample(nodes, env, full), sample(nodes, env, none)
    assert (with_lora - without).abs().max() > 1e-3  # the LoRA changes the image
    torch.testing.assert_close(with_lora, sample(nodes, env, trained.student), rtol=1e-5, atol=1e-5)
    assert full.model_options["sana_sprint_training"]["sana_sprint.steps"] == "2"


def test_lora_saved_for_diffusers_loads_back_to_the_same_student(nodes, env, trained, models_dir):
    """file_format diffusers: PEFT keys (alpha in lora_adapter_metadata, the guidance embedder as an exact
    full-rank pair with lora_bias); SanaSprintLoraLoader reads it back to the trained student's samples."""
    path = run(nodes["SanaSprintSaveLoRA"], lora=trained.lora, filename_prefix="trained/peft", destination="loras",
               weight_dtype="fp32", file_format="diffusers")[0]
    tensors, info = read_state_dict_with_info(path)
    assert all(k.startswith("transformer.") and ".lora_" in k for k in tensors)
    assert json.loads(info.metadata["lora_adapter_metadata"])["transformer.lora_bias"] is True
    assert info.metadata["sana_sprint.file_format"] == "diffusers" and "sana_sprint.steps" in info.metadata
    loaded = run(nodes["SanaSprintLoraLoader"], model=env.teacher, lora_name="trained/peft_00001.safetensors",
                 strength=1.0)[0]
    torch.testing.assert_close(sample(nodes, env, loaded), sample(nodes, env, trained.student), rtol=1e-5, atol=1e-5)


def test_lora_loader_refuses_keys_that_match_nothing_and_a_sprint_base(nodes, env, trained, models_dir):
    loras = Path(sys.modules["folder_paths"].get_folder_paths("loras")[0])
    extra = {**trained.lora.tensors, "diffusion_model.no_such_layer.lora_up.weight": torch.zeros(2, 2),
             "diffusion_model.no_such_layer.lora_down.weight": torch.zeros(2, 2)}
    type(trained.lora)(extra, trained.lora.metadata).save(loras / "broken.safetensors")
    with pytest.raises(ValueError, match=r"\(comfy format\): 1 LoRA module\(s\) name no weight of this SANA model: "
                                         r"no_such_layer; nothing was applied"):
        run(nodes["SanaSprintLoraLoader"], model=env.teacher, lora_name="broken.safetensors", strength=1.0)
    trained.lora.save(loras / "good.safetensors")
    sprint = run(nodes["SanaSprintDiTLoader"], model_name=COMFY_DIT_NAME, weight_dtype="fp32")[0]
    with pytest.raises(ValueError, match="distilled from a flow-matching teacher"):
        run(nodes["SanaSprintLoraLoader"], model=sprint, lora_name="good.safetensors", strength=1.0)


def test_saved_student_loads_back_with_the_same_output(nodes, env, trained, models_dir):
    path = run(nodes["SanaSprintSaveStudent"], model=trained.student, filename_prefix="student",
               destination="diffusion_models", weight_dtype="fp32")[0]
    assert Path(path).parent == models_dir / "diffusion_models" and Path(path).name == "student_00001.safetensors"
    meta = read_state_dict_with_info(path)[1].metadata
    assert meta["sana_sprint.kind"] == "student" and meta["sana_sprint.steps"] == "2"
    loaded = run(nodes["SanaSprintDiTLoader"], model_name=Path(path).name, weight_dtype="fp32")[0]
    torch.testing.assert_close(sample(nodes, env, loaded, 2), sample(nodes, env, trained.student, 2),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="must be a relative name inside the target folder"):
        run(nodes["SanaSprintSaveStudent"], model=trained.student, filename_prefix="../x",
            destination="output", weight_dtype="fp32")


def test_loss_graph_draws_the_loss_map(nodes, trained):
    image = run(nodes["SanaSprintLossGraph"], loss=trained.losses)
    pixels = image[0]
    assert pixels.shape == (1, 750, 900, 3)  # three panels: sCM, adversarial, discriminator and 0 <= float(pixels.min()) < float(pixels.max()) <= 1
    assert stubs.STATE.previews[-1] is pixels  # shown on the node
    with pytest.raises(ValueError, match="needs the loss map of SanaSprintDistill"):
        run(nodes["SanaSprintLossGraph"], loss={"loss": [1.0, 0.5]})


# --------------------------------------------------------------------------------------------------
# The shipped workflow, end to end through the nodes


def _execute(prompt: dict, nodes: dict) -> tuple[dict, dict]:
    """Runs the API prompt in dependency order; SaveImage is a double that keeps the images by prefix."""
    saved = {}

    def run_node(key, class_type, inputs):
        if class_type == "SaveImage":
            saved[inputs["filename_prefix"]] = inputs["images"]
            return ()
        return run(nodes[class_type], **inputs).args

    return saved, run_prompt(prompt, run_node)


def test_training_workflow_runs_end_to_end(nodes, env):
    """The shipped API workflow with CI-sized values: 64 px images, 3 iterations, previews every step."""
    prompt = json.loads(WORKFLOW.read_text())
    kinds = {v["class_type"]: k for k, v in prompt.items()}
    prompt[kinds["SanaSprintDiTLoader"]]["inputs"]["weight_dtype"] = "fp32"
    prompt[kinds["SanaSprintDataset"]]["inputs"].update(folder="train_set", resolution=64)
    prompt[kinds["SanaSprintDistill"]]["inputs"].update(steps=3, rank=4, preview_every=1, save_every=1,
                                                        output_name="workflow")
    prompt[kinds["SanaSprintEmptyLatent"]]["inputs"].update(width=64, height=64, aspect_ratio="custom")
    saved, outputs = _execute(prompt, nodes)
    assert sorted(saved) == ["SanaSprint_trained_1step", "SanaSprint_trained_2step"]
    one, two = saved["SanaSprint_trained_1step"], saved["SanaSprint_trained_2step"]
    assert one.shape == two.shape == (1, 64, 64, 3) and not torch.equal(one, two)
    lora_file = Path(outputs[kinds["SanaSprintSaveLoRA"]][0])
    assert lora_file.name == "sana_sprint_lora_00001.safetensors" and lora_file.parent.name == "loras"
    assert outputs[kinds["SanaSprintLossGraph"]][0].shape[-1] == 3
    distill_steps = [v for v, t, p in stubs.STATE.progress if t == 3 and p is not None]
    assert distill_steps == [1, 2, 3]  # Distill's progress with a preview per iteration


def test_save_prefers_the_folder_named_like_its_kind(pack, tmp_path, monkeypatch):
    """ComfyUI lists models/unet before models/diffusion_models; a student goes to the latter."""
    fp = sys.modules["folder_paths"]
    roots = [str(tmp_path / "unet"), str(tmp_path / "diffusion_models")]
    monkeypatch.setitem(fp.folder_names_and_paths, "diffusion_models", (roots, set()))
    outputs = pack.nodes.train_outputs
    assert outputs._destination("diffusion_models", "diffusion_models") == roots[1]
    assert outputs._destination("diffusion_models", "output") == fp.get_output_directory()
    monkeypatch.setitem(fp.folder_names_and_paths, "diffusion_models", (roots[:1], set()))
    assert outputs._destination("diffusion_models", "diffusion_models") == roots[0]
