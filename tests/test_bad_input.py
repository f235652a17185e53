"""Bad input and faults, as a user meets them: each case asserts the exception type (or exit code, or
warning) and the words of its message. Every case id is a row of docs/reliability.md
(tests/test_reliability_doc.py keeps the two in step). Cases of the nodes are in
tests/nodes/test_bad_input_nodes.py, over HTTP in tests/e2e/test_real_bad_input.py.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from sana_sprint_core.controlnet import ControlNetConfig, SanaControlNet, sample_with_control
from sana_sprint_core.dit import SanaSprintDiT
from sana_sprint_core.dit_config import DiTConfig
from sana_sprint_core.sampler import sample
from sana_sprint_core.text_encoder import _prepare_prompts
from tests.fixtures.distill import trainer_config, write_synthetic_cache, write_teacher

REPO = Path(__file__).resolve().parents[1]
TINY = DiTConfig(hidden_size=32, num_layers=1, num_heads=2, cross_heads=2, caption_channels=16)


@pytest.fixture(scope="module")
def dit():
    torch.manual_seed(0)
    return SanaSprintDiT(TINY).eval()


def _text(batch: int = 1):
    return torch.randn(batch, 5, 16), torch.ones(batch, 5, dtype=torch.int64)


# --------------------------------------------------------------------------------------------------
# The sampler (library): every argument a caller can get wrong, refused before any work is done

SAMPLER_CASES = [
    ("B01", dict(width=100000), ValueError, "width 100000 is larger than 4096"),
    ("B02", dict(width=1000), ValueError, "width must be a positive multiple of 32 .* nearest valid: 992 or 1024"),
    ("B03", dict(height=0), ValueError, "height must be a positive multiple of 32"),
    ("B04", dict(width="1024"), TypeError, "width must be a whole number of pixels, got '1024'"),
    ("B05", dict(guidance=math.nan), ValueError, "guidance must be a finite number >= 0"),
    ("B06", dict(guidance=math.inf), ValueError, "guidance must be a finite number >= 0"),
    ("B07", dict(guidance=-1.0), ValueError, "guidance must be a finite number >= 0 .* got -1.0"),
    ("B08", dict(guidance=torch.tensor([4.5, math.nan])), ValueError, r"guidance must be a finite .* \[4.5, nan\]"),
    ("B09", dict(steps=0), ValueError, "steps must be a whole number from 1 to 4"),
    ("B10", dict(steps=9), ValueError, "steps must be a whole number from 1 to 4 .* got 9"),
    ("B11", dict(steps=2.5), ValueError, "steps must be a whole number from 1 to 4 .* got 2.5"),
    ("B12", dict(denoise=math.nan), ValueError, r"denoise must be in \(0, 1\], got nan"),
    ("B13", dict(denoise=0.0), ValueError, r"denoise must be in \(0, 1\], got 0.0"),
    ("B14", dict(max_timestep=math.nan), ValueError, "max_timestep must be in"),
    ("B15", dict(timesteps=[math.nan, 0.0]), ValueError, "timesteps must lie in"),
    ("B16", dict(timesteps=[1.5, 1.2, 1.0, 0.8, 0.5, 0.2, 0.0]), ValueError, "timesteps give 6 steps; .* at most 4"),
    ("B17", dict(timesteps=[1.0, 1.2, 0.0]), ValueError, "timesteps must be strictly decreasing"),
    ("B18", dict(latent=torch.full((1, 32, 2, 2), math.nan), denoise=0.5), ValueError,
     r"latent \(the image to start from\) holds NaN"),
    ("B19", dict(latent=torch.zeros(1, 32, 3, 2), denoise=0.5), ValueError, r"latent has shape \(1, 32, 3, 2\)"),
    ("B20", dict(noise=torch.zeros(1, 32, 1, 1)), ValueError, r"noise has shape \(1, 32, 1, 1\), expected"),
    ("B21", dict(seed=1, generator=torch.Generator()), ValueError, "pass either seed or generator, not both"),
]


@pytest.mark.parametrize("case, kwargs, error, words", SAMPLER_CASES, ids=[c[0] for c in SAMPLER_CASES])
def test_sampler_refuses(dit, case, kwargs, error, words):
    embeds, mask = _text()
    args = {"width": 64, "height": 64, "steps": 2, **kwargs}
    with pytest.raises(error, match=words):
        sample(dit, embeds, mask, **args)


PROMPT_CASES = [
    ("B22", None, TypeError, "prompts must be a str or a list of str, got NoneType"),
    ("B23", [], ValueError, "prompts is empty"),
    ("B24", ["a cat", 3], TypeError, r"prompts\[1\] must be a str, got int"),
]


@pytest.mark.parametrize("case, prompts, error, words", PROMPT_CASES, ids=[c[0] for c in PROMPT_CASES])
def test_prompts_are_refused_by_name(case, prompts, error, words):
    with pytest.raises(error, match=words):
        _prepare_prompts(prompts, lowercase=False)


@pytest.mark.parametrize("case, strength, latent, words", [
    ("B25", math.nan, None, "ControlNet strength must be a finite number"),
    ("B26", torch.tensor([1.0, math.inf]), None, "ControlNet strength must be a finite number"),
    ("B27", 1.0, math.nan, r"control_latent \(the encoded control image\) holds NaN"),
], ids=["B25", "B26", "B27"])
def test_controlnet_strength_and_control_image(dit, case, strength, latent, words):
    cn = SanaControlNet(ControlNetConfig(TINY, 1, "nvlabs")).eval()
    control = torch.zeros(1, 32, 2, 2) if latent is None else torch.full((1, 32, 2, 2), latent)
    embeds, mask = _text()
    with pytest.raises(ValueError, match=words):
        sample_with_control(dit, cn, control, embeds, mask, strength=strength, width=64, height=64, steps=1)


# --------------------------------------------------------------------------------------------------
# The generate CLI: every argument checked before a model is loaded

def _generate(tmp_path, *args) -> subprocess.CompletedProcess:
    """`python -m sana_sprint_core generate` on an empty models folder: an argument error must come
    before the missing-models error (nothing is loaded first)."""
    cmd = [sys.executable, "-m", "sana_sprint_core", "generate", "--models-dir", str(tmp_path / "empty"),
           "--prompt", "a cat", "--device", "cpu", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)


GENERATE_CASES = [
    ("C01", ["--width", "1000"], "error: width must be a positive multiple of 32 .*nearest valid: 992 or 1024"),
    ("C02", ["--width", "100000"], "error: width 100000 is larger than 4096"),
    ("C03", ["--guidance", "nan"], "error: guidance must be a finite number >= 0"),
    ("C04", ["--guidance", "-2"], "error: guidance must be a finite number >= 0"),
    ("C05", ["--timesteps", "fast,slow"], "error: --timesteps takes TrigFlow times separated by commas"),
    ("C06", ["--steps", "3", "--timesteps", "1.5708,0"], "error: --steps and --timesteps both given"),
    ("C07", ["--steps", "9"], "error: steps must be a whole number from 1 to 4"),
    ("C08", ["--timesteps", "1.2,1.3,0"], "error: timesteps must be strictly decreasing"),
    ("C09", ["--device", "tpu0"], "error: --device 'tpu0' is not a torch device"),
    ("C10", ["--prompt", "  "], "error: --prompt is empty"),
    ("C11", [], "error: model files missing under .*empty:\n- dit .*huggingface.co/Efficient-Large-Model"),
]


@pytest.mark.parametrize("case, args, words", GENERATE_CASES, ids=[c[0] for c in GENERATE_CASES])
def test_generate_cli_says_what_is_wrong(tmp_path, case, args, words):
    done = _generate(tmp_path, *args)
    assert done.returncode == 2, done.stderr
    assert re.search(words, done.stderr, re.S), done.stderr
    assert "Traceback" not in done.stderr


def test_generate_cli_without_cuda(tmp_path, monkeypatch):
    """C12: --device cuda where torch sees no GPU (CUDA_VISIBLE_DEVICES hides any)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    done = _generate(tmp_path, "--device", "cuda")
    assert done.returncode == 2 and "error: --device cuda: this torch" in done.stderr
    assert "sees no CUDA GPU; use --device cpu" in done.stderr


