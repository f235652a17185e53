"""Bad input over a real ComfyUI's HTTP API (the server and client of test_real_comfyui.py): every
case is refused with a 400 whose node_errors name the node, the input and the value, and nothing runs.
Case ids are rows of docs/reliability.md. JSON `NaN` and `Infinity` are what Python's json (and
JavaScript's JSON.parse of hand-written files) let through; ComfyUI's own range check misses them.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.test_real_comfyui import COMFYUI_DIR, _api_workflows, client, server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout to run")

# (case, workflow, node, input, value, the words of the answer)
HTTP_CASES = [
    ("H01", "sana_sprint_2step_text_to_image", "6", "guidance", float("nan"),
     "guidance must be a finite number from 0.0 to 20.0, got nan"),
    ("H02", "sana_sprint_2step_text_to_image", "6", "guidance", float("inf"),
     "guidance must be a finite number from 0.0 to 20.0, got inf"),
    ("H03", "sana_sprint_img2img", "6", "denoise", float("nan"), "denoise must be a finite number from 0.01 to 1.0"),
    ("H04", "sana_sprint_controlnet_hed", "12", "strength", float("nan"), "strength must be a finite number"),
    ("H05", "sana_sprint_train_lora", "12", "learning_rate", float("nan"), "learning_rate must be a finite number"),
    ("H06", "sana_sprint_2step_text_to_image", "5", "width", 100000, "Value 100000 bigger than max of 4096"),
    ("H07", "sana_sprint_2step_text_to_image", "6", "guidance", 25.0, "guidance 25.0 is bigger than the maximum 20.0"),
    ("H08", "sana_sprint_2step_text_to_image", "5", "width", "wide", "Failed to convert an input value to a INT value"),
]


def _message(answer: dict, node: str) -> str:
    errors = answer["node_errors"][node]["errors"]
    return " ".join(f"{e.get('message', '')} {e.get('details', '')}" for e in errors)


@pytest.mark.parametrize("case, name, node, field, value, words", HTTP_CASES, ids=[c[0] for c in HTTP_CASES])
def test_bad_value_over_http_is_refused_by_name(client, case, name, node, field, value, words):  # noqa: F811
    prompt = json.loads(json.dumps(_api_workflows()[name]))
    prompt[node]["inputs"][field] = value
    before = client.server.get("/history")
    status, answer = client.submit(prompt)  # json.dumps writes NaN / Infinity as JavaScript literals
    assert status == 400, answer
    assert words in _message(answer, node), answer["node_errors"][node]
    assert client.server.get("/history").keys() == before.keys()  # nothing ran


def test_lora_strength_nan_and_a_missing_lora(client):  # noqa: F811
    """H09: a LoRA loader asked for a file that is not there, with a NaN strength: the file is named."""
    prompt = json.loads(json.dumps(_api_workflows()["sana_sprint_2step_text_to_image"]))
    prompt["20"] = {"class_type": "SanaSprintLoraLoader",
                    "inputs": {"model": ["1", 0], "lora_name": "mine.safetensors", "strength": float("nan")}}
    prompt["6"]["inputs"]["model"] = ["20", 0]
    status, answer = client.submit(prompt)
    assert status == 400
    assert "'mine.safetensors' not found in ComfyUI's 'loras' folder" in _message(answer, "20")
