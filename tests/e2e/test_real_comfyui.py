"""End-to-end against a real ComfyUI (opt-in): COMFYUI_DIR=/path/to/ComfyUI (0.3.64 or newer).

Run it with ComfyUI's own Python (it needs websocket-client; see docs/testing.md):
    COMFYUI_DIR=/work/comfyui /work/comfy-venv/bin/python -m pytest tests/e2e -v

The pack is linked into a temporary base directory's custom_nodes/, tiny random models are written
under the shipped workflows' public file names, and `main.py --cpu` serves on a free loopback port.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load as load_safetensors

from sana_sprint_core.constants import COMFY_DIT_NAME
from tests.e2e.comfy_server import INPUT_SIZE as IMG2IMG_SIZE
from tests.e2e.comfy_server import PACK, Client, ComfyServer, new_base, write_workflow_inputs

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout to run")

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"
NODE_IDS = ("SanaSprintDiTLoader", "SanaSprintTextEncoderLoader", "SanaSprintVAELoader", "SanaSprintTextEncode",
            "SanaSprintEmptyLatent", "SanaSprintSampler", "SanaSprintSCMSampler", "SanaSprintSigmas",
            "SanaSprintVAEDecode", "SanaSprintVAEEncode", "SanaSprintLivePreview", "SanaSprintScribblePad",
            "SanaSprintControlNetLoader", "SanaSprintHEDPreprocessor", "SanaSprintControlNetApply",
            "SanaSprintDataset", "SanaSprintPrecompute", "SanaSprintDistill", "SanaSprintLossGraph",
            "SanaSprintSaveLoRA", "SanaSprintSaveStudent", "SanaSprintLoraLoader", "SanaSprintDistillControlNet",
            "SanaSprintSaveControlNet", "SanaSprintPersonalize")
# Train a model on a folder of images: run by tests/e2e/test_real_training.py with their own inputs.
RUN_ELSEWHERE = {"sana_sprint_train_lora", "sana_sprint_train_controlnet", "sana_sprint_personalize"}
# Widget input types; SANA_SCRIBBLE is the scribble pad's canvas, a widget of the pack's frontend extension.
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "SANA_SCRIBBLE"}


def _api_workflows() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((WORKFLOWS / "api").glob("*.json"))}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = new_base(tmp_path_factory, "comfy_base")
    write_workflow_inputs(base)
    srv = ComfyServer(Path(COMFYUI_DIR), base, base / "server.log")
    srv.base = base
    try:
        srv.wait_ready("SanaSprintSampler")
        yield srv
    finally:
        srv.stop()
        print(f"\n--- ComfyUI log (tail) ---\n{srv.log_tail(30)}")


@pytest.fixture
def client(server):
    c = Client(server)
    yield c
    c.close()


def _run_ok(client: Client, prompt: dict):
    status, answer = client.submit(prompt)
    assert status == 200, answer
    run = client.follow(answer["prompt_id"])
    errors = run.of_type("execution_error")
    assert not errors, errors[0].get("exception_message")
    history = client.server.get(f"/history/{answer['prompt_id']}")[answer["prompt_id"]]
    assert history["status"]["status_str"] == "success"
    return run, history


# --------------------------------------------------------------------------------------------------
# Registration, templates, workflow files


def test_object_info_lists_every_node_from_the_pack(server):
    info = server.get("/object_info")
    missing = [n for n in NODE_IDS if n not in info]
    assert not missing, f"not registered: {missing}; log:\n{server.log_tail()}"
    for node in NODE_IDS:
        assert info[node]["python_module"] == f"custom_nodes.{PACK}"
        assert info[node]["category"].startswith("SanaSprint/")
        assert info[node]["description"]


def test_workflow_specs_match_the_real_node_definitions(server):
    from workflows.build import SPECS

    info = server.get("/object_info")
    for node_type, spec in SPECS.items():
        order = info[node_type]["input_order"]
        names = order.get("required", []) + order.get("optional", [])
        assert names == [i.name for i in spec.inputs], node_type
        optional_sockets = {i.name for i in spec.inputs if i.optional}
        assert optional_sockets <= set(order.get("optional", [])), node_type
        defs = {**info[node_type]["input"].get("required", {}), **info[node_type]["input"].get("optional", {})}
        for inp in spec.inputs:
            kind, options = defs[inp.name][0], (defs[inp.name][1] if len(defs[inp.name]) > 1 else {})
            is_widget = (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput")
            assert is_widget == inp.widget, (node_type, inp.name)
            assert bool(options.get("control_after_generate")) == inp.control, (node_type, inp.name)
            assert bool(options.get("image_upload")) == inp.upload, (node_type, inp.name)
        assert [t for _, t in spec.outputs] == list(info[node_type]["output"]), node_type


def test_workflow_templates_are_listed_and_served(server):
    """Listed by title (the file name); served with their thumbnails. That each UI file gives its API
    twin in the real frontend is checked by test_browser_workflows.py."""
    from workflows.build import TITLES, thumbnail_path

    listed = server.get("/workflow_templates")
    assert sorted(listed[PACK]) == sorted(TITLES.values())
    for name, title in TITLES.items():
        status, body = server.get_bytes(f"/api/workflow_templates/{PACK}/{quote(title)}.json")
        assert status == 200 and json.loads(body)["version"] == 0.4
        status, body = server.get_bytes(f"/api/workflow_templates/{PACK}/{quote(title)}.jpg")
        assert status == 200 and body == thumbnail_path(name).read_bytes()


# --------------------------------------------------------------------------------------------------
# Running the shipped workflows


@pytest.mark.parametrize("name", sorted(set(_api_workflows()) - RUN_ELSEWHERE))
def test_api_workflow_runs_with_progress_previews_and_image(client, name):
    prompt = _api_workflows()[name]
    run, history = _run_ok(client, prompt)
    sampler_id = next(k for k, v in prompt.items() if v["class_type"] == "SanaSprintSampler")
    steps = prompt[sampler_id]["inputs"]["steps"]
    progress = [p for p in run.of_type("progress") if p["node"] == sampler_id]
    assert [p["value"] for p in progress] == list(range(1, steps + 1))
    assert all(p["max"] == steps for p in progress)
    assert len(run.previews) >= steps  # one JPEG preview per step from the sampler
    for _, jpeg in run.previews[:steps]:
        assert Image.open(io.BytesIO(jpeg)).format == "JPEG"
    images = history["outputs"]["8"]["images"]
    assert len(images) == 1
    image = Image.open(io.BytesIO(client.server.view(images[0])))
    expected = IMG2IMG_SIZE if "img2img" in name else (1024, 1024)
    assert image.size == expected and image.format == "PNG"
    assert np.asarray(image).std() > 1  # not a constant image
    for node_id, node in prompt.items():  # the scribble map's preview: a binary image
        if node["class_type"] == "SanaSprintHEDPreprocessor":
            (item,) = history["outputs"][node_id]["images"]
            scribble = np.asarray(Image.open(io.BytesIO(client.server.view(item))))
            assert set(np.unique(scribble).tolist()) <= {0, 255}, name
            empty_pad = node["inputs"]["mode"] == "drawing"  # the live workflow's pad starts empty
            assert scribble.max() == (0 if empty_pad else 255), name


def test_headless_readme_command_writes_the_image(server, tmp_path):
    out = tmp_path / "sprint.png"
    cmd = [sys.executable, str(WORKFLOWS / "run.py"), str(WORKFLOWS / "api" / "sana_sprint_2step_text_to_image.json"),
           "--server", server.url, "--out", str(out), "--prompt", "a red fox", "--seed", "3"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert Image.open(out).size == (1024, 1024)


# --------------------------------------------------------------------------------------------------
# Interruption and bad input


def _slow_prompt() -> dict:
    """The 4-step workflow on a large batch, so that sampling takes a few seconds."""
    prompt = json.loads(json.dumps(_api_workflows()["sana_sprint_4step_text_to_image"]))
    prompt["5"]["inputs"].update(width=4096, height=4096, batch_size=16, aspect_ratio="custom")
    prompt["6"]["inputs"]["seed"] = 123
    return prompt


def test_interrupt_stops_the_sampler_between_steps(client):
    status, answer = client.submit(_slow_prompt())
    assert status == 200, answer

    def interrupt_on_first_step(run, event):
        if event["type"] == "progress" and event["data"]["node"] == "6" and event["data"]["value"] == 1:
            assert client.server.post("/interrupt", {})[0] == 200

    run = client.follow(answer["prompt_id"], on_event=interrupt_on_first_step)
    interrupted = run.of_type("execution_interrupted")
    assert interrupted and interrupted[0]["node_id"] == "6", [e["type"] for e in run.events]
    assert max(p["value"] for p in run.of_type("progress") if p["node"] == "6") < 4
    assert not run.of_type("executed")  # SaveImage never ran


def test_bad_inputs_give_400_with_node_errors(client):
    prompt = json.loads(json.dumps(_api_workflows()["sana_sprint_2step_text_to_image"]))
    prompt["6"]["inputs"]["steps"] = 9
    status, answer = client.submit(prompt)
    assert status == 400
    assert answer["node_errors"]["6"]["errors"][0]["type"] == "value_bigger_than_max"

    prompt = json.loads(json.dumps(_api_workflows()["sana_sprint_2step_text_to_image"]))
    prompt["1"]["inputs"]["model_name"] = "Sana_Sprint_0.6B_1024px.safetensors"
    status, answer = client.submit(prompt)
    assert status == 400
    details = answer["node_errors"]["1"]["errors"][0]["details"]
    assert "diffusion_models" in details and "Sana_Sprint_0.6B_1024px.safetensors" in details
    assert "Efficient-Large-Model/Sana_Sprint_1.6B_1024px_diffusers" in details


# Each loader kind: (workflow, node, input, the model's file or folder under models/). The teacher is
# asked for by its public name through the DiT loader, as the training workflow does.
MISSING_MODEL_CASES = {
    "dit": ("sana_sprint_2step_text_to_image", "1", "model_name", "diffusion_models/Sana_Sprint_1.6B_1024px_diffusers"),
    "teacher": ("sana_sprint_2step_text_to_image", "1", "model_name",
                "diffusion_models/SANA_Sprint_1.6B_1024px_teacher_diffusers"),
    "text_encoder": ("sana_sprint_2step_text_to_image", "2", "text_encoder_name", "text_encoders/gemma-2-2b-it"),
    "vae": ("sana_sprint_2step_text_to_image", "3", "vae_name", "vae/dc-ae-f32c32-sana-1.1-diffusers"),
    "controlnet": ("sana_sprint_controlnet_hed", "10", "controlnet_name",
                   "controlnet/Sana_1600M_1024px_BF16_ControlNet_HED.pth"),
    "hed": ("sana_sprint_controlnet_hed", "11", "hed_model", "annotators/ControlNetHED.pth"),
}


def _validation_errors(client, prompt: dict) -> dict:
    """node id -> error details; the sampler gets an out-of-range step count so nothing ever runs."""
    sampler = next(k for k, v in prompt.items() if v["class_type"] == "SanaSprintSampler")
    prompt[sampler]["inputs"]["steps"] = 9
    status, answer = client.submit(prompt)
    assert status == 400, answer
    return {k: " ".join(e.get("details", "") for e in v["errors"]) for k, v in answer["node_errors"].items()}


@pytest.mark.parametrize("kind", sorted(MISSING_MODEL_CASES))
def test_missing_model_message_names_the_folder_the_loader_reads(client, kind):
    """The model is moved away: the loader's 400 names one download target. Put there, the same name loads."""
    name, node, field, relative = MISSING_MODEL_CASES[kind]
    base = client.server.base
    model = base / "models" / relative
    present = base / "models" / ("diffusion_models/" + COMFY_DIT_NAME if kind == "teacher" else relative)
    parked = base / f"parked_{kind}"
    present.rename(parked)
    moved_to = parked
    try:
        prompt = json.loads(json.dumps(_api_workflows()[name]))
        prompt[node]["inputs"][field] = model.name
        details = _validation_errors(client, json.loads(json.dumps(prompt)))[node]
        targets = list(dict.fromkeys(re.findall(r" to (\S+?)(?:;|\. Nothing)", details)))  # once per error
        assert targets[0] == str(model) and f"{model.parent.name}/{model.parent.name}" not in details, details
        if kind == "teacher":  # the teachers' repositories, not the Sprint student's
            assert "Efficient-Large-Model/SANA_Sprint_1.6B_1024px_teacher_diffusers" in details, details
            assert "Sana_Sprint_1.6B_1024px_diffusers" not in details, details
        else:
            assert targets == [str(model)], details
        moved_to = Path(targets[0])
        parked.rename(moved_to)  # where the message says: the loader now finds it under the same name
        assert node not in _validation_errors(client, prompt)
    finally:
        moved_to.rename(present)


