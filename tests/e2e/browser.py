"""What the browser tests share: where Chromium and playwright-core are, when they run, page settings."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
PLAYWRIGHT_DIR = os.environ.get("PLAYWRIGHT_CORE_DIR", "")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
NODE = shutil.which("node")

MARKS = [
    pytest.mark.skipif(not COMFYUI_DIR or os.environ.get("SANA_BROWSER_E2E") != "1",
                       reason="opt-in: set COMFYUI_DIR and SANA_BROWSER_E2E=1 (see docs/testing.md)"),
    pytest.mark.skipif(NODE is None, reason="node (Node.js >= 20) is not installed"),
]

# No first-run template browser or dialogs over the canvas.
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Workflow.ShowMissingModelsWarning": False,
            "Comfy.Workflow.ShowMissingNodesWarning": False, "Comfy.Minimap.Visible": False}


def check_tools() -> None:
    """Fail (not skip) when the browser or its driver is missing: the test was asked to run."""
    if not (Path(PLAYWRIGHT_DIR) / "node_modules" / "playwright-core").is_dir():
        pytest.fail(f"PLAYWRIGHT_CORE_DIR={PLAYWRIGHT_DIR!r} has no node_modules/playwright-core; "
                    "run `npm install --prefix <dir> playwright-core` outside the repository")
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}; `apt-get install chromium` or set CHROMIUM")
