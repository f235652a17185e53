"""A 2-process CPU run through `accelerate launch` (DDP over gloo).

`accelerate launch --cpu` starts ONE process unless mpirun is set up; `--multi_gpu` with no visible
GPU starts torchrun workers that accelerate runs as MULTI_CPU (gloo), which is what this test uses.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from sana_sprint_core.dit_loading import load_dit
from tests.fixtures.distill import trainer_config, write_synthetic_cache, write_teacher
from trainers.logs import read_rows

REPO = Path(__file__).resolve().parents[1]


def test_two_process_ddp_run(tmp_path):
    write_teacher(tmp_path / "teacher.safetensors")
    write_synthetic_cache(tmp_path / "cache", n=6)
    (tmp_path / "c.json").write_text(json.dumps(trainer_config(tmp_path, train={"max_steps": 4, "batch_size": 1})))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--num_processes", "2", "--num_machines", "1", "--multi_gpu", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "trainers.distill", "--config", str(tmp_path / "c.json")]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    rows = read_rows(out / "loss.csv")
    assert [r["phase"] for r in rows] == ["G", "D", "G", "D"]
    assert all(torch.isfinite(torch.tensor(float(r["loss_d"] or r["loss_scm"]))) for r in rows)
    ckpt = out / "checkpoints" / "step_00000004"
    assert (ckpt / "rng_rank0.safetensors").is_file() and (ckpt / "rng_rank1.safetensors").is_file()
    # save() checks that both processes hold the same weights; the exported student loads
    assert load_dit(out / "sprint_student.safetensors").config.guidance_embeds
