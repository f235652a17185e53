"""FSDP for the distillation student (`train.distributed: fsdp`), built on torch's `fully_shard` (FSDP2).

What is sharded: every parameter of the student (full mode: the whole trainable DiT; LoRA mode: the
frozen base weights too, which are also the teacher) is split along dim 0 over the N processes, and
so are its gradients and AdamW states. Each transformer block is one FSDP unit; the rest (patch and
time/CFG embedders, caption projection, final layer, logvar head) is the root unit. A unit's full
weights exist only while it runs: FSDP all-gathers them in its forward pre-hook and frees them after
the forward (blocks) or after the backward / at the end of the iteration (root, `reshard_root`). The
full-mode teacher and the LADD heads (DDP) are replicated.

The sCM JVP (torch.func.jvp) runs through these hooks like any forward, block by block under
no_grad, so it never needs the whole student gathered. FSDP only hooks `forward`; every other entry
into the student goes through `Student.velocity`, registered here as a second forward method, so the
root unit is gathered for the JVP, the D-phase samples, validation and the LoRA-mode teacher alike.
That also makes the root module the first to run forward, which FSDP requires of its root.

Checkpoints and outputs hold full tensors in the single-process format: each sharded tensor is
all-gathered one at a time and kept (on the CPU) by the main process only, which writes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .student import Student

ROOT_METHOD = "velocity"  # Student method that FSDP treats as a forward (see the module docstring)


def is_sharded(tensor) -> bool:
    """Whether `tensor` is a DTensor (an FSDP-sharded parameter, gradient or optimiser state)."""
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def shard_student(student: Student, device: torch.device, world_size: int) -> None:
    """Shard `student` in place over `world_size` processes (the default process group must exist).

    Call before creating its optimiser: afterwards its parameters are DTensors (1/N of dim 0 each).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh(device.type, (world_size,))
    for block in student.dit.transformer_blocks:  # one unit per block, bottom-up as FSDP requires
        fully_shard(block, mesh=mesh)
    fully_shard(student, mesh=mesh)
    register_fsdp_forward_method(student, ROOT_METHOD)


def describe(student: Student, world_size: int) -> str:
    """One line for the log: how many of the student's weights this process holds."""
    params = list(student.parameters())
    total = sum(p.numel() for p in params)
    local = sum(p.to_local().numel() if is_sharded(p) else p.numel() for p in params)
    return (f"FSDP: student sharded over {world_size} processes ({len(student.dit.transformer_blocks)} blocks + root); "
            f"this process holds {local} of {total} student weights")


def reshard_root(student: Student) -> None:
    """Free the root unit's gathered weights (after an iteration: a no-grad forward leaves them gathered),
    so that `student.parameters()` are the sharded DTensors the optimiser holds."""
    student.reshard()


def gathered(obj, keep: bool):
    """`obj` (nested dicts/lists of tensors) with every DTensor replaced by its full tensor on the CPU.

    Every process must call this with the same structure (each DTensor is one all-gather, in
    traversal order); only processes with `keep` get the full tensors, the others None in their place.
    Plain tensors are returned as they are.
    """
    if is_sharded(obj):
        full = obj.full_tensor()
        return full.cpu() if keep else None
    if isinstance(obj, dict):
        return {k: gathered(v, keep) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(gathered(v, keep) for v in obj)
    return obj


def local_like(full: Tensor, like: Tensor) -> Tensor:
    """`full` as `like` holds it: this process's shard (a DTensor) if `like` is sharded, else on its device."""
    full = full.to(device=like.device, dtype=like.dtype)
    if not is_sharded(like):
        return full
    from torch.distributed.tensor import distribute_tensor

    # every process has read the whole tensor, so each one cuts its own shard (no communication)
    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)


def shard_optimizer_state(state: dict, optimizer: torch.optim.Optimizer) -> dict:
    """A full (unsharded) optimiser state dict made loadable into `optimizer` over sharded parameters.

    Per-parameter tensors of a sharded parameter (AdamW's exp_avg / exp_avg_sq, shaped like it) become
    DTensors sharded like the parameter; scalars (`step`) stay as they are. Without sharded parameters
    `state` is returned as it is.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not any(is_sharded(p) for p in params):
        return state
    ids = [i for group in state["param_groups"] for i in group["params"]]
    if len(ids) != len(params):
        raise ValueError(f"optimiser state has {len(ids)} parameters, this run's optimiser {len(params)}")
    by_id = dict(zip(ids, params))
    out = {}
    for i, entry in state["state"].items():
        p = by_id[i]
        out[i] = {k: _state_tensor(k, v, p) for k, v in entry.items()}
    return {"state": out, "param_groups": state["param_groups"]}


def _state_tensor(key: str, value, param: Tensor):
    if not isinstance(value, Tensor) or value.dim() == 0 or not is_sharded(param):
        return value
    if tuple(value.shape) != tuple(param.shape):
        raise ValueError(f"optimiser state {key!r} of shape {tuple(value.shape)} does not match its sharded "
                         f"parameter {tuple(param.shape)}; only per-element states (AdamW) can be sharded")
    return local_like(value, param)


def plain_student(student: Student, model_cfg, weights_dtype: torch.dtype, keep: bool) -> Student | None:
    """An unsharded CPU copy of a sharded student (for the outputs), on processes with `keep`, else None.

    Every process must call this (all-gathers). The copy is built like the original
    (`build_pair` on the meta device, adapters included) and takes the gathered tensors.
    """
    from sana_sprint_core.dit import SanaSprintDiT

    from .student import build_pair

    state = gathered(student.state_dict(), keep)
    if not keep:
        return None
    state = {k: v.cpu() for k, v in state.items()}  # buffers (not sharded) may still be on the device
    with torch.device("meta"):  # no storage and no random numbers drawn: the weights come from `state`
        base = SanaSprintDiT(student.dit.config.replace(guidance_embeds=False), dtype=weights_dtype)
        copy = build_pair(base, model_cfg).student
    copy.load_state_dict(state, strict=True, assign=True)
    return copy

