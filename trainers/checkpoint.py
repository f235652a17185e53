"""Training checkpoints: written atomically, resumed exactly.

A checkpoint is a folder `checkpoints/step_<N>/` holding safetensors only (plus JSON):
  student.safetensors  the student's trainable tensors      disc.safetensors   heads (+ spectral-norm buffers)
  optim_g/optim_d.safetensors  optimiser tensors; their non-tensor structure in the metadata
  rng_rank<r>.safetensors  the step generator and torch's global RNG of each process
  ema.safetensors  the EMA of the trainable tensors (train.ema)
  state.json  step, data position, counters, clipping averages       config.json  the resolved config
It is written under a temporary name and renamed into place (os.replace), then `latest.json`
is replaced; a crash leaves either the old or the new checkpoint, never a half one. Tensors are
always full: an FSDP run gathers its shards before writing and cuts them again on loading
(trainers/fsdp.py), so the files do not depend on how the run was distributed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from torch import Tensor, nn

from sana_sprint_core.checkpoint_io import (
    read_state_dict, read_state_dict_with_info, read_tensor_specs, resolve_checkpoint, save_safetensors_atomic,
)

from .fsdp import local_like, shard_optimizer_state

LATEST = "latest.json"
EMA_FILE = "ema.safetensors"
_TENSOR = "__tensor__:"


def flatten_state(obj, prefix: str = "") -> tuple[dict[str, Tensor], object]:
    """Split a nested dict/list into (tensors by path, JSON skeleton with placeholders)."""
    tensors: dict[str, Tensor] = {}

    def walk(value, path):
        if isinstance(value, Tensor):
            tensors[path] = value.detach().cpu().contiguous()
            return _TENSOR + path
        if isinstance(value, dict):
            return {"__dict__": [[walk(k, f"{path}.k{i}"), walk(v, f"{path}.{i}")] for i, (k, v) in enumerate(value.items())]}
        if isinstance(value, (list, tuple)):
            return {"__list__": [walk(v, f"{path}.{i}") for i, v in enumerate(value)], "tuple": isinstance(value, tuple)}
        return value

    return tensors, walk(obj, prefix or "root")


def unflatten_state(skeleton, tensors: dict[str, Tensor]):
    """Inverse of `flatten_state`."""
    if isinstance(skeleton, str) and skeleton.startswith(_TENSOR):
        return tensors[skeleton[len(_TENSOR):]]
    if isinstance(skeleton, dict) and "__dict__" in skeleton:
        return {unflatten_state(k, tensors): unflatten_state(v, tensors) for k, v in skeleton["__dict__"]}
    if isinstance(skeleton, dict) and "__list__" in skeleton:
        items = [unflatten_state(v, tensors) for v in skeleton["__list__"]]
        return tuple(items) if skeleton["tuple"] else items
    return skeleton


def save_nested(obj, path: Path) -> None:
    """A nested state (optimizer state dict, RNG states) as safetensors + JSON skeleton metadata."""
    tensors, skeleton = flatten_state(obj)
    save_safetensors_atomic(tensors, path, metadata={"skeleton": json.dumps(skeleton)})


def load_nested(path: Path):
    """Read what `save_nested` wrote (a state without tensors, e.g. an optimiser before its first step, too)."""
    info = resolve_checkpoint(path)
    if "skeleton" not in info.metadata:
        raise ValueError(f"{path}: not a trainer state file (no 'skeleton' metadata)")
    tensors = read_state_dict(path) if read_tensor_specs(path) else {}
    return unflatten_state(json.loads(info.metadata["skeleton"]), tensors)


def rng_state(generator: torch.Generator) -> dict:
    """The step generator plus torch's global CPU (and CUDA) RNG states."""
    state = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(generator: torch.Generator, state: dict) -> None:
    """Restore what `rng_state` returned."""
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step_{step:08d}"


