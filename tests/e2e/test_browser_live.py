"""Browser end to end of live mode (opt-in): ComfyUI's real frontend in headless Chromium.

    COMFYUI_DIR=/path/to/ComfyUI SANA_BROWSER_E2E=1 PLAYWRIGHT_CORE_DIR=/path/with/node_modules \
        /path/to/comfy-venv/bin/python -m pytest tests/e2e/test_browser_live.py -v

Needs Debian's chromium (CHROMIUM, default /usr/bin/chromium), Node.js and playwright-core from npm
installed outside the repository (`npm install --prefix /path playwright-core`; PLAYWRIGHT_CORE_DIR
is that path). The test starts ComfyUI with tiny random models, opens the page, loads the live
text-to-image workflow, switches Live on, types into the prompt and draws a stroke on a scribble
pad, and checks that each time a new image appears in the live preview node without Queue being
pressed (tests/e2e/browser_live.mjs). The screenshot goes to docs/images/live_preview.png.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.e2e.browser import CHROMIUM, COMFYUI_DIR, MARKS, NODE, PLAYWRIGHT_DIR, SETTINGS, check_tools
from tests.e2e.comfy_server import REPO, ComfyServer, new_base
from workflows.build import ui_path

SCREENSHOT = REPO / "docs" / "images" / "live_preview.png"
WORKFLOW = ui_path("sana_sprint_live_text_to_image")
SCRIBBLE_WORKFLOW = ui_path("sana_sprint_live_scribble_controlnet")

pytestmark = MARKS


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.fixtures.comfy_models import COMFY_VAE_NAME, TINY_DCAE, write_tiny_dcae

    SLOW_DCAE = dataclasses.replace(TINY_DCAE, widths=(64, 128, 128, 128, 128, 128))

    check_tools()
    base = new_base(tmp_path_factory, "comfy_base_browser")
    # A wider DC-AE: a 1024 px run then takes seconds on the CPU (about 3 s of decode instead of 0.4),
    # so the typing of step 2b reaches the server while the stale run is still executing.
    write_tiny_dcae(base / "models" / "vae" / COMFY_VAE_NAME, config=SLOW_DCAE)
    srv = ComfyServer(Path(COMFYUI_DIR), base, base / "server.log")
    try:
        srv.wait_ready("SanaSprintLivePreview")
        status, answer = srv.post("/settings", SETTINGS)
        assert status == 200, answer
        srv.base = base
        yield srv
    finally:
        srv.stop()
        print(f"\n--- ComfyUI log (tail) ---\n{srv.log_tail(40)}")


def _history_images(server, node_id: str) -> set[str]:
    names = set()
    for entry in server.get("/history").values():
        for item in entry.get("outputs", {}).get(str(node_id), {}).get("images", []):
            names.add(item["filename"])
    return names


def _busy_prompt(path: Path) -> Path:
    """An API prompt that keeps the server busy for seconds (4 steps on a 4096 px batch of 16, latents
    saved), written to `path`."""
    base = json.loads((REPO / "workflows" / "api" / "sana_sprint_4step_text_to_image.json").read_text())
    prompt = {k: base[k] for k in ("1", "2", "4", "5", "6")}
    prompt["5"]["inputs"].update(width=4096, height=4096, batch_size=16, aspect_ratio="custom")
    prompt["9"] = {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": "latents/busy"}}
    path.write_text(json.dumps(prompt))
    return path


def _drive(server, workflow: Path, screenshot: Path, busy: Path | None = None) -> dict:
    """Run browser_live.mjs on `workflow` (with the busy-server step when `busy` is given); returns what it saw."""
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    cmd = [NODE, str(REPO / "tests" / "e2e" / "browser_live.mjs"), "--url", server.url, "--workflow", str(workflow),
           "--playwright", PLAYWRIGHT_DIR, "--chromium", CHROMIUM, "--screenshot", str(screenshot)]
    cmd += ["--busy-prompt", str(busy)] if busy else []
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n{server.log_tail(40)}"
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(seen, indent=1))
    return seen


def test_live_preview_updates_on_typing_and_drawing_without_queue(server, tmp_path):
    seen = _drive(server, WORKFLOW, SCREENSHOT, busy=_busy_prompt(tmp_path / "busy.json"))

    # Different images, each produced by a run that live mode queued (and the server ran).
    assert len({seen["first"], seen["typed"], seen["afterStale"], seen["drawn"]}) == 4
    text_live, pad_live = seen["liveNodes"]
    assert {seen["first"], seen["typed"], seen["afterStale"]} <= _history_images(server, text_live)
    assert seen["drawn"] in _history_images(server, pad_live)
    assert 1 <= seen["runsWhileTyping"] <= 4  # 22 keystrokes, debounced and coalesced
    # Typing during a run interrupted that stale run on the server; the last image is of the final text.
    assert seen["interruptedRuns"] == 1
    history = server.get("/history")
    interrupted = [pid for pid, h in history.items()
                   if any(m[0] == "execution_interrupted" for m in h["status"]["messages"])]
    assert len(interrupted) == 1 and text_live not in {int(k) for k in history[interrupted[0]]["outputs"]}
    # Busy server: the live run waiting behind another prompt went stale and was deleted from the queue
    # (it never ran: no history), its replacement ran after that prompt, with the newest text.
    assert seen["busyRuns"] == {"submitted": 2, "interrupted": 1}
    assert seen["staleId"] not in history and seen["busyId"] in history
    assert history[seen["busyId"]]["status"]["status_str"] == "success"
    last = max(history.values(), key=lambda h: h["prompt"][0] if str(text_live) in h["outputs"] else -1)
    assert last["prompt"][0] > history[seen["busyId"]]["prompt"][0]
    assert last["outputs"][str(text_live)]["images"][0]["filename"] == seen["afterBusy"]
    encode = next(n for n in last["prompt"][2].values() if n["class_type"] == "SanaSprintTextEncode")
    assert encode["inputs"]["text"] == seen["finalText"] and seen["finalText"].endswith(", snow and stars at night with fog")
    # the sampler's per-step previews were shown in the prompt branch's live node (one per run and
    # step; the workflow samples in 1 step), and none in the scribble branch, which has no sampler
    assert seen["stepPreviews"].get(str(text_live), 0) >= 2 and str(pad_live) not in seen["stepPreviews"]
    assert seen["stats"]["rejected"] == 0 and seen["pageErrors"] == []
    # the stage times shown above each live image: all measured for the prompt branch (the typed
    # prompt re-ran text encode), none for the scribble-only branch
    text_latency, pad_latency = seen["latency"]
    assert re.fullmatch(r"text encode \d+ ms \| sampling \d+ ms \| decode \d+ ms \| model time \d+ ms", text_latency)
    assert pad_latency == "text encode cached | sampling cached | decode cached | model time 0 ms"

    # The stroke was uploaded as a PNG into input/sana_sprint/ and decodes to white strokes on black.
    from sana_sprint_core.scribble_pad import read_scribble

    grey = read_scribble(server.base / "input" / seen["scribble"], 256, 256)
    assert 0.01 < float((grey > 0.5).float().mean()) < 0.5
    assert set(grey.unique().tolist()) <= {0.0, 1.0}
    assert SCREENSHOT.stat().st_size > 10_000


def test_live_scribble_controlnet_workflow_follows_prompt_and_strokes(server, tmp_path):
    """The shipped live scribble -> HED ControlNet workflow: one live preview fed by the pad through the
    ControlNet; typing and a stroke each give a new image without Queue, a stale run is interrupted."""
    seen = _drive(server, SCRIBBLE_WORKFLOW, tmp_path / "live_scribble.png")
    live, pad_live = seen["liveNodes"]
    assert live == pad_live  # the workflow's own pad and preview, no added branch
    assert len({seen["first"], seen["typed"], seen["afterStale"], seen["drawn"]}) == 4
    assert {seen["first"], seen["typed"], seen["afterStale"], seen["drawn"]} <= _history_images(server, live)
    assert seen["interruptedRuns"] == 1 and seen["stats"]["rejected"] == 0 and seen["pageErrors"] == []
    assert seen["stepPreviews"].get(str(live), 0) >= 3  # 1-step sampling per run: typing, typing, stroke
    history = server.get("/history")
    last = max(history.values(), key=lambda h: h["prompt"][0] if str(live) in h["outputs"] else -1)
    assert last["outputs"][str(live)]["images"][0]["filename"] == seen["drawn"]
    classes = {n["class_type"]: n["inputs"] for n in last["prompt"][2].values()}
    assert classes["SanaSprintScribblePad"]["scribble"] == seen["scribble"]
    assert classes["SanaSprintHEDPreprocessor"]["mode"] == "drawing"
    assert classes["SanaSprintSampler"]["positive"][0] in {k for k, n in last["prompt"][2].items()
                                                           if n["class_type"] == "SanaSprintControlNetApply"}
    assert re.fullmatch(r"text encode (cached|\d+ ms) \| sampling \d+ ms \| decode \d+ ms \| model time \d+ ms",
                        seen["latency"][0])

    from sana_sprint_core.scribble_pad import read_scribble

    grey = read_scribble(server.base / "input" / seen["scribble"], 1024, 1024)
    assert 0.001 < float((grey > 0.5).float().mean()) < 0.5 and set(grey.unique().tolist()) <= {0.0, 1.0}
