"""Shipped workflows: files equal the generator's output, nodes/inputs/widget values fit the node
definitions, and every API-format workflow runs through the nodes on tiny models."""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys
from pathlib import Path

import pytest
import torch

from sana_sprint_core import constants
from tests.nodes.prompt_runner import run_prompt

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"
# Input types the frontend shows as widgets; SANA_SCRIBBLE is the scribble pad's canvas (web/).
WIDGETS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "SANA_SCRIBBLE"}
CORE_NODES = {"SaveImage", "LoadImage"}
# HED on a 1024 px map takes ~10 s on 2 CPU cores; the executor runs the shipped value everywhere
# else (and the real-ComfyUI test runs it unchanged).
CI_DETECT_RESOLUTION = 128


def _load_build():
    spec = importlib.util.spec_from_file_location("workflows_build", WORKFLOWS / "build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up in sys.modules
    spec.loader.exec_module(module)
    return module


build = _load_build()
API = {p.stem: json.loads(p.read_text()) for p in sorted((WORKFLOWS / "api").glob("*.json"))}
UI = {name: json.loads(build.ui_path(name).read_text()) for name in build.WORKFLOWS}


def test_committed_files_equal_the_generator_output():
    files = build.render()
    assert len(files) == 22
    for path, text in files.items():
        assert path.read_text() == text, f"{path} is stale: run python workflows/build.py"
    assert sorted(API) == sorted(UI) == sorted(build.WORKFLOWS)
    # nothing else in workflows/ that ComfyUI would list as a template
    assert sorted(WORKFLOWS.glob("*.json")) == sorted(build.ui_path(name) for name in build.WORKFLOWS)


def test_every_ui_workflow_has_a_title_and_a_thumbnail():
    """The template browser's card: the file name is the title (no character Windows or a URL refuses),
    the same-name JPEG the thumbnail (made by tests/e2e/test_browser_workflows.py)."""
    for name, title in build.TITLES.items():
        assert build.ui_path(name).name == f"{title}.json" and not set(title) & set('<>:"/\\|?*#%')
        assert build.thumbnail_path(name).read_bytes()[:3] == b"\xff\xd8\xff", f"{title}.jpg is not a JPEG"


@pytest.mark.parametrize("name", sorted(UI))
def test_ui_layout_has_no_overlapping_nodes(name):
    """Boxes (title bar included) as the file places them; the browser test checks them as drawn."""
    title = build.NODE_TITLE_HEIGHT
    boxes = [(n["pos"][0], n["pos"][1] - title, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1], n["type"])
             for n in UI[name]["nodes"]]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)


def test_every_seed_input_declares_control_after_generate(nodes):
    """ComfyUI's frontend adds a 'control after generate' widget to any INT named seed or noise_seed
    unless the input says otherwise; an undeclared one shifts every later widget value of a saved workflow."""
    for node_id, cls in nodes.items():
        for inp in cls.define_schema().inputs:
            if inp.io_type == "INT" and inp.id in ("seed", "noise_seed"):
                assert getattr(inp, "control_after_generate", None) is not None, (node_id, inp.id)


def test_workflows_use_the_public_model_names():
    assert (build.DIT_NAME, build.TEXT_ENCODER_NAME, build.VAE_NAME, build.CONTROLNET_NAME, build.HED_NAME) == (
        constants.COMFY_DIT_NAME, constants.COMFY_TEXT_ENCODER_NAME, constants.COMFY_VAE_NAME,
        constants.COMFY_CONTROLNET_NAME, constants.HED_FILE_NAME)


def test_generator_specs_match_our_node_schemas(nodes):
    for node_id, cls in nodes.items():
        if node_id not in build.SPECS:
            continue
        schema, spec = cls.define_schema(), build.SPECS[node_id]
        assert [i.id for i in schema.inputs] == [i.name for i in spec.inputs], node_id
        for inp, want in zip(schema.inputs, spec.inputs):
            assert (inp.io_type in WIDGETS) == want.widget and inp.io_type == want.type, (node_id, inp.id)
            assert bool(getattr(inp, "control_after_generate", False)) == want.control, (node_id, inp.id)
            if not want.widget:  # only optional sockets may be left unlinked
                assert bool(inp.optional) == want.optional, (node_id, inp.id)
        assert [o.io_type for o in schema.outputs] == [t for _, t in spec.outputs], node_id


