"""A shipped 1024 px workflow in a real ComfyUI on the CPU under a memory cap, with real-size random weights.

    .venv-test/bin/python -m bench.comfy_memory --comfyui DIR --python PY [--limit-gib 16] [--workflow NAME]

DIR is a ComfyUI checkout with this pack's requirements in the environment of PY (tests/e2e/run_real_host.sh
sets one up: SANA_HOST_DIR/ComfyUI and SANA_HOST_DIR/venv/bin/python). What it does:
1. Writes the three models of the text-to-image workflows at their real sizes under the shipped names, with
   seeded random weights in the released layouts: the Sprint 1.6B DiT (bf16, diffusers folder), gemma-2-2b
   with its 256000-row embedding (bf16, Hugging Face folder; a small trained BPE tokenizer, whose ids stay
   below 256000), DC-AE f32c32 (fp32, diffusers folder). About 10 GB of disk.
2. Drops the page cache (so the model files' pages are read, and charged, inside the group) and starts
   `main.py --cpu` in a new cgroup-v1 memory group limited to --limit-gib for RAM and swap together (needs
   root and a writable /sys/fs/cgroup/memory): past the cap the kernel reclaims page cache and then kills
   the server, so a finished run shows the workflow fits.
3. Queues the workflow's API twin unchanged (the loaders' default dtypes, "auto"), waits for it, and prints one
   JSON line: finished or not, wall time, the server's peak resident memory (VmHWM), the group's peak
   (memory.max_usage_in_bytes, which also counts page cache of the model files read) and how often the group
   hit its cap (memory.failcnt: the kernel reclaimed page cache to stay under it).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from bench.random_weights import fill_random
from sana_sprint_core.constants import COMFY_DIT_NAME, COMFY_TEXT_ENCODER_NAME, COMFY_VAE_NAME
from sana_sprint_core.dcae import DCAE, DCAE_F32C32
from sana_sprint_core.dit import SanaSprintDiT
from sana_sprint_core.dit_config import PRESETS

GIB = 1024**3
CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows" / "api"
REPO = Path(__file__).resolve().parents[1]
PACK = "ComfyUI-SanaSprint"


def _materialised(build, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    with torch.device("meta"):
        module = build().to(dtype)
    module.to_empty(device="cpu")
    return fill_random(module, seed).eval().requires_grad_(False)


def _save(module: torch.nn.Module, path: Path, prefix: str = "") -> None:
    from safetensors.torch import save_file

    save_file({prefix + k: v.contiguous() for k, v in module.state_dict().items()}, str(path))


WEIGHTS = "diffusion_pytorch_model.safetensors"  # the weights file of a diffusers model folder


def _write_diffusers(folder: Path, config: dict, build, dtype: torch.dtype, seed: int) -> Path:
    """A diffusers model folder (config.json + weights) of `build()` with random weights, unless written."""
    if not (folder / WEIGHTS).exists():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(config, indent=1))
        _save(_materialised(build, dtype, seed), folder / WEIGHTS)
    return folder / WEIGHTS


def _write_gemma(folder: Path) -> Path:
    """A Hugging Face gemma-2-2b folder (config, small BPE tokenizer, random bf16 weights), unless written."""
    from transformers import Gemma2Config, Gemma2Model

    from tests.fixtures.text import train_bpe_tokenizer

    if not (folder / "model.safetensors").exists():
        folder.mkdir(parents=True, exist_ok=True)
        train_bpe_tokenizer(folder, vocab_size=600)
        config = Gemma2Config(torch_dtype="bfloat16")  # transformers' defaults are gemma-2-2b's sizes
        config.save_pretrained(folder)
        _save(_materialised(lambda: Gemma2Model(config), torch.bfloat16, 0), folder / "model.safetensors", "model.")
    return folder / "model.safetensors"


def write_models(models: Path) -> dict[str, float]:
    """The real-size models under models/ (skipped where already written); returns their file sizes in GiB."""
    from tests.fixtures.comfy_models import diffusers_dcae_config, diffusers_dit_config

    dit = PRESETS["sprint_1600m"]
    files = {
        "dit": _write_diffusers(models / "diffusion_models" / COMFY_DIT_NAME, diffusers_dit_config(dit),
                                lambda: SanaSprintDiT(dit), torch.bfloat16, 1),
        "text_encoder": _write_gemma(models / "text_encoders" / COMFY_TEXT_ENCODER_NAME),
        "vae": _write_diffusers(models / "vae" / COMFY_VAE_NAME, diffusers_dcae_config(DCAE_F32C32),
                                lambda: DCAE(DCAE_F32C32), torch.float32, 2),
    }
    return {k: round(p.stat().st_size / GIB, 2) for k, p in files.items()}


class MemoryGroup:
    """A cgroup-v1 memory group with a limit on RAM + swap; processes started through `wrap` run inside it."""

    def __init__(self, limit_bytes: int, root: Path = CGROUP_ROOT):
        if not os.access(root, os.W_OK):
            raise SystemExit(f"{root} is not writable: run as root on a machine with cgroup-v1 memory groups")
        self.path = Path(tempfile.mkdtemp(prefix="sana_sprint_", dir=root))
        (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))
        swap = self.path / "memory.memsw.limit_in_bytes"
        if swap.exists():
            swap.write_text(str(limit_bytes))

    def wrap(self, cmd: list[str]) -> list[str]:
        """`cmd` run by a shell that first moves itself into the group (children inherit it)."""
        return ["sh", "-c", f'echo $$ > "{self.path}/cgroup.procs" && exec "$@"', "sh", *cmd]

    def read(self, name: str) -> int:
        return int((self.path / name).read_text())

    def remove(self) -> None:
        self.path.rmdir()


def _host_torch(python: Path) -> str:
    """The torch version of ComfyUI's environment (the bench's own may differ)."""
    import subprocess

    out = subprocess.run([str(python), "-c", "import torch; print(torch.__version__)"], capture_output=True,
                         text=True, timeout=120)
    return out.stdout.strip() or out.stderr.strip()[-200:]


def _vm_hwm_gib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) * 1024 / GIB, 2)
    raise RuntimeError(f"no VmHWM for process {pid}")


def run_workflow(server, prompt: dict, timeout: float, poll: float = 2.0) -> dict:
    """Queue `prompt`, poll its history every `poll` s until it ends (bounded by `timeout`); returns
    {"ok", "seconds", ...}: ok only for a successful run that saved an image."""
    status, answer = server.post("/prompt", {"prompt": prompt})
    if status != 200:
        return {"ok": False, "error": answer}
    prompt_id, t0 = answer["prompt_id"], time.monotonic()
    while time.monotonic() - t0 < timeout:
        if server.proc.poll() is not None:
            return {"ok": False, "error": f"server exited with {server.proc.returncode}", "log": server.log_tail(20)}
        history = server.get(f"/history/{prompt_id}")
        if prompt_id in history:
            state = history[prompt_id]["status"]
            images = [i for out in history[prompt_id]["outputs"].values() for i in out.get("images", [])]
            return {"ok": state.get("status_str") == "success" and bool(images),
                    "seconds": round(time.monotonic() - t0, 1), "images": len(images),
                    "messages": [m[0] for m in state.get("messages", [])]}
        time.sleep(poll)
    return {"ok": False, "error": f"not finished after {timeout} s"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--comfyui", type=Path, required=True, help="a ComfyUI checkout (main.py inside)")
    ap.add_argument("--python", type=Path, required=True, help="the Python of ComfyUI's environment")
    ap.add_argument("--base", type=Path, default=None, help="ComfyUI --base-directory (default: a new temporary one; "
                    "models written there are reused on the next run)")
    ap.add_argument("--limit-gib", type=float, default=16.0, help="the memory cap of the server's group (GiB)")
    ap.add_argument("--workflow", default="sana_sprint_2step_text_to_image", help="an API workflow in workflows/api")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the workflow")
    args = ap.parse_args()
    if not (args.comfyui / "main.py").is_file():
        raise SystemExit(f"--comfyui {args.comfyui}: no main.py there; give a ComfyUI checkout")
    workflow = WORKFLOWS / f"{args.workflow}.json"
    if not workflow.is_file():
        raise SystemExit(f"--workflow {args.workflow}: no {workflow}; see workflows/api for the names")
    base = args.base or Path(tempfile.mkdtemp(prefix="comfy_memory_"))
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    sizes = write_models(base / "models")
    print(json.dumps({"models_gib": sizes, "base": str(base)}), flush=True)
    result = measure(args, base, json.loads(workflow.read_text()))
    print(json.dumps({"workflow": args.workflow, "limit_gib": args.limit_gib, "model_files_gib": sizes, **result}))


def measure(args, base: Path, prompt: dict) -> dict:
    from bench.measure import machine
    from tests.e2e.comfy_server import ComfyServer

    group = MemoryGroup(int(args.limit_gib * GIB))
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3")
    server = None
    try:
        server = ComfyServer(args.comfyui, base, base / "comfyui.log", python=str(args.python), wrap=group.wrap)
        server.wait_ready("SanaSprintDiTLoader", timeout=600)
        result = run_workflow(server, prompt, args.timeout)
        result.update(server_vm_hwm_gib=_vm_hwm_gib(server.proc.pid),
                      group_peak_gib=round(group.read("memory.max_usage_in_bytes") / GIB, 2),
                      group_failcnt=group.read("memory.failcnt"), machine=machine(),
                      comfyui_torch=_host_torch(args.python))
        return result
    finally:
        if server is not None:
            server.stop()
        group.remove()


if __name__ == "__main__":
    main()