def test_generate_cli_help_shows_defaults(tmp_path):
    """C13"""
    done = subprocess.run([sys.executable, "-m", "sana_sprint_core", "generate", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "--width WIDTH" in done.stdout and "(default: 1024)" in done.stdout and "(default: 4.5)" in done.stdout


# --------------------------------------------------------------------------------------------------
# The trainer: config, data, output folder, checkpoints

@pytest.fixture()
def workspace(tmp_path):
    write_teacher(tmp_path / "teacher.safetensors")
    write_synthetic_cache(tmp_path / "cache")
    return tmp_path


def _config_file(tmp_path: Path, values: dict, name: str = "run.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(values))
    return path


def _cli(*args, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainers.distill", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})


CONFIG_CASES = [
    ("T01", {"optim": {"lr": -1e-4}}, "config key optim.lr must be positive, got -0.0001"),
    ("T02", {"optim": {"lr": math.nan}}, "config key optim.lr must be a finite number, got nan"),
    ("T03", {"distill": {"cfg_scales": [4.0, math.inf]}}, r"config key distill.cfg_scales must be a finite number"),
    ("T04", {"data": {"resolution": 100000}}, "config key data.resolution must be at most 4096"),
    ("T05", {"data": {"resolution": 1000}}, "config key data.resolution must be a multiple of 32, got 1000"),
    ("T06", {"train": {"batch_size": 0}}, "config key train.batch_size must be positive, got 0"),
    ("T07", {"optim": {"lerning_rate": 1e-4}}, r"unknown config key\(s\) optim.lerning_rate"),
    ("T08", {"train": {"max_steps": "many"}}, "config key train.max_steps must be int, got 'many'"),
    ("T09", {"optim": {"weight_decay": -0.1}}, "config key optim.weight_decay must be >= 0, got -0.1"),
    ("T10", {"distill": {"largest_timestep_prob": 1.5}}, r"distill.largest_timestep_prob must be in \[0, 1\]"),
    ("T26", {"train": {"validation_steps": [1, 8]}}, r"train.validation_steps must hold step counts from 1 to 4"),
]


@pytest.mark.parametrize("case, change, words", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_errors_name_the_key(workspace, case, change, words):
    from trainers.config import config_from_dict

    values = trainer_config(workspace)
    for section, keys in change.items():
        values[section] = {**values.get(section, {}), **keys}
    with pytest.raises(ValueError, match=words):
        config_from_dict(values)


def test_trainer_cli_prints_config_errors_without_traceback(workspace):
    """T11: a bad value in the file: exit 2, `error: ...` naming the key, no traceback, nothing written."""
    values = trainer_config(workspace, optim={"lr": -1.0})
    done = _cli("--config", str(_config_file(workspace, values)))
    assert done.returncode == 2
    assert done.stderr.startswith("error: config key optim.lr must be positive") and "Traceback" not in done.stderr
    assert not Path(values["train"]["output_dir"]).exists()


@pytest.mark.parametrize("case, name, text, words", [
    ("T12", "bad.yaml", "optim:\n  lr: [1e-4\n", r"error: config file .*bad.yaml is not valid YAML"),
    ("T13", "bad.json", '{"optim": {"lr": }', r"error: config file .*bad.json is not valid JSON"),
    ("T14", "gone.yaml", None, r"error: config file not found: .*gone.yaml"),
    ("T15", "run.toml", "x = 1", r"error: config file .*run.toml must end in .yaml, .yml or .json"),
], ids=["T12", "T13", "T14", "T15"])
def test_trainer_cli_names_the_config_file(tmp_path, case, name, text, words):
    if text is not None:
        (tmp_path / name).write_text(text)
    done = _cli("--config", str(tmp_path / name))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert re.search(words, done.stderr), done.stderr


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_finished_run_is_never_replaced(workspace):
    """T16: a second run into the same train.output_dir without resume is refused; every file stays."""
    from trainers.config import config_from_dict
    from trainers.distill import train

    cfg = config_from_dict(trainer_config(workspace))
    out = train(cfg)
    before = _snapshot(out)
    assert {"sprint_lora.safetensors", "loss.csv", "checkpoints/latest.json"} <= set(before)
    with pytest.raises(FileExistsError, match=r"already holds a run \(checkpoints, sprint_lora.safetensors, sprint_student.safetensors, "
                                              r"loss.csv\); nothing was changed. Continue it with --resume latest"):
        train(cfg)
    done = _cli("--config", str(_config_file(workspace, trainer_config(workspace))))  # T17: the CLI says so too
    assert done.returncode == 2 and "error: train.output_dir" in done.stderr and "already holds a run" in done.stderr
    assert _snapshot(out) == before


def test_damaged_latest_pointer_is_named(workspace):
    """T18/T19: latest.json damaged, or pointing at a missing folder: named, with the way out."""
    from trainers.config import config_from_dict
    from trainers.distill import train

    out = train(config_from_dict(trainer_config(workspace)))
    latest = out / "checkpoints" / "latest.json"
    resume = config_from_dict(trainer_config(workspace, train={"resume": "latest", "max_steps": 4}))
    latest.write_text('{"checkpoint": "step_2"')  # T18: cut short
    with pytest.raises(ValueError, match=r"latest.json is damaged \(JSONDecodeError.*resume from a checkpoint folder "
                                         r"instead \(--resume .*step_<N>\), or delete"):
        train(resume)
    latest.write_text('{"checkpoint": "step_9"}')  # T19: a folder that is not there
    with pytest.raises(ValueError, match=r"latest.json points at 'step_9', which is not a checkpoint folder"):
        train(resume)


def _image_folder(root: Path, sizes=((64, 64), (64, 64))) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), (40 * i, 90, 160)).save(root / f"img{i}.png")
        (root / f"img{i}.txt").write_text(f"caption {i}")
    return root


def test_training_cache_follows_the_folders_files(tmp_path):
    """T20: an edited caption or an added image makes the CLI's cache stale (it used to compare paths)."""
    from trainers.config import config_from_dict
    from trainers.precompute import fingerprint

    images = _image_folder(tmp_path / "images")
    cfg = config_from_dict({"model": {"teacher": "t"}, "data": {"image_dir": str(images), "cache_dir": "c"}})
    first = fingerprint(cfg)
    assert fingerprint(cfg) == first
    (images / "img0.txt").write_text("a new caption, longer")
    edited = fingerprint(cfg)
    assert edited != first
    Image.new("RGB", (64, 64)).save(images / "img9.png")
    assert fingerprint(cfg) != edited


def test_tiny_training_image_is_named_in_a_warning(tmp_path):
    """T21: a 1x1 image is upscaled into a training sample: a warning names the file and the factor."""
    from trainers.data import load_image

    _image_folder(tmp_path, sizes=((1, 1),))
    with pytest.warns(UserWarning, match=r"img0.png is 1x1 px and is upscaled 64.0x to 64x64"):
        load_image(tmp_path / "img0.png", (64, 64))
    _image_folder(tmp_path / "ok", sizes=((64, 48),))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image(tmp_path / "ok" / "img0.png", (64, 64))  # 1.3x: no warning


@pytest.mark.parametrize("case, setup, error, words", [
    ("T22", lambda d: None, FileNotFoundError, r"data.image_dir .*nowhere is not a folder of images"),
    ("T23", lambda d: (_image_folder(d), (d / "img1.txt").unlink()), ValueError,
     r"1 image\(s\) without a .txt caption: img1.png"),
    ("T24", lambda d: (_image_folder(d), (d / "img0.png").write_bytes(b"not a png")), ValueError,
     r"1 unreadable image\(s\): img0.png \(UnidentifiedImageError"),
    ("T25", lambda d: (d.mkdir(), (d / "notes.txt").write_text("x")), ValueError, r"holds no images"),
], ids=["T22", "T23", "T24", "T25"])
def test_bad_training_folders_name_every_file(tmp_path, case, setup, error, words):
    from trainers.data import scan_dataset

    folder = tmp_path / ("nowhere" if case == "T22" else "images")
    setup(folder)
    with pytest.raises(error, match=words):
        scan_dataset(folder)


# --------------------------------------------------------------------------------------------------
# kill -9 while a checkpoint is being written, then resume: the exact uninterrupted result

_KILL_IN_COMMIT = """
import os, signal, sys
from trainers import checkpoint
real_commit = checkpoint.commit
def commit(tmp, state, config_json):
    if state["step"] == int(os.environ["KILL_AT_STEP"]):
        (tmp / "state.json").write_text('{"step": ')  # half written, as a crash leaves it
        os.kill(os.getpid(), signal.SIGKILL)
    return real_commit(tmp, state, config_json)
checkpoint.commit = commit
from trainers.distill import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_during_checkpoint_write_then_resume_is_exact(workspace):
    """K01: SIGKILL in the middle of writing the step-4 checkpoint. The partial folder is never taken for
    a checkpoint; --resume latest continues from step 2 and ends with the losses and LoRA of a run that
    was never interrupted."""
    from sana_sprint_core.checkpoint_io import read_state_dict

    common = {"max_steps": 6, "save_every": 2}
    straight = trainer_config(workspace, train={**common, "output_dir": str(workspace / "straight")})
    killed = trainer_config(workspace, train={**common, "output_dir": str(workspace / "killed")})
    assert _cli("--config", str(_config_file(workspace, straight, "straight.json"))).returncode == 0
    script = workspace / "kill_in_commit.py"
    script.write_text(_KILL_IN_COMMIT)
    cmd = [sys.executable, str(script), "--config", str(_config_file(workspace, killed, "killed.json"))]
    env = {**os.environ, "PYTHONPATH": str(REPO), "KILL_AT_STEP": "4"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL
    out = workspace / "killed"
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 2
    assert not (out / "checkpoints" / "step_4").exists()
    resumed = _cli("--config", str(out.parent / "killed.json"), "--resume", "latest")
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "loss.csv").read_text() == (workspace / "straight" / "loss.csv").read_text()
    a = read_state_dict(workspace / "straight" / "sprint_lora.safetensors")
    b = read_state_dict(out / "sprint_lora.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------------------
# workflows/run.py (the README's headless command)

@pytest.mark.parametrize("case, make, server, words", [
    ("R01", lambda d: REPO / "workflows" / "api" / "sana_sprint_1step_text_to_image.json", "http://127.0.0.1:9",
     r"error: cannot reach ComfyUI at 127.0.0.1:9 \(.*\); start it .* or pass its address with --server"),
    ("R02", lambda d: next((REPO / "workflows").glob("*1 step.json")), "http://127.0.0.1:9",
     r"error: .*1 step.json is a UI workflow .*use the twin in workflows/api/"),
    ("R03", lambda d: (d / "x.json").write_text("[1, 2]") and d / "x.json", "http://127.0.0.1:9",
     r"error: .*x.json is not an API-format workflow"),
], ids=["R01", "R02", "R03"])
def test_headless_runner_says_what_to_do(tmp_path, case, make, server, words):
    path = make(tmp_path)
    done = subprocess.run([sys.executable, str(REPO / "workflows" / "run.py"), str(path), "--out",
                           str(tmp_path / "o.png"), "--server", server], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and re.search(words, done.stderr), done.stderr
    assert not (tmp_path / "o.png").exists()