def _check_widget(node_id: str, inp, value) -> None:
    if inp.io_type == "COMBO":
        assert value in inp.options, f"{node_id}.{inp.id}: {value!r} not in {inp.options}"
    elif inp.io_type in ("INT", "FLOAT"):
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (node_id, inp.id)
        assert inp.min <= value <= inp.max, f"{node_id}.{inp.id}: {value} outside [{inp.min}, {inp.max}]"
    elif inp.io_type == "BOOLEAN":
        assert isinstance(value, bool), (node_id, inp.id)
    else:
        assert isinstance(value, str), (node_id, inp.id)


@pytest.mark.parametrize("name", sorted(UI))
def test_ui_workflow_fits_the_node_definitions(nodes, name):
    ui = UI[name]
    assert ui["version"] == 0.4
    link_ids = {link[0] for link in ui["links"]}
    for node in ui["nodes"]:
        if node["type"] in CORE_NODES:
            continue
        schema = nodes[node["type"]].define_schema()
        values = list(node["widgets_values"])
        for inp in schema.inputs:
            if inp.io_type in WIDGETS:
                _check_widget(node["type"], inp, values.pop(0))
                if getattr(inp, "control_after_generate", False):
                    assert values.pop(0) in ("fixed", "increment", "decrement", "randomize")
        assert not values, f"{node['type']}: extra widget values {values}"
        sockets = {i.id: i for i in schema.inputs if i.io_type not in WIDGETS}
        assert [i["name"] for i in node["inputs"]] == list(sockets)
        for i in node["inputs"]:
            assert i["link"] in link_ids or (i["link"] is None and sockets[i["name"]].optional), (node["type"], i)


@pytest.mark.parametrize("name", sorted(API))
def test_api_workflow_fits_the_node_definitions(nodes, name):
    for node_id, node in API[name].items():
        if node["class_type"] in CORE_NODES:
            continue
        cls = nodes[node["class_type"]]
        schema = cls.define_schema()
        given = [i.id for i in schema.inputs if i.id in node["inputs"]]
        assert list(node["inputs"]) == given, node_id
        for inp in schema.inputs:
            if inp.id not in node["inputs"]:  # only an optional socket may be left out
                assert inp.optional and inp.io_type not in WIDGETS, (node_id, inp.id)
                continue
            value = node["inputs"][inp.id]
            if inp.io_type in WIDGETS:
                _check_widget(node["class_type"], inp, value)
            else:
                src, slot = value
                assert src in API[name] and isinstance(slot, int), (node_id, inp.id)
        if hasattr(cls, "validate_inputs"):  # called as ComfyUI calls it: the inputs its signature names
            wanted = inspect.signature(cls.validate_inputs).parameters
            assert cls.validate_inputs(**{k: v for k, v in node["inputs"].items() if k in wanted}) is True


def _execute(prompt: dict, nodes: dict, input_image: torch.Tensor) -> dict:
    """Runs the prompt through the nodes (tests/nodes/prompt_runner.py); doubles for LoadImage/SaveImage.
    Returns {node key: images} of the image outputs."""
    saved = {}

    def run_node(key, class_type, inputs):
        if class_type == "LoadImage":
            return (input_image, torch.zeros(input_image.shape[:3]))
        if class_type == "SaveImage":
            saved[key] = inputs["images"]
            return ()
        if class_type == "SanaSprintLivePreview":  # an output node: shows instead of saving
            ui = nodes[class_type].execute(**inputs).ui
            assert ui["images"] and ui["images"][0]["type"] == "temp"
            saved[key] = inputs["images"]
            return ()
        if class_type == "SanaSprintHEDPreprocessor" and inputs["mode"] == "hed":
            inputs["detect_resolution"] = CI_DETECT_RESOLUTION
        with torch.inference_mode():  # as ComfyUI's executor runs every node
            return nodes[class_type].execute(**inputs).args

    run_prompt(prompt, run_node)
    return saved


# Train a model: run with CI-sized inputs (64 px images, 3 iterations) by tests/nodes/test_training_nodes.py
# tests/nodes/test_controlnet_training_nodes.py and tests/nodes/test_personalize_nodes.py.
RUN_ELSEWHERE = {"sana_sprint_train_lora", "sana_sprint_train_controlnet", "sana_sprint_personalize"}


@pytest.mark.parametrize("name", sorted(set(API) - RUN_ELSEWHERE))
def test_api_workflow_runs_through_the_nodes(nodes, name):
    image = torch.rand(1, 96, 128, 3)
    saved = _execute(API[name], nodes, image)
    (images,) = saved.values()
    expected = (1, 96, 128, 3) if "img2img" in name else (1, 1024, 1024, 3)
    assert images.shape == expected and images.std() > 0.01
