"""The memory dry run (bench/distill_memory.py) on a tiny preset: runs, and its parameter bytes are exact."""

import pytest
import torch

import bench.distill_memory as dry
from sana_sprint_core.dit_config import DiTConfig
from tests.fixtures.distill import one_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = DiTConfig(hidden_size=64, num_layers=3, num_heads=2, cross_heads=4, guidance_embeds=False)


def test_dry_run_counts_parameters_exactly(monkeypatch):
    monkeypatch.setitem(dry.PRESETS, "teacher_tiny", TINY)
    full = dry.measure("tiny", "full", "adamw", 1, 64, rounds=1)["at_peak_bytes"]
    with torch.device("meta"):
        teacher = dry.SanaSprintDiT(TINY)
    teacher_bytes = sum(p.numel() * 2 for p in teacher.parameters())  # bf16 frozen teacher
    # fp32 student = teacher's parameters + the guidance embedder (256*64 + 64 + 64*64 + 64) + logvar (64 + 1)
    student_bytes = 4 * (sum(p.numel() for p in teacher.parameters()) + 256 * 64 + 64 + 64 * 64 + 64 + 65)
    assert full["frozen weights (base/teacher)"] == teacher_bytes
    assert full["student trainable params"] == student_bytes
    assert full["optimizer states"] in (0, 2 * student_bytes, 2 * student_bytes + full["LADD head params"] * 2)
