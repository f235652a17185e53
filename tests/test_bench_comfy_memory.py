"""bench.comfy_memory's pieces that run without root or ComfyUI: the memory-group wrapper and the
bounded wait for a queued workflow (the bench itself: docs/benchmarks.md, "Weight dtypes")."""

from __future__ import annotations

import subprocess
import sys

from bench.comfy_memory import MemoryGroup, run_workflow


def test_wrapped_command_joins_the_group_as_the_same_process(tmp_path):
    group = MemoryGroup(3 * 2**30, root=tmp_path)  # a plain folder stands in for /sys/fs/cgroup/memory
    assert (group.path / "memory.limit_in_bytes").read_text() == str(3 * 2**30)
    out = subprocess.run(group.wrap([sys.executable, "-c", "import os; print(os.getpid())"]), capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert (group.path / "cgroup.procs").read_text().strip() == out.strip()  # exec: the pid that joined runs it


class FakeServer:
    """Answers /prompt and /history like ComfyUI; `history` is returned from the `after`-th poll on."""

    def __init__(self, history: dict, after: int = 1, exit_code=None):
        self.history, self.after, self.polls = history, after, 0
        self.proc = type("Proc", (), {"poll": lambda _: exit_code, "returncode": exit_code})()

    def post(self, path, data):
        assert path == "/prompt" and "prompt" in data
        return 200, {"prompt_id": "p1"}

    def get(self, path):
        assert path == "/history/p1"
        self.polls += 1
        return {"p1": self.history} if self.polls >= self.after else {}

    def log_tail(self, n):
        return "log"


def _entry(status: str, images: int) -> dict:
    return {"status": {"status_str": status, "messages": [["execution_start", {}]]},
            "outputs": {"8": {"images": [{"filename": f"x{i}.png"} for i in range(images)]}}}


def test_a_finished_run_with_an_image_is_ok_and_anything_else_is_not():
    server = FakeServer(_entry("success", 1), after=3)
    result = run_workflow(server, {"1": {}}, timeout=5, poll=0.01)
    assert result["ok"] and result["images"] == 1 and server.polls == 3
    assert not run_workflow(FakeServer(_entry("success", 0)), {}, timeout=5, poll=0.01)["ok"]
    assert not run_workflow(FakeServer(_entry("error", 1)), {}, timeout=5, poll=0.01)["ok"]


def test_the_wait_is_bounded_and_a_dead_server_is_reported():
    never = FakeServer(_entry("success", 1), after=10**9)
    result = run_workflow(never, {}, timeout=0.2, poll=0.01)
    assert not result["ok"] and "not finished" in result["error"]
    dead = run_workflow(FakeServer(_entry("success", 1), exit_code=-9), {}, timeout=5, poll=0.01)
    assert not dead["ok"] and "exited with -9" in dead["error"]


def test_written_folders_load_with_the_pack_loaders_and_are_not_rewritten(tmp_path):
    """The bench's writer on tiny configs: the diffusers folders it writes load strictly, and a second call
    leaves an existing file alone."""
    import torch

    from bench.comfy_memory import _write_diffusers
    from sana_sprint_core.dcae import DCAE
    from sana_sprint_core.dcae.loading import load_vae
    from sana_sprint_core.dit import SanaSprintDiT
    from sana_sprint_core.dit_loading import load_dit
    from tests.fixtures.comfy_models import TINY_DCAE, TINY_DIT, diffusers_dcae_config, diffusers_dit_config

    dit_file = _write_diffusers(tmp_path / "dit", diffusers_dit_config(TINY_DIT), lambda: SanaSprintDiT(TINY_DIT),
                                torch.bfloat16, 1)
    _write_diffusers(tmp_path / "vae", diffusers_dcae_config(TINY_DCAE), lambda: DCAE(TINY_DCAE),
                                torch.float32, 2)
    dit, vae = load_dit(tmp_path / "dit"), load_vae(tmp_path / "vae")
    assert dit.config.hidden_size == TINY_DIT.hidden_size and vae.config.widths == TINY_DCAE.widths
    assert bool(dit.proj_out.weight.abs().sum() > 0)  # random weights, not an empty model
    stamp = dit_file.stat().st_mtime_ns
    _write_diffusers(tmp_path / "dit", {}, lambda: None, torch.bfloat16, 1)  # would fail if it wrote again
    assert dit_file.stat().st_mtime_ns == stamp