# --------------------------------------------------------------------------------------------------
# SAMPLER + SIGMAS in ComfyUI's SamplerCustomAdvanced == SanaSprintSampler


def _sampler_pair_prompt(steps: int, seed: int, controlnet: bool = False) -> dict:
    """Both routes from the same loaders, prompt (with the ControlNet of the HED workflow if asked) and
    latent, each saved with core SaveLatent."""
    name = "sana_sprint_controlnet_hed" if controlnet else "sana_sprint_2step_text_to_image"
    base = json.loads(json.dumps(_api_workflows()[name]))
    keep = ("1", "2", "3", "4", "5", "6", "9", "10", "11", "12") if controlnet else ("1", "2", "4", "5", "6")
    prompt = {k: base[k] for k in keep}
    prompt["5"]["inputs"].update(width=256, height=192, batch_size=2, aspect_ratio="custom")
    prompt["6"]["inputs"].update(steps=steps, seed=seed)
    if controlnet:  # the control image at the latent's size; HED at 256 px keeps the test quick
        prompt["11"]["inputs"]["detect_resolution"] = 256
        prompt["12"]["inputs"].update(width=256, height=192)
    positive = prompt["6"]["inputs"]["positive"]
    schedule = {k: prompt["6"]["inputs"][k] for k in ("steps", "max_timestep", "intermediate_timestep", "denoise")}
    prompt.update({
        "20": {"class_type": "SanaSprintSigmas", "inputs": {**schedule, "timesteps": ""}},
        "21": {"class_type": "SanaSprintSCMSampler", "inputs": {}},
        "22": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
        "23": {"class_type": "BasicGuider", "inputs": {"model": ["1", 0], "conditioning": positive}},
        "24": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["22", 0], "guider": ["23", 0], "sampler": ["21", 0], "sigmas": ["20", 0],
            "latent_image": ["5", 0]}},
        "30": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": f"latents/ours{steps}"}},
        "31": {"class_type": "SaveLatent", "inputs": {"samples": ["24", 0], "filename_prefix": f"latents/comfy{steps}"}},
    })
    return prompt


