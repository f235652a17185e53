"""The README's commands, run as written where that is possible offline.

Every `hf download` command of the README runs in bash, from a fresh folder standing for the ComfyUI
folder, with `hf` being the installed huggingface_hub CLI whose two download functions only create the
files the public repository holds (tests/fixtures/fake_hf.py): its own argument parsing and pattern
handling decide what would be fetched, and any warning (such as "Ignoring --include since filenames
have been explicitly set") fails. Afterwards each model is where the loaders look for it.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sana_sprint_core.model_files import KINDS, find_model

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _hf_commands() -> list[str]:
    """Every command line of the README that runs `hf download` (inline code spans and code blocks)."""
    spans = re.findall(r"`([^`\n]*\bhf download [^`\n]*)`", README)
    blocks = [line.strip() for block in re.findall(r"```bash\n(.*?)```", README, re.S) for line in block.splitlines()
              if "hf download" in line]
    return list(dict.fromkeys(spans + blocks))


@pytest.fixture()
def comfy_folder(tmp_path):
    """An empty 'ComfyUI folder' and a PATH whose `hf` is the offline stand-in."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "hf"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m tests.fixtures.fake_hf "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    folder = tmp_path / "ComfyUI"
    folder.mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
    return folder, env


def _run(command: str, cwd: Path, env: dict) -> None:
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"README command failed:\n  {command}\n{done.stdout}\n{done.stderr}"


def test_the_readme_downloads_every_model_the_workflows_use():
    commands = _hf_commands()
    repos = {entry.repo for kind in ("dit", "text_encoder", "vae", "controlnet", "hed") for entry in KINDS[kind][:1]}
    assert {repo for repo in repos if any(repo in c for c in commands)} == repos, commands


def test_each_hf_download_command_runs_and_puts_the_model_where_the_loaders_look(comfy_folder):
    folder, env = comfy_folder
    for command in _hf_commands():
        _run(command, folder, env)
    models = folder / "models"
    for kind in ("dit", "text_encoder", "vae", "controlnet", "hed"):
        default = KINDS[kind][0]
        assert find_model(models, kind) == models / default.folder / default.name, kind
    dit = models / "diffusion_models" / KINDS["dit"][0].name
    # The DiT command fetches the transformer of the pipeline only, not its Gemma and DC-AE copies.
    assert (dit / "model_index.json").is_file() and (dit / "transformer" / "config.json").is_file()
    assert list((dit / "transformer").glob("*.safetensors")) and not (dit / "text_encoder").exists()
    gemma = models / "text_encoders" / KINDS["text_encoder"][0].name
    assert {"config.json", "tokenizer.json", "tokenizer.model"} <= {p.name for p in gemma.iterdir()}
    assert not (models / "controlnet" / "checkpoints").exists() or not any((models / "controlnet" / "checkpoints").iterdir())


def test_the_fake_hf_catches_the_include_mistake(comfy_folder):
    """The stand-in is strict where the real CLI only warns: the old README line fails."""
    folder, env = comfy_folder
    old = ("hf download Efficient-Large-Model/Sana_Sprint_1.6B_1024px_diffusers --include model_index.json "
           '"transformer/*" --local-dir models/diffusion_models/Sana_Sprint_1.6B_1024px_diffusers')
    with pytest.raises(AssertionError, match="Ignoring `--include` since filenames have been explicitly set"):
        _run(old, folder, env)
