"""Every shipped UI workflow in ComfyUI's real frontend (opt-in, like test_browser_live.py).

    COMFYUI_DIR=/path/to/ComfyUI SANA_BROWSER_E2E=1 PLAYWRIGHT_CORE_DIR=/path/with/node_modules \
        /path/to/comfy-venv/bin/python -m pytest tests/e2e/test_browser_workflows.py -v

A server with the tiny models, a tiny teacher and a folder of training images; tests/e2e/browser_workflows.mjs
loads each workflows/*.json in the page as the template browser does and reports what the frontend
made of it. Checked for every UI workflow, present and future:
  * app.graphToPrompt() - what Queue sends - equals the API twin in workflows/api/: every node's class,
    every literal value and every link (a hidden widget that shifts values cannot pass);
  * no two node boxes overlap, title bars included, after loading and after a run (previews and
    images grow nodes), and no node is drawn larger than the box the file gives it;
  * the whole graph fits a 1600 x 1000 window at a zoom at which the frontend still draws text
    (its own low-quality threshold);
  * each runs when Queue is pressed (training workflows with CI-sized widget values);
  * the template browser shows each under the pack with its title and its thumbnail.
With SANA_UPDATE_IMAGES=1 the thumbnails (workflows/<title>.jpg) and docs/images/templates.png are
rewritten from this run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from itertools import combinations
from pathlib import Path
from urllib.parse import quote

import pytest
from PIL import Image

from tests.e2e.browser import CHROMIUM, COMFYUI_DIR, MARKS, NODE, PLAYWRIGHT_DIR, SETTINGS, check_tools
from tests.e2e.comfy_server import PACK, REPO, ComfyServer, new_base, write_workflow_inputs
from workflows import build as BUILD

UPDATE_IMAGES = os.environ.get("SANA_UPDATE_IMAGES") == "1"
TEMPLATES_SCREENSHOT = REPO / "docs" / "images" / "templates.png"

pytestmark = MARKS

API = {p.stem: json.loads(p.read_text()) for p in sorted((REPO / "workflows" / "api").glob("*.json"))}


def _ci_widgets(name: str) -> dict:
    """Widget values for a run of a training workflow on the tiny models (node id -> widget -> value):
    64 px images, 2 iterations of a rank-4 LoRA / a ControlNet (personalisation: 2 + 2), previews every
    iteration, 64 px samples."""
    trainers = ("SanaSprintDistill", "SanaSprintDistillControlNet", "SanaSprintPersonalize")
    prompt = API[name]
    distill = next((k for k, v in prompt.items() if v["class_type"] in trainers), None)
    if distill is None:
        return {}
    latent = next(k for k, v in prompt.items() if v["class_type"] == "SanaSprintEmptyLatent")
    widgets = {"10": {"resolution": 64}, latent: {"width": 64, "height": 64, "aspect_ratio": "custom"},
               distill: {"steps": 2, "preview_every": 1, "save_every": 0, "output_name": f"browser_{name}",
                         "learning_rate": 1e-3}}
    if prompt[distill]["class_type"] == "SanaSprintDistill":
        widgets[distill].update(rank=4, alpha=4.0)
    if prompt[distill]["class_type"] == "SanaSprintPersonalize":
        widgets[distill].update(rank=4, teacher_rank=4, teacher_steps=2)
    for k, v in prompt.items():
        if v["class_type"] in ("SanaSprintControlNetApply",):
            widgets[k] = {"width": 64, "height": 64}
        if v["class_type"] == "SanaSprintHEDPreprocessor":
            widgets[k] = {"detect_resolution": 64}
    return widgets


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.fixtures.comfy_training import write_tiny_teacher, write_training_images

    check_tools()
    base = new_base(tmp_path_factory, "comfy_base_workflows")
    write_tiny_teacher(base / "models")
    write_training_images(base / "input" / "sana_sprint_training")
    write_training_images(base / "input" / "sana_sprint_personalize")
    write_workflow_inputs(base)
    srv = ComfyServer(Path(COMFYUI_DIR), base, base / "server.log")
    try:
        srv.wait_ready("SanaSprintSampler")
        status, answer = srv.post("/settings", SETTINGS)
        assert status == 200, answer
        yield srv
    finally:
        srv.stop()
        print(f"\n--- ComfyUI log (tail) ---\n{srv.log_tail(40)}")


@pytest.fixture(scope="module")
def seen(server, tmp_path_factory):
    """What the page made of every workflow (one browser session for all of them)."""
    out = tmp_path_factory.mktemp("browser_workflows")
    plan = {"workflows": [{"name": name, "title": BUILD.TITLES[name], "file": str(BUILD.ui_path(name)), "run": True,
                           "widgets": _ci_widgets(name)} for name in BUILD.WORKFLOWS],
            "templates": {"module": PACK, "names": [BUILD.TITLES[name] for name in BUILD.WORKFLOWS]}}
    (out / "plan.json").write_text(json.dumps(plan))
    cmd = [NODE, str(REPO / "tests" / "e2e" / "browser_workflows.mjs"), "--url", server.url, "--plan",
           str(out / "plan.json"), "--out", str(out), "--playwright", PLAYWRIGHT_DIR, "--chromium", CHROMIUM]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n{server.log_tail(40)}"
    result = json.loads(done.stdout.strip().splitlines()[-1])
    (out / "seen.json").write_text(json.dumps(result, indent=1))  # for a look after a failure
    if UPDATE_IMAGES:
        for name in BUILD.WORKFLOWS:
            shutil.copyfile(out / f"{name}.jpg", BUILD.thumbnail_path(name))
        shutil.copyfile(out / "templates.png", TEMPLATES_SCREENSHOT)
    return result


def test_every_ui_workflow_is_in_the_plan():
    ui_files = sorted(p.name for p in (REPO / "workflows").glob("*.json"))
    assert ui_files == sorted(BUILD.ui_path(name).name for name in BUILD.WORKFLOWS)
    assert sorted(API) == sorted(BUILD.WORKFLOWS)


@pytest.mark.parametrize("name", sorted(BUILD.WORKFLOWS))
def test_graph_to_prompt_equals_the_api_twin(seen, name):
    prompt = seen["workflows"][name]["prompt"]
    twin = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in API[name].items()}
    got = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}
    assert got == twin


def _overlaps(boxes: list[dict]) -> list[tuple]:
    def hit(a, b):
        return a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]

    return [(a["type"], a["id"], b["type"], b["id"]) for a, b in combinations(boxes, 2) if hit(a, b)]


def _grown(layout: dict, ui: dict) -> list[tuple]:
    """Nodes drawn larger than the size the file gives them (the layout would not hold after a run)."""
    saved = {n["id"]: n["size"] for n in ui["nodes"]}
    title = BUILD.NODE_TITLE_HEIGHT
    return [(b["type"], b["id"], [b["w"], b["h"] - title], saved[b["id"]]) for b in layout["boxes"]
            if b["w"] > saved[b["id"]][0] + 0.5 or b["h"] - title > saved[b["id"]][1] + 0.5]


@pytest.mark.parametrize("name", sorted(BUILD.WORKFLOWS))
def test_nodes_do_not_overlap_before_and_after_a_run(seen, name):
    entry = seen["workflows"][name]
    ui = json.loads(BUILD.ui_path(name).read_text())
    for when in ("loaded", "afterRun"):
        assert _overlaps(entry[when]["boxes"]) == [], when
        assert _grown(entry[when], ui) == [], when


@pytest.mark.parametrize("name", sorted(BUILD.WORKFLOWS))
def test_workflow_fits_the_window_at_a_readable_zoom(seen, name):
    loaded = seen["workflows"][name]["loaded"]
    assert loaded["viewport"] == [1600, 1000]
    assert loaded["fitScale"] >= loaded["lowQualityScale"] > 0, loaded


@pytest.mark.parametrize("name", sorted(BUILD.WORKFLOWS))
def test_workflow_runs_from_the_queue_button(seen, name):
    run = seen["workflows"][name]["run"]
    assert run["status"] == "success", run["messages"]


def test_template_browser_shows_title_description_and_thumbnail(server, seen):
    """Each card: the title, the description 0.3.64's browser derives from it, and our thumbnail (the
    image the card loaded has the committed JPEG's size; the server serves that file beside the workflow)."""
    cards = {c["name"]: c for c in seen["cards"]}
    for name in BUILD.WORKFLOWS:
        title = BUILD.TITLES[name]
        card = cards[title]
        assert card["found"], title
        assert card["title"] == title
        assert card["description"] == title.replace("-", " ").replace("_", " ").strip()
        with Image.open(BUILD.thumbnail_path(name)) as thumb:  # committed, a JPEG of the graph
            assert thumb.format == "JPEG"
            assert (card["image"]["width"], card["image"]["height"]) == thumb.size, card
        status, body = server.get_bytes(f"/api/workflow_templates/{PACK}/{quote(title)}.jpg")
        assert status == 200 and body == BUILD.thumbnail_path(name).read_bytes(), title
    assert seen["pageErrors"] == []
