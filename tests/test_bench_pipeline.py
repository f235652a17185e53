"""bench/bench_pipeline.py runs end to end (tiny models) and times the same work on both sides."""

import json

import pytest

from bench import bench_pipeline

pytest.importorskip("diffusers")


def test_protocol_runs_and_both_sides_do_the_same_work(tmp_path):
    out = tmp_path / "rows.json"
    text = bench_pipeline.main(["--smoke", "--size", "64", "--throughput-size", "64", "--throughput-batch", "2",
                                "--steps", "1,2", "--repeats", "1", "--decode-repeats", "1", "--skip", "memory",
                                "--json", str(out)])
    data = json.loads(out.read_text())
    stages = [r["stage"] for r in data["rows"] if r["setting"].startswith("latency")]
    assert stages == ["text", "text_cached", "transformer, 1 step", "transformer, 2 steps", "decode"]
    assert all(len(r["ours_wall"]) == len(r["diffusers_wall"]) == 1 for r in data["rows"])
    for setting in ("latency", "throughput"):
        parity = data["meta"][f"parity_{setting}"]
        assert parity["embeds"] == 0.0 and parity["latents_1step"] <= 1e-4 and parity["images"] <= 1e-4
    assert "| transformer 1 step + decode |" in text and "throughput: batch 2, 64x64" in text


def test_memory_child_prints_a_peak(capsys):
    bench_pipeline.main(["--smoke", "--size", "64", "--memory-of", "ours", "--stage", "decode"])
    assert float(capsys.readouterr().out.strip().splitlines()[-1]) >= 0.0
