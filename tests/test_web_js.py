"""The frontend extension's pure logic (web/lib/) under Node's built-in test runner (tests/web/).

Node is part of the CI machines; without it these tests are skipped with that reason.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="node (Node.js >= 20) is not installed")


@needs_node
def test_node_test_runner_passes_every_web_test():
    done = subprocess.run([NODE, "--test", "tests/web/"], cwd=REPO, capture_output=True, text=True, timeout=180)
    report = done.stdout + done.stderr
    assert done.returncode == 0, report[-4000:]
    passed = int(re.search(r"^# pass (\d+)$", report, re.M).group(1))
    assert re.search(r"^# fail 0$", report, re.M), report[-4000:]
    files = sorted((REPO / "tests" / "web").glob("*.test.mjs"))
    assert len(files) >= 6 and passed >= 35, (passed, [f.name for f in files])


def test_web_modules_use_only_relative_or_comfyui_imports():
    """ComfyUI serves web/ at /extensions/<pack>/: imports must be relative (lib/) or the public shims."""
    allowed = {"../../scripts/app.js", "../../scripts/api.js"}
    for path in sorted((REPO / "web").rglob("*.js")):
        for spec in re.findall(r"^import .*? from \"([^\"]+)\";$", path.read_text(), re.M):
            assert spec.startswith("./") or spec in allowed, f"{path.name}: import {spec}"
            if path.parent.name == "lib":
                assert spec.startswith("./"), f"web/lib/{path.name} must stay DOM- and ComfyUI-free: {spec}"