def _latent(server, history, node: str) -> torch.Tensor:
    item = history["outputs"][node]["latents"][0]
    return load_safetensors(server.view(item))["latent_tensor"]


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_sampler_custom_advanced_matches_our_sampler(client, steps):
    _, history = _run_ok(client, _sampler_pair_prompt(steps, seed=11 + steps))
    ours, comfy = _latent(client.server, history, "30"), _latent(client.server, history, "31")
    assert ours.shape == comfy.shape == (2, 32, 6, 8)
    assert ours.std() > 0.1
    torch.testing.assert_close(comfy, ours, rtol=1e-5, atol=1e-5 * float(ours.abs().max()))


@pytest.mark.parametrize("steps", [1, 2])
def test_sampler_custom_advanced_follows_the_controlnet_like_our_sampler(client, steps):
    """The control rides in the conditioning: ComfyUI loads the ControlNet from `additional_models` and the
    MODEL reads it from its extra conds; the result equals SanaSprintSampler's, and differs without it."""
    _, history = _run_ok(client, _sampler_pair_prompt(steps, seed=21 + steps, controlnet=True))
    ours, comfy = _latent(client.server, history, "30"), _latent(client.server, history, "31")
    assert ours.shape == comfy.shape == (2, 32, 6, 8)
    torch.testing.assert_close(comfy, ours, rtol=1e-5, atol=1e-5 * float(ours.abs().max()))
    _, plain_history = _run_ok(client, _sampler_pair_prompt(steps, seed=21 + steps))
    plain = _latent(client.server, plain_history, "30")
    assert (plain - ours).abs().max() > 0.05