def begin(output_dir: Path, step: int) -> Path:
    """Create the temporary folder of the checkpoint at `step` (main process)."""
    tmp = checkpoint_dir(output_dir, step).with_suffix(".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def write_models(tmp: Path, trainable: dict[str, Tensor], opt_g_state: dict, disc: nn.Module | None, opt_d,
                 ema: dict[str, Tensor] | None = None) -> None:
    """Trainable student tensors and the student optimiser's state dict (both full, unsharded), the heads
    and their optimiser state, and the EMA of the trainable tensors (train.ema) into the temporary folder."""
    save_safetensors_atomic({n: t.detach().cpu() for n, t in trainable.items()}, tmp / "student.safetensors")
    if ema is not None:
        save_safetensors_atomic({n: t.detach().cpu() for n, t in ema.items()}, tmp / EMA_FILE)
    save_nested(opt_g_state, tmp / "optim_g.safetensors")
    if disc is not None:
        save_safetensors_atomic({k: v.detach().cpu() for k, v in disc.state_dict().items()}, tmp / "disc.safetensors")
        save_nested(opt_d.state_dict(), tmp / "optim_d.safetensors")


def write_rng(tmp: Path, rank: int, generator: torch.Generator) -> None:
    """This process's RNG states (every rank calls this)."""
    save_nested(rng_state(generator), tmp / f"rng_rank{rank}.safetensors")


def commit(tmp: Path, state: dict, config_json: str) -> Path:
    """state.json + config.json, rename the folder into place, then point latest.json at it."""
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    (tmp / "config.json").write_text(config_json)
    final = tmp.with_suffix("")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest = final.parent / LATEST
    pointer = latest.with_suffix(".tmp")
    pointer.write_text(json.dumps({"checkpoint": final.name, "step": state["step"]}))
    os.replace(pointer, latest)
    return final


def _latest_name(latest: Path) -> str:
    """The checkpoint folder latest.json points at; a damaged pointer is named with the way out."""
    fix = (f"resume from a checkpoint folder instead (--resume {latest.parent}/step_<N>), or delete {latest} "
           "to start over")
    try:
        name = json.loads(latest.read_text())["checkpoint"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{latest} is damaged ({type(e).__name__}: {e}); {fix}") from None
    if not isinstance(name, str) or not (latest.parent / name / "state.json").is_file():
        raise ValueError(f"{latest} points at {name!r}, which is not a checkpoint folder in {latest.parent}; {fix}")
    return name


def find(output_dir: Path, resume: str) -> Path:
    """The checkpoint folder named by `train.resume` ("latest" or a path)."""
    if resume == "latest":
        latest = Path(output_dir) / "checkpoints" / LATEST
        if not latest.is_file():
            raise FileNotFoundError(f"train.resume is 'latest' but {latest} does not exist (no checkpoint saved yet)")
        return latest.parent / _latest_name(latest)
    folder = Path(resume)
    if not (folder / "state.json").is_file():
        raise FileNotFoundError(f"train.resume: {folder} is not a checkpoint folder (no state.json)")
    return folder


def load_models(folder: Path, student: nn.Module, disc: nn.Module | None, opt_g, opt_d) -> None:
    """Restore trainable tensors, heads and optimisers (strict: names and shapes must match).

    An FSDP-sharded student takes its shard of each full tensor (every process reads the files)."""
    saved, _ = read_state_dict_with_info(folder / "student.safetensors")
    params = {n: p for n, p in student.named_parameters() if p.requires_grad}
    if set(saved) != set(params):
        diff = sorted(set(saved) ^ set(params))[:8]
        raise ValueError(f"{folder}: trainable tensors do not match this run (model.mode / lora settings "
                         f"changed?); differing names: {diff}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(local_like(saved[name], p))
    opt_g.load_state_dict(shard_optimizer_state(load_nested(folder / "optim_g.safetensors"), opt_g))
    if disc is not None:
        disc_state, _ = read_state_dict_with_info(folder / "disc.safetensors")
        disc.load_state_dict(disc_state, strict=True)
        opt_d.load_state_dict(load_nested(folder / "optim_d.safetensors"))


def load_ema(folder: Path, ema) -> None:
    """Restore the EMA (strict); a checkpoint written with train.ema off has none: named with the way out."""
    path = folder / EMA_FILE
    if not path.is_file():
        raise ValueError(f"{folder} holds no {EMA_FILE} (the run was trained with train.ema false); resume it with "
                         "train.ema false, or start a new run to use the EMA")
    saved, _ = read_state_dict_with_info(path)
    ema.load_state_dict({n: local_like(v, ema.shadow[n]) if n in ema.shadow else v for n, v in saved.items()},
                        str(path))


def load_state(folder: Path, rank: int, generator: torch.Generator) -> dict:
    """state.json, and this rank's RNG states restored into `generator` and torch."""
    set_rng_state(generator, load_nested(folder / f"rng_rank{rank}.safetensors"))
    return json.loads((folder / "state.json").read_text())
