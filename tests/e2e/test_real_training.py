"""Training inside a real ComfyUI (opt-in: COMFYUI_DIR, see tests/e2e/test_real_comfyui.py).

    COMFYUI_DIR=/path/to/ComfyUI /path/to/comfy-venv/bin/python -m pytest tests/e2e -v

A server with the pack, the tiny models plus a tiny teacher, and a folder of images with captions in
its input folder runs the shipped training workflow (CI-sized values), streams progress events,
progress text and previews, is interrupted through /interrupt and resumed, and ComfyUI's own
LoraLoaderModelOnly loads the trained LoRA. The personalisation workflow trains both LoRAs and its
Sprint LoRA, saved and loaded back on the Sprint model, gives the node's own latents. The ControlNet training workflow runs too: a Sprint
ControlNet distilled from the tiny Sana HED ControlNet steers the sampler, and its saved file,
loaded back by SanaSprintControlNetLoader, gives the same latents.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load as load_safetensors

from tests.e2e.comfy_server import Client, ComfyServer, Run, new_base

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout to run")

REPO = Path(__file__).resolve().parents[2]
PACK = "ComfyUI-SanaSprint"
WORKFLOW = REPO / "workflows" / "api" / "sana_sprint_train_lora.json"
CN_WORKFLOW = REPO / "workflows" / "api" / "sana_sprint_train_controlnet.json"
PERSONAL_WORKFLOW = REPO / "workflows" / "api" / "sana_sprint_personalize.json"
TRAINING_NODES = ("SanaSprintDataset", "SanaSprintPrecompute", "SanaSprintDistill", "SanaSprintLossGraph",
                  "SanaSprintSaveLoRA", "SanaSprintSaveStudent", "SanaSprintLoraLoader",
                  "SanaSprintDistillControlNet", "SanaSprintSaveControlNet", "SanaSprintPersonalize")
DISTILL, SAVE_LORA, LOSS_GRAPH = "12", "13", "14"
SAVE_CONTROLNET = "13"  # in the ControlNet workflow (Distill and Loss Graph have the ids above)


def fp32_workflow(path: Path) -> dict:
    """A shipped API workflow with every loader at weight_dtype fp32: the tests compare latents exactly
    across runs and files, and "auto" on the CPU stores bf16 (trained in bf16 autocast)."""
    prompt = json.loads(path.read_text())
    for node in prompt.values():
        if node["class_type"].endswith("Loader") and "weight_dtype" in node["inputs"]:
            node["inputs"]["weight_dtype"] = "fp32"
    return prompt


def start_server(tmp_path_factory, name: str, env: dict | None = None) -> ComfyServer:
    """A server with the pack, the tiny models, the tiny teacher and the training images."""
    from tests.fixtures.comfy_training import write_tiny_teacher, write_training_images

    base = new_base(tmp_path_factory, name)
    write_tiny_teacher(base / "models")
    write_training_images(base / "input" / "sana_sprint_training")
    write_training_images(base / "input" / "sana_sprint_personalize")
    pixels = (torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(2)) * 255).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(base / "input" / "example.png")  # the control photo of the ControlNet workflow
    srv = ComfyServer(Path(COMFYUI_DIR), base, base / "server.log", env=env)
    srv.base = base
    try:
        srv.wait_ready("SanaSprintDistill")
    except Exception:
        srv.stop()
        raise
    return srv


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory, "comfy_train_base")
    try:
        yield srv
    finally:
        srv.stop()
        print(f"\n--- ComfyUI log (tail) ---\n{srv.log_tail(30)}")


@pytest.fixture
def client(server):
    c = Client(server)
    yield c
    c.close()


def training_prompt(output_name: str, steps: int, **distill) -> dict:
    """The shipped workflow with CI-sized values: 64 px images, a rank-4 LoRA, previews every iteration."""
    prompt = fp32_workflow(WORKFLOW)
    prompt["10"]["inputs"]["resolution"] = 64
    prompt[DISTILL]["inputs"].update(steps=steps, rank=4, alpha=4.0, learning_rate=1e-3, preview_every=1,
                                     save_every=0, output_name=output_name, **distill)
    prompt["5"]["inputs"].update(width=64, height=64, aspect_ratio="custom")
    return prompt


def submit(client: Client, prompt: dict, on_event=None):
    status, answer = client.submit(prompt)
    assert status == 200, answer
    run = client.follow(answer["prompt_id"], on_event, timeout=600.0)
    if run.of_type("execution_interrupted"):
        return run, run.texts, None
    history = client.server.get(f"/history/{answer['prompt_id']}")[answer["prompt_id"]]
    return run, run.texts, history


def progress_of(run: Run, node: str) -> list[tuple[int, int]]:
    return [(p["value"], p["max"]) for p in run.of_type("progress") if p["node"] == node]


@pytest.fixture(scope="module")
def trained(server):
    c = Client(server)
    try:
        run, texts, history = submit(c, training_prompt("e2e_run", 3))
    finally:
        c.close()
    errors = run.of_type("execution_error")
    assert not errors, errors[0].get("exception_message")
    return run, texts, history


def test_training_nodes_are_registered(server):
    info = server.get("/object_info")
    for node in TRAINING_NODES:
        assert info[node]["python_module"] == f"custom_nodes.{PACK}", node
    assert info["SanaSprintDistill"]["output"] == ["MODEL", "SANA_LORA", "LOSS_MAP"]


def test_training_workflow_runs_with_progress_text_and_previews(server, trained):
    run, texts, history = trained
    assert history["status"]["status_str"] == "success"
    assert progress_of(run, DISTILL) == [(1, 3), (2, 3), (3, 3)]
    distill_texts = [t for node, t in texts if node == DISTILL]
    assert distill_texts[0].startswith("step 1/3 (G)  loss_scm ") and distill_texts[1].startswith("step 2/3 (D)  loss_d ")
    assert any(node == "10" and t.startswith("3 image(s), 3 training example(s)") for node, t in texts)
    assert len(run.previews) >= 3 + 1 + 2  # Distill every iteration, then the 1- and 2-step samplers
    assert all(Image.open(io.BytesIO(jpeg)).format == "JPEG" for _, jpeg in run.previews)
    for node in ("8", "18"):  # the student at 1 and 2 steps
        (item,) = history["outputs"][node]["images"]
        image = Image.open(io.BytesIO(server.view(item)))
        assert image.size == (64, 64) and np.asarray(image).std() > 1
    (graph,) = history["outputs"][LOSS_GRAPH]["images"]
    assert Image.open(io.BytesIO(server.view(graph))).size == (900, 750)
    (saved,) = history["outputs"][SAVE_LORA]["text"]
    path = server.base / "models" / "loras" / "sana_sprint_lora_00001.safetensors"
    assert saved == f"saved {path}"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["sana_sprint.steps"] == "3" and meta["sana_sprint.lora_rank"] == "4"
    checkpoints = server.base / "output" / "sana_sprint_training" / "e2e_run" / "checkpoints"
    assert json.loads((checkpoints / "latest.json").read_text())["step"] == 3


def test_interrupt_stops_training_with_a_checkpoint_and_resume_continues(server, client):
    def interrupt_at_two(run, event):
        data = event["data"]
        if event["type"] == "progress" and data["node"] == DISTILL and data["value"] == 2:
            assert server.post("/interrupt", {})[0] == 200

    run, _, _ = submit(client, training_prompt("e2e_chunks", 400), interrupt_at_two)
    interrupted = run.of_type("execution_interrupted")
    assert interrupted and interrupted[0]["node_id"] == DISTILL, [e["type"] for e in run.events]
    reported = max(v for v, _ in progress_of(run, DISTILL))
    latest = server.base / "output" / "sana_sprint_training" / "e2e_chunks" / "checkpoints" / "latest.json"
    step = json.loads(latest.read_text())["step"]
    # the checkpoint holds the last finished iteration: the one reported, or the next one when the
    # interrupt came while it ran (its progress update is where ComfyUI raised the interrupt)
    assert 2 <= reported <= step <= reported + 1 < 400
    run, _, history = submit(client, training_prompt("e2e_chunks", step + 2, resume=True))
    assert history["status"]["status_str"] == "success", run.of_type("execution_error")
    assert progress_of(run, DISTILL) == [(step + 1, step + 2), (step + 2, step + 2)]
    assert json.loads(latest.read_text())["step"] == step + 2


def _lora_prompt(lora_name: str) -> dict:
    """Four samplers from one prompt: ours at 1 vs ours at 0 + ComfyUI's loader at 1, and ComfyUI's
    loader straight on the teacher vs the teacher alone; each latent saved with core SaveLatent."""
    base = fp32_workflow(WORKFLOW)
    prompt = {k: base[k] for k in ("1", "2", "4", "5")}
    prompt["5"]["inputs"].update(width=64, height=64, aspect_ratio="custom")
    ours = lambda strength, model: {"class_type": "SanaSprintLoraLoader",  # noqa: E731
                                    "inputs": {"model": model, "lora_name": lora_name, "strength": strength}}
    core = lambda model: {"class_type": "LoraLoaderModelOnly",  # noqa: E731
                          "inputs": {"model": model, "lora_name": lora_name, "strength_model": 1.0}}
    prompt.update({"40": ours(1.0, ["1", 0]), "41": ours(0.0, ["1", 0]), "42": core(["41", 0]), "43": core(["1", 0])})
    for i, model in enumerate(("40", "42", "43", "1")):
        sampler = dict(base["6"], inputs={**base["6"]["inputs"], "model": [model, 0], "seed": 5})
        prompt[f"5{i}"] = sampler
        prompt[f"6{i}"] = {"class_type": "SaveLatent", "inputs": {"samples": [f"5{i}", 0],
                                                                 "filename_prefix": f"latents/lora{i}"}}
    return prompt


def _latent(server, history, node: str) -> torch.Tensor:
    item = history["outputs"][node]["latents"][0]
    return load_safetensors(server.view(item))["latent_tensor"]


def test_comfyui_lora_loader_loads_our_lora(server, client, trained):
    run, _, history = submit(client, _lora_prompt("sana_sprint_lora_00001.safetensors"))
    assert history["status"]["status_str"] == "success", run.of_type("execution_error")
    ours, core_on_zero, core_on_teacher, teacher = (_latent(server, history, f"6{i}") for i in range(4))
    assert ours.shape == (1, 32, 2, 2) and ours.std() > 0.01
    assert (ours - teacher).abs().max() > 1e-4  # the LoRA (and its guidance embedder) changes the result
    # ComfyUI's LoraLoaderModelOnly on the teacher with the zero guidance embedder loads every key:
    torch.testing.assert_close(core_on_zero, ours, rtol=1e-6, atol=1e-6)
    # straight on the teacher it applies the low-rank pairs but cannot add the guidance embedder
    assert (core_on_teacher - teacher).abs().max() > 1e-4
    assert (core_on_teacher - ours).abs().max() > 1e-4
    log = server.log.read_text(errors="replace")
    assert "lora key not loaded: diffusion_model.time_embed.guidance_embedder.linear_1.diff" in log


def test_lora_in_diffusers_form_loads_back_in_comfyui(server, client, trained):
    """The trained LoRA in diffusers' PEFT form (what SanaSprintSaveLoRA writes with file_format diffusers:
    trainers.export.diffusers_lora) loads through SanaSprintLoraLoader to the ComfyUI-format file's latents."""
    from sana_sprint_core.checkpoint_io import read_state_dict_with_info, save_safetensors_atomic
    from trainers.export import LoraFile, diffusers_lora

    loras = server.base / "models" / "loras"
    tensors, info = read_state_dict_with_info(loras / "sana_sprint_lora_00001.safetensors")
    peft = diffusers_lora(LoraFile(tensors, dict(info.metadata)))
    assert all(k.startswith("transformer.") for k in peft.tensors) and "lora_adapter_metadata" in peft.metadata
    save_safetensors_atomic(peft.tensors, loras / "e2e_peft.safetensors", metadata=peft.metadata)
    prompt = _lora_prompt("sana_sprint_lora_00001.safetensors")
    prompt["44"] = dict(prompt["40"], inputs={**prompt["40"]["inputs"], "lora_name": "e2e_peft.safetensors"})
    prompt["54"] = dict(prompt["50"], inputs={**prompt["50"]["inputs"], "model": ["44", 0]})
    prompt["64"] = {"class_type": "SaveLatent", "inputs": {"samples": ["54", 0], "filename_prefix": "latents/peft"}}
    run, _, history = submit(client, prompt)
    assert history["status"]["status_str"] == "success", run.of_type("execution_error")
    torch.testing.assert_close(_latent(server, history, "64"), _latent(server, history, "60"), rtol=1e-5, atol=1e-5)