# --------------------------------------------------------------------------------------------------
# ComfyUI's TorchCompileModel node on our MODEL


def test_comfy_compile_node_compiles_both_sampler_routes(client):
    """TorchCompileModel (inductor) on our MODEL: SanaSprintSampler compiles with its arguments and
    SamplerCustomAdvanced runs ComfyUI's own compiled wrapper; both give the eager latents (inductor
    reorders fp32 sums: 1e-4 of the latents' range)."""
    prompt = _sampler_pair_prompt(2, seed=31)
    prompt["40"] = {"class_type": "TorchCompileModel", "inputs": {"model": ["1", 0], "backend": "inductor"}}
    prompt["41"] = {"class_type": "SanaSprintSampler", "inputs": {**prompt["6"]["inputs"], "model": ["40", 0]}}
    prompt["23"]["inputs"]["model"] = ["40", 0]
    prompt["42"] = {"class_type": "SaveLatent", "inputs": {"samples": ["41", 0], "filename_prefix": "latents/compiled"}}
    _, history = _run_ok(client, prompt)
    eager = _latent(client.server, history, "30")
    for node in ("42", "31"):
        compiled = _latent(client.server, history, node)
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4 * float(eager.abs().max()))


# --------------------------------------------------------------------------------------------------
# LoRAs of other tools through SanaSprintLoraLoader: ComfyUI's own patching of the converted keys


