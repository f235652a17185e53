"""2-process CPU runs through `accelerate launch` (gloo): DDP, and FSDP (train.distributed: fsdp) against it.

`accelerate launch --cpu` starts ONE process unless mpirun is set up; `--multi_gpu` with no visible
GPU starts torchrun workers that accelerate runs as MULTI_CPU (gloo), which is what these tests use.
FSDP shards a memory layout, not the algorithm: with the same data and draws per process it must give
DDP's losses and weights up to float32 rounding (gradients are reduced in another order), and a
resumed FSDP run must repeat the straight one exactly. Each run is launched once per module.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sana_sprint_core.checkpoint_io import read_state_dict
from sana_sprint_core.dit_loading import load_dit
from tests.fixtures.distill import trainer_config, write_synthetic_cache, write_teacher
from trainers.distill import LORA_FILE, STUDENT_FILE
from trainers.logs import read_rows

REPO = Path(__file__).resolve().parents[1]
LOSSES = ("loss_scm", "loss_adv", "loss_d")
RTOL, ATOL = 1e-5, 1e-6  # FSDP vs DDP: float32 rounding of differently ordered reductions (measured <= 2e-7)


def _launch(config: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--num_processes", "2", "--num_machines", "1", "--multi_gpu", "--mixed_precision",
           "no", "--dynamo_backend", "no", "-m", "trainers.distill", "--config", str(config)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """runs(name, **sections) -> (output folder, stdout): a 2-process run of 4 iterations, launched once."""
    from tests.fixtures.dcae import TINY, diffusers_dcae, write_diffusers_folder

    root = tmp_path_factory.mktemp("multiprocess")
    write_teacher(root / "teacher.safetensors")
    write_synthetic_cache(root / "cache", n=6, prompts=["a cat"])
    vae = write_diffusers_folder(diffusers_dcae(TINY), root / "vae")
    done = {}

    def run(name: str, **sections):
        if name not in done:
            train = {"max_steps": 4, "batch_size": 1, "output_dir": str(root / name), **sections.pop("train", {})}
            cfg = trainer_config(root, train=train, data={"cache_dir": str(root / "cache"), "vae": str(vae)}, **sections)
            (root / f"{name}.json").write_text(json.dumps(cfg))
            done[name] = root / name, _launch(root / f"{name}.json")
        return done[name]

    return run


VALIDATE = {"validate_every": 4, "validation_steps": [1, 2], "validation_size": [16, 16]}


def losses(out: Path) -> list[tuple]:
    return [(r["phase"], *(float(r[k]) if r[k] else None for k in LOSSES)) for r in read_rows(out / "loss.csv")]


def assert_losses_close(a: Path, b: Path) -> None:
    la, lb = losses(a), losses(b)
    assert [r[0] for r in la] == [r[0] for r in lb] == ["G", "D", "G", "D"]
    for ra, rb in zip(la, lb):
        assert (ra[1:] is None) == (rb[1:] is None)
        for x, y in zip(ra[1:], rb[1:]):
            assert (x is None) == (y is None)
            if x is not None:
                assert np.isfinite(x) and abs(x - y) <= ATOL * 0.1 + RTOL * abs(y), (ra, rb)


def assert_files_close(a: Path, b: Path) -> None:
    sa, sb = read_state_dict(a), read_state_dict(b)
    assert set(sa) == set(sb)
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=RTOL, atol=ATOL)


def held_weights(stdout: str) -> tuple[int, int]:
    found = re.search(r"FSDP: student sharded over 2 processes \(3 blocks \+ root\); this process holds (\d+) of (\d+)",
                      stdout)
    assert found, stdout[-2000:]
    return int(found.group(1)), int(found.group(2))


def test_two_process_ddp_run(runs):
    out, stdout = runs("ddp_lora", train=VALIDATE)
    rows = read_rows(out / "loss.csv")
    assert [r["phase"] for r in rows] == ["G", "D", "G", "D"]
    assert all(torch.isfinite(torch.tensor(float(r["loss_d"] or r["loss_scm"]))) for r in rows)
    ckpt = out / "checkpoints" / "step_00000004"
    assert (ckpt / "rng_rank0.safetensors").is_file() and (ckpt / "rng_rank1.safetensors").is_file()
    # save() checks that both processes hold the same weights; the exported student loads
    assert load_dit(out / STUDENT_FILE).config.guidance_embeds
    assert "FSDP" not in stdout


def test_fsdp_lora_run_equals_ddp(runs):
    """LoRA mode: the sharded base is also the teacher (adapters off); validation samples on both processes."""
    ddp, _ = runs("ddp_lora", train=VALIDATE)
    out, stdout = runs("fsdp_lora", train={"distributed": "fsdp", **VALIDATE})
    local, total = held_weights(stdout)
    assert 0.45 * total <= local <= 0.55 * total  # process 0 holds about half of every tensor's rows
    assert_losses_close(out, ddp)
    assert_files_close(out / LORA_FILE, ddp / LORA_FILE)
    assert_files_close(out / STUDENT_FILE, ddp / STUDENT_FILE)
    assert load_dit(out / STUDENT_FILE).config.guidance_embeds
    pngs = sorted(p.name for p in (out / "validation").iterdir())
    assert pngs == sorted(p.name for p in (ddp / "validation").iterdir()) and len(pngs) == 2
    for name in pngs:  # same samples, up to a rounding step of the 8-bit image
        a, b = (np.asarray(Image.open(d / "validation" / name), dtype=np.int16) for d in (out, ddp))
        assert np.abs(a - b).max() <= 1


def test_fsdp_full_run_equals_ddp_and_writes_full_tensors(runs):
    ddp, _ = runs("ddp_full", model={"mode": "full"})
    out, stdout = runs("fsdp_full", model={"mode": "full"}, train={"distributed": "fsdp"})
    local, total = held_weights(stdout)
    assert 0.45 * total <= local <= 0.55 * total
    assert_losses_close(out, ddp)
    student = load_dit(out / STUDENT_FILE)
    assert student.config.guidance_embeds
    assert_files_close(out / STUDENT_FILE, ddp / STUDENT_FILE)
    # checkpoints: full tensors in DDP's format (same names and shapes), e.g. for a resume with DDP
    ours, theirs = out / "checkpoints" / "step_00000004", ddp / "checkpoints" / "step_00000004"
    for name in ("student.safetensors", "optim_g.safetensors"):
        assert_files_close(ours / name, theirs / name)
    # the heads are DDP in both runs; their conv biases sit before a batch norm (zero gradient up to
    # rounding, which AdamW scales to +-lr steps), so only names and shapes are compared
    for name in ("disc.safetensors", "optim_d.safetensors"):
        a, b = read_state_dict(ours / name), read_state_dict(theirs / name)
        assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}


def test_fsdp_resume_continues_exactly(runs):
    straight, _ = runs("fsdp_full", model={"mode": "full"}, train={"distributed": "fsdp"})
    ckpt = straight / "checkpoints" / "step_00000002"
    resumed, _ = runs("fsdp_full_resumed", model={"mode": "full"}, train={"distributed": "fsdp", "resume": str(ckpt)})
    assert losses(resumed) == losses(straight)[2:]  # a new folder: its loss.csv starts at the resumed step
    a, b = read_state_dict(straight / STUDENT_FILE), read_state_dict(resumed / STUDENT_FILE)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