def test_saved_student_loads_back_with_the_same_output(server, client, trained):
    base = fp32_workflow(WORKFLOW)
    lora = {"class_type": "SanaSprintLoraLoader",
            "inputs": {"model": ["1", 0], "lora_name": "sana_sprint_lora_00001.safetensors", "strength": 1.0}}
    save = {"class_type": "SanaSprintSaveStudent", "inputs": {"model": ["40", 0], "filename_prefix": "e2e_student",
                                                             "destination": "diffusion_models", "weight_dtype": "fp32"}}
    run, _, history = submit(client, {"1": base["1"], "40": lora, "70": save})
    assert history["status"]["status_str"] == "success", run.of_type("execution_error")
    path = server.base / "models" / "diffusion_models" / "e2e_student_00001.safetensors"
    assert history["outputs"]["70"]["text"] == [f"saved {path}"]
    prompt = {k: base[k] for k in ("1", "2", "4", "5")}
    prompt["5"]["inputs"].update(width=64, height=64, aspect_ratio="custom")
    prompt["40"] = lora
    prompt["71"] = {"class_type": "SanaSprintDiTLoader", "inputs": {"model_name": path.name, "weight_dtype": "fp32"}}
    for i, model in enumerate(("40", "71")):
        prompt[f"5{i}"] = dict(base["6"], inputs={**base["6"]["inputs"], "model": [model, 0], "seed": 9, "steps": 2})
        prompt[f"6{i}"] = {"class_type": "SaveLatent", "inputs": {"samples": [f"5{i}", 0],
                                                                 "filename_prefix": f"latents/student{i}"}}
    run, _, history = submit(client, prompt)
    assert history["status"]["status_str"] == "success", run.of_type("execution_error")
    patched, loaded = _latent(server, history, "60"), _latent(server, history, "61")
    assert patched.std() > 0.01
    torch.testing.assert_close(loaded, patched, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# ControlNet training (workflow sana_sprint_train_controlnet)


def save_latent(source: str, name: str) -> dict:
    """A core SaveLatent node for output 0 of node `source`, into output/latents/<name>."""
    return {"class_type": "SaveLatent", "inputs": {"samples": [source, 0], "filename_prefix": f"latents/{name}"}}


def controlnet_prompt(output_name: str, steps: int, **distill) -> dict:
    """The shipped ControlNet workflow with CI-sized values (64 px, 128 px HED maps); the ControlNet is
    saved in fp32 and the steered latent kept with SaveLatent."""
    prompt = fp32_workflow(CN_WORKFLOW)
    prompt["10"]["inputs"]["resolution"] = 64
    prompt[DISTILL]["inputs"].update(steps=steps, learning_rate=1e-3, preview_every=1, save_every=0,
                                     output_name=output_name, **distill)
    prompt[SAVE_CONTROLNET]["inputs"].update(filename_prefix=output_name, weight_dtype="fp32")
    prompt["5"]["inputs"].update(width=64, height=64, aspect_ratio="custom")
    prompt["15"]["inputs"]["detect_resolution"] = 128
    prompt["16"]["inputs"].update(width=64, height=64)
    prompt["60"] = save_latent("6", output_name)
    return prompt


@pytest.fixture(scope="module")
def cn_trained(server):
    c = Client(server)
    try:
        run, texts, history = submit(c, controlnet_prompt("e2e_cn", 3))
    finally:
        c.close()
    assert not run.of_type("execution_error"), run.of_type("execution_error")[0].get("exception_message")
    return run, texts, history


def test_controlnet_workflow_trains_with_progress_text_and_previews(server, cn_trained):
    run, texts, history = cn_trained
    assert history["status"]["status_str"] == "success"
    info = server.get("/object_info/SanaSprintDistillControlNet")["SanaSprintDistillControlNet"]
    assert info["output"] == ["SANA_CONTROLNET", "LOSS_MAP"] and "teacher_model" in info["input"]["optional"]
    assert progress_of(run, DISTILL) == [(1, 3), (2, 3), (3, 3)]
    distill_texts = [t for node, t in texts if node == DISTILL]
    assert distill_texts[0].startswith("step 1/3 (G)  loss_scm ")
    assert distill_texts[1].startswith("step 2/3 (D)  loss_d ")
    assert len(run.previews) >= 3 + 2  # the Distill node every iteration, then the 2-step sampler
    (item,) = history["outputs"]["8"]["images"]
    image = Image.open(io.BytesIO(server.view(item)))
    assert image.size == (64, 64) and np.asarray(image).std() > 1
    (graph,) = history["outputs"][LOSS_GRAPH]["images"]
    assert Image.open(io.BytesIO(server.view(graph))).size == (900, 750)
    path = server.base / "models" / "controlnet" / "e2e_cn_00001.safetensors"
    assert history["outputs"][SAVE_CONTROLNET]["text"] == [f"saved {path}"]
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["sana_sprint.kind"] == "controlnet" and meta["sana_sprint.steps"] == "3"
    run_dir = server.base / "output" / "sana_sprint_training" / "e2e_cn"
    assert json.loads((run_dir / "checkpoints" / "latest.json").read_text())["step"] == 3


def test_saved_controlnet_loads_back_with_the_same_latents(server, client, cn_trained):
    """The saved file through SanaSprintControlNetLoader gives the trained ControlNet's latents; at
    strength 0 the image is another (the ControlNet steers)."""
    _, _, history = cn_trained
    base = fp32_workflow(CN_WORKFLOW)
    prompt = {k: base[k] for k in ("1", "2", "3", "4", "5", "9", "15", "16", "6")}
    prompt["5"]["inputs"].update(width=64, height=64, aspect_ratio="custom")
    prompt["15"]["inputs"]["detect_resolution"] = 128
    prompt["70"] = {"class_type": "SanaSprintControlNetLoader",
                    "inputs": {"controlnet_name": "e2e_cn_00001.safetensors", "weight_dtype": "fp32", "wiring": "auto"}}
    prompt["16"]["inputs"].update(controlnet=["70", 0], width=64, height=64)
    prompt["71"] = dict(prompt["16"], inputs={**prompt["16"]["inputs"], "strength": 0.0})
    prompt["72"] = dict(prompt["6"], inputs={**prompt["6"]["inputs"], "positive": ["71", 0]})
    for node, source in (("61", "6"), ("62", "72")):
        prompt[node] = save_latent(source, f"cn{node}")
    run, _, loaded_history = submit(client, prompt)
    assert loaded_history["status"]["status_str"] == "success", run.of_type("execution_error")
    trained = _latent(server, history, "60")
    loaded, unsteered = _latent(server, loaded_history, "61"), _latent(server, loaded_history, "62")
    assert trained.shape == (1, 32, 2, 2) and trained.std() > 0.01
    torch.testing.assert_close(loaded, trained, rtol=1e-6, atol=1e-6)
    assert (unsteered - trained).abs().max() > 1e-3


def test_controlnet_train_mode_without_a_teacher(server, client):
    prompt = controlnet_prompt("e2e_cn_train", 2, mode="train", teacher_controlnet="none")
    run, texts, history = submit(client, prompt)
    assert history["status"]["status_str"] == "success", run.of_type("execution_error")
    distill_texts = [t for node, t in texts if node == DISTILL]
    assert [t.split("  ")[0] for t in distill_texts] == ["step 1/2 (G)", "step 2/2 (G)"]
    assert all(" loss_denoise " in t for t in distill_texts)
    config = json.loads((server.base / "output" / "sana_sprint_training" / "e2e_cn_train" / "config.json").read_text())
    assert config["controlnet"]["mode"] == "train" and config["controlnet"]["init"] == "auto"
    assert config["controlnet"]["teacher_controlnet"] == "" and not config["distill"]["scm"]


def test_a_second_importable_core_does_not_split_the_classes(tmp_path_factory):
    """Another sana_sprint_core on the server's path (the pack also pip-installed, a checkout on
    PYTHONPATH): the pack's trainer still uses the pack's copy, so ControlNet distillation - whose
    JVP needs the cross-attention switch to recognise the node-loaded model's modules - runs. With the
    other copy bound it failed in the JVP (forward AD through the flash attention kernel)."""
    other = tmp_path_factory.mktemp("second_copy")
    shutil.copytree(REPO / "sana_sprint_core", other / "sana_sprint_core")
    srv = start_server(tmp_path_factory, "comfy_two_cores", env={"PYTHONPATH": str(other)})
    c = Client(srv)
    try:
        run, _, history = submit(c, controlnet_prompt("two_cores", 2))
        errors = run.of_type("execution_error")
        assert not errors, errors[0].get("exception_message")
        assert history["status"]["status_str"] == "success"
        assert progress_of(run, DISTILL) == [(1, 2), (2, 2)]
    finally:
        c.close()
        srv.stop()


# --------------------------------------------------------------------------------------------------
# Personalisation (workflow sana_sprint_personalize)

PERSONALIZE, SAVE_TEACHER_LORA = "12", "21"


def personal_prompt(output_name: str, **changes) -> dict:
    """The shipped personalisation workflow with CI-sized values: 64 px, 2 teacher-LoRA updates, 2 Sprint
    iterations, rank 4, previews every iteration; the 1-step latent kept with SaveLatent."""
    prompt = fp32_workflow(PERSONAL_WORKFLOW)
    prompt["10"]["inputs"]["resolution"] = 64
    prompt[PERSONALIZE]["inputs"].update(steps=2, teacher_steps=2, rank=4, teacher_rank=4, learning_rate=1e-3,
                                         preview_every=1, save_every=0, output_name=output_name, **changes)
    for node in (SAVE_LORA, SAVE_TEACHER_LORA):
        prompt[node]["inputs"].update(filename_prefix=f"{output_name}_{node}", weight_dtype="fp32")
    prompt["5"]["inputs"].update(width=64, height=64, aspect_ratio="custom")
    prompt["60"] = save_latent("6", output_name)
    return prompt


def test_personalize_workflow_trains_both_loras_and_the_sprint_lora_loads_back(server, client):
    run, texts, history = submit(client, personal_prompt("e2e_personal"))
    assert history is not None and history["status"]["status_str"] == "success", run.of_type("execution_error")
    assert progress_of(run, PERSONALIZE) == [(1, 2), (2, 2), (1, 2), (2, 2)]  # stage 1, then stage 2
    personal = [t for node, t in texts if node == PERSONALIZE]
    assert personal[0].startswith("teacher LoRA step 1/2  loss_fm ") and personal[2].startswith("step 1/2 (G)")
    for node in ("8", "18"):  # the personalised Sprint model at 1 and 2 steps
        (item,) = history["outputs"][node]["images"]
        assert Image.open(io.BytesIO(server.view(item))).size == (64, 64)
    loras = server.base / "models" / "loras"
    sprint_file, teacher_file = (loras / f"e2e_personal_{n}_00001.safetensors" for n in (SAVE_LORA, SAVE_TEACHER_LORA))
    assert history["outputs"][SAVE_LORA]["text"] == [f"saved {sprint_file}"]
    with safe_open(str(sprint_file), framework="pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert meta["sana_sprint.kind"] == "lora" and not any(k.endswith((".diff", ".diff_b")) for k in keys)
    with safe_open(str(teacher_file), framework="pt") as f:
        assert f.metadata()["sana_sprint.kind"] == "teacher_lora"
    # the saved Sprint LoRA on the Sprint model (SanaSprintLoraLoader, and ComfyUI's own loader: adapters
    # only, so it loads every key) gives the latents of the node's personalised MODEL
    base = fp32_workflow(PERSONAL_WORKFLOW)
    prompt = {k: base[k] for k in ("1", "2", "4", "5", "6")}
    prompt["5"]["inputs"].update(width=64, height=64, aspect_ratio="custom")
    prompt["40"] = {"class_type": "SanaSprintLoraLoader",
                    "inputs": {"model": ["1", 0], "lora_name": sprint_file.name, "strength": 1.0}}
    prompt["41"] = {"class_type": "LoraLoaderModelOnly",
                    "inputs": {"model": ["1", 0], "lora_name": sprint_file.name, "strength_model": 1.0}}
    for i, model in enumerate(("40", "41", "1")):
        prompt[f"5{i}"] = dict(base["6"], inputs={**base["6"]["inputs"], "model": [model, 0]})
        prompt[f"6{i}"] = save_latent(f"5{i}", f"personal{i}")
    run, _, loaded = submit(client, prompt)
    assert loaded["status"]["status_str"] == "success", run.of_type("execution_error")
    trained = _latent(server, history, "60")
    ours, core, plain = (_latent(server, loaded, f"6{i}") for i in range(3))
    torch.testing.assert_close(ours, trained, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(core, trained, rtol=1e-5, atol=1e-5)
    assert (trained - plain).abs().max() > 1e-4  # the LoRA changes the Sprint model's output