def _lora_files(folder: Path, shapes: dict) -> list[tuple[str, float]]:
    """A diffusers/PEFT LoRA (alpha only in the metadata) on to_q/to_k/conv_inverted and a kohya LoRA
    in NVlabs names on the fused qkv and kv projections, for the tiny Sprint DiT; (file, strength)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(11)
    peft_keys = {}
    for block in range(2):
        for module in ("attn1.to_q", "attn1.to_k", "ff.conv_inverted"):
            out, inp = shapes[f"transformer_blocks.{block}.{module}.weight"][:2]
            name = f"transformer.transformer_blocks.{block}.{module}"
            tail = (1, 1) if "conv" in module else ()
            peft_keys[f"{name}.lora_A.weight"] = torch.randn(4, inp, *tail, generator=g)
            peft_keys[f"{name}.lora_B.weight"] = torch.randn(out, 4, *tail, generator=g) * 0.1
    meta = {"lora_adapter_metadata": json.dumps({"transformer.lora_alpha": 8, "transformer.r": 4})}
    save_file(peft_keys, str(folder / "from_diffusers.safetensors"), metadata=meta)
    kohya = {}
    for block in range(2):
        for module, rows in (("attn_qkv", 3), ("cross_attn_kv_linear", 2)):
            width = shapes[f"transformer_blocks.{block}.attn1.to_q.weight"][1]
            name = f"lora_unet_blocks_{block}_{module}"
            kohya[f"{name}.lora_down.weight"] = torch.randn(2, width, generator=g)
            kohya[f"{name}.lora_up.weight"] = torch.randn(rows * width, 2, generator=g) * 0.1
            kohya[f"{name}.alpha"] = torch.tensor(1.0)
    save_file(kohya, str(folder / "kohya_nvlabs.safetensors"))
    lycoris = {  # LoKr (one factor low-rank) and LoHa in block 0, a full LoKr on block 1's fused qkv
        "lycoris_transformer_blocks_0_attn1_to_q.lokr_w1": torch.randn(4, 8, generator=g),
        "lycoris_transformer_blocks_0_attn1_to_q.lokr_w2_a": torch.randn(16, 2, generator=g) * 0.1,
        "lycoris_transformer_blocks_0_attn1_to_q.lokr_w2_b": torch.randn(2, 8, generator=g),
        "lycoris_transformer_blocks_0_attn1_to_q.alpha": torch.tensor(4.0),
        **{f"lycoris_transformer_blocks_0_attn1_to_k.{n}": torch.randn(*shape, generator=g) * 0.3
           for n, shape in (("hada_w1_a", (64, 2)), ("hada_w1_b", (2, 64)), ("hada_w2_a", (64, 2)),
                            ("hada_w2_b", (2, 64)))},
        "lycoris_transformer_blocks_0_attn1_to_k.alpha": torch.tensor(2.0),
        "lycoris_blocks_1_attn_qkv.lokr_w1": torch.randn(3, 2, generator=g),
        "lycoris_blocks_1_attn_qkv.lokr_w2": torch.randn(64, 32, generator=g) * 0.1,
    }
    save_file(lycoris, str(folder / "lycoris.safetensors"))
    return [("from_diffusers.safetensors", 1.0), ("kohya_nvlabs.safetensors", -0.5), ("lycoris.safetensors", 0.7)]


def test_loras_of_three_formats_stack_through_comfyuis_patching(client):
    """peft (diffusers) + kohya-with-NVlabs-names + LyCORIS (LoKr, LoHa) files chained on the Sprint
    MODEL, merged by ComfyUI's own weight adapters (SanaSprintSaveStudent writes the patched weights):
    every weight equals our core merge."""
    from safetensors.torch import load_file

    from sana_sprint_core import lora_formats
    from sana_sprint_core.checkpoint_io import read_state_dict_with_info
    from sana_sprint_core.dit_loading import load_dit

    base = client.server.base
    dit_state = load_dit(base / "models" / "diffusion_models" / COMFY_DIT_NAME).state_dict()
    loras = base / "models" / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    files = _lora_files(loras, {k: v.shape for k, v in dit_state.items()})
    prompt = {"1": {"class_type": "SanaSprintDiTLoader", "inputs": {"model_name": COMFY_DIT_NAME,
                                                                    "weight_dtype": "fp32"}}}
    source = "1"
    for i, (name, strength) in enumerate(files):
        prompt[f"2{i}"] = {"class_type": "SanaSprintLoraLoader",
                           "inputs": {"model": [source, 0], "lora_name": name, "strength": strength}}
        source = f"2{i}"
    prompt["30"] = {"class_type": "SanaSprintSaveStudent", "inputs": {
        "model": [source, 0], "filename_prefix": "stacked_loras", "destination": "output", "weight_dtype": "fp32"}}
    status, answer = client.submit(prompt)
    assert status == 200, answer
    run = client.follow(answer["prompt_id"])
    assert not run.of_type("execution_error"), run.of_type("execution_error")
    saved = load_file(str(next((base / "output").glob("stacked_loras_*.safetensors"))))
    want = dict(dit_state)
    for name, strength in files:
        tensors, info = read_state_dict_with_info(loras / name)
        lora_formats.merge_into(want, lora_formats.read_lora(tensors, want.keys(), info.metadata), strength)
    changed = [k for k in want if not torch.equal(want[k], dit_state[k])]
    assert len(changed) == 2 * 6  # per block: attn1 q, k, v, attn2 k, v, conv_inverted (some by several files)
    for key in want:
        tol = 1e-5 * max(1.0, float(want[key].abs().max()))
        assert (saved[key].float() - want[key].float()).abs().max() <= tol, key


# --------------------------------------------------------------------------------------------------
# Weight dtypes: fp8 storage through ComfyUI's own operations, and auto on the CPU


def _dtype_prompt(dit: str, text_encoder: str, controlnet: str) -> dict:
    """The HED ControlNet workflow at 128 px with the given weight dtypes, its latent saved."""
    base = json.loads(json.dumps(_api_workflows()["sana_sprint_controlnet_hed"]))
    prompt = {k: base[k] for k in ("1", "2", "3", "4", "5", "6", "9", "10", "11", "12")}
    prompt["1"]["inputs"]["weight_dtype"] = dit
    prompt["2"]["inputs"]["weight_dtype"] = text_encoder
    prompt["10"]["inputs"]["weight_dtype"] = controlnet
    prompt["5"]["inputs"].update(width=128, height=128, aspect_ratio="custom")
    prompt["11"]["inputs"]["detect_resolution"] = 128
    prompt["12"]["inputs"].update(width=128, height=128)
    prompt["6"]["inputs"].update(steps=2, seed=5)
    prompt["30"] = {"class_type": "SaveLatent",
                    "inputs": {"samples": ["6", 0], "filename_prefix": f"latents/dtype_{dit}_{text_encoder}"}}
    return prompt


def test_fp8_weights_load_and_run_through_comfyuis_operations(client):
    """DiT, ControlNet and Gemma-2 stored in fp8 (ComfyUI's manual-cast layers compute in fp32 on this CPU)
    give a 2-step controlled latent close to the fp32 one; fp8_e4m3fn_fast falls back to the same on a CPU."""
    latents = {}
    for dit, te in (("fp32", "fp32"), ("fp8_e4m3fn", "fp8_e4m3fn"), ("fp8_e4m3fn_fast", "fp8_e5m2"),
                    ("auto", "auto")):
        _, history = _run_ok(client, _dtype_prompt(dit, te, "fp32" if dit == "fp32" else dit))
        latents[dit] = _latent(client.server, history, "30")
    ref = latents["fp32"]
    assert ref.std() > 0.1
    rels = {name: ((latents[name] - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()
            for name in ("fp8_e4m3fn", "fp8_e4m3fn_fast", "auto")}
    print("relative RMS error to fp32:", rels)
    for name, bound in (("fp8_e4m3fn", 0.09), ("fp8_e4m3fn_fast", 0.18), ("auto", 0.012)):
        assert 1e-5 < rels[name] < bound, (name, rels[name])
    assert rels["fp8_e4m3fn"] > 4 * rels["auto"]  # 8-bit weights, not bf16 (measured 0.028 against 0.0024)


def test_dc_ae_lite_decodes_in_comfyui_as_the_core_does(client):
    """DC-AE-Lite (a tiny one of its layout, diffusers folder in models/vae) through SanaSprintVAELoader:
    the saved image is the core decode of the same latent."""
    from PIL import Image

    from sana_sprint_core.constants import DCAE_SCALE
    from sana_sprint_core.dcae import decode, load_vae
    from tests.fixtures.comfy_models import LITE_VAE_NAME

    base = json.loads(json.dumps(_api_workflows()["sana_sprint_1step_text_to_image"]))
    base["3"]["inputs"].update(vae_name=LITE_VAE_NAME, weight_dtype="fp32")
    base["5"]["inputs"].update(width=128, height=96, aspect_ratio="custom")
    base["30"] = {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": "latents/lite"}}
    _, history = _run_ok(client, base)
    latent = _latent(client.server, history, "30")
    (item,) = history["outputs"]["8"]["images"]
    image = torch.from_numpy(np.asarray(Image.open(io.BytesIO(client.server.view(item))))).float() / 255
    vae = load_vae(client.server.base / "models" / "vae" / LITE_VAE_NAME, dtype=torch.float32)
    assert vae.config.decoder_upsample == "pixel_shuffle" and vae.config.decoder_out_act == "silu"
    with torch.no_grad():  # a LATENT holds raw latents: the decode node scales them (SanaLatentFormat)
        want = decode(vae, latent * DCAE_SCALE)[0].permute(1, 2, 0)
    assert image.shape == want.shape == (96, 128, 3) and image.std() > 0.01
    assert (image - want).abs().max() <= 1 / 255 + 1e-4  # 8-bit PNG rounding
