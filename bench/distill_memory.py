"""Predicted peak memory of one distillation iteration at the real sizes, without a GPU.

    python -m bench.distill_memory [--model 1600m|600m] [--mode lora|full|personalize] [--optimizer adamw|adafactor]
                                   [--batch 1] [--resolution 1024] [--no-ladd] [--json FILE]

Method: the real trainer objects (teacher DiT in bf16, student from trainers.student.build_pair,
LADD heads, the optimisers) are built under torch's FakeTensorMode, so every tensor has its real
shape and dtype but no storage. One G step and one D step (trainers.steps, bf16 autocast,
gradient checkpointing on, the JVP included) and both optimiser steps then run on fake tensors while
a dispatch-level tracker (LiveBytes, below) adds up the bytes of every live tensor storage after each
op and records the peak with its split into parameters, gradients, optimiser states (with the EMA's
fp32 shadow of the trainable tensors, train.ema) and the rest
(activations + temporaries). Models are built on the meta device, then given fake CPU tensors.

What it does not see: the CUDA context (~0.3-0.6 GiB), the caching allocator's fragmentation and
rounding (typically +5-15%), cuDNN/cuBLAS workspaces, and kernel choices that differ between CPU
autocast (used here) and CUDA autocast. The peak is therefore a lower bound on nvidia-smi's number;
docs/training.md adds the margin explicitly.
"""

from __future__ import annotations

import argparse
import json
import time
import weakref

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from sana_sprint_core.constants import GEMMA_HIDDEN, LATENT_CHANNELS, LATENT_DOWNSCALE, MAX_TEXT_TOKENS
from sana_sprint_core.dit import SanaSprintDiT
from sana_sprint_core.dit_config import PRESETS
from trainers.config import Config, DistillConfig, ModelConfig, PersonalizeConfig
from trainers.discriminator import Discriminator
from trainers.personalize import build_personal_pair
from trainers.steps import Batch, Draws, Nets, discriminator_step, generator_step
from trainers.student import build_pair

GIB = 1024**3


class LiveBytes(TorchDispatchMode):
    """Bytes of all live tensor storages, updated at every op; keeps the peak and its breakdown."""

    def __init__(self, categorize):
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = self.peak = 0
        self.at_peak: dict = {}
        self.categorize = categorize

    def add(self, t) -> None:
        if not isinstance(t, torch.Tensor):
            return
        storage = t.untyped_storage()
        key = storage._cdata
        if key not in self.live:
            self.live[key] = storage.nbytes()
            self.current += self.live[key]
            weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            self.add(t)
        if self.current > self.peak:
            self.peak = self.current
            self.at_peak = self.categorize(self.live, self.current)
        return out


def _keys(tensors) -> set[int]:
    return {t.untyped_storage()._cdata for t in tensors if isinstance(t, torch.Tensor)}


def categorizer(trainable, frozen, disc, states: list):
    """Split live bytes into parameters / gradients / optimiser states / activations+temporaries."""
    def categorize(live: dict[int, int], current: int) -> dict:
        groups = {
            "student trainable params": _keys(trainable), "frozen weights (base/teacher)": _keys(frozen),
            "LADD head params": _keys(disc.parameters()),
            "gradients": _keys(p.grad for p in [*trainable, *disc.parameters()] if p.grad is not None),
            "optimizer states": _keys(states),
        }
        out, seen = {}, set()
        for name, keys in groups.items():
            keys = (keys - seen) & set(live)
            seen |= keys
            out[name] = sum(live[k] for k in keys)
        out["activations + temporaries"] = current - sum(out.values())
        return out
    return categorize


def optimizer_states(params, kind: str) -> list[torch.Tensor]:
    """The state tensors torch's AdamW / Adafactor keep for `params` (fp32 like the params).

    AdamW: exp_avg and exp_avg_sq, full size. Adafactor: row and column second-moment factors over
    the last two dims for >= 2-D tensors (so a 1x1 conv weight (O, I, 1, 1) is NOT factored), full
    size for 1-D ones. Optimiser.step itself cannot run on fake tensors (it reads the step count as
    a Python number), so its states are allocated here and its transient buffers added in `measure`.
    """
    states = []
    for p in params:
        if kind == "adamw":
            states += [torch.zeros_like(p, dtype=torch.float32), torch.zeros_like(p, dtype=torch.float32)]
        elif p.dim() >= 2:
            states += [p.new_zeros((*p.shape[:-1], 1), dtype=torch.float32),
                       p.new_zeros((*p.shape[:-2], 1, p.shape[-1]), dtype=torch.float32)]
        else:
            states.append(torch.zeros_like(p, dtype=torch.float32))
    return states


def fake_batch(b: int, resolution: int) -> Batch:
    side = resolution // LATENT_DOWNSCALE
    text = torch.randn(b, MAX_TEXT_TOKENS, GEMMA_HIDDEN, dtype=torch.bfloat16)
    mask = torch.ones(b, MAX_TEXT_TOKENS, dtype=torch.int64)
    return Batch(torch.randn(b, LATENT_CHANNELS, side, side), text, mask, text.clone(), mask.clone())


def to_fake(module: nn.Module) -> None:
    """Replace meta parameters and buffers by fake CPU tensors (inside FakeTensorMode), in place."""
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None and p.is_meta:
                m._parameters[name] = nn.Parameter(torch.empty_like(p, device="cpu"), requires_grad=p.requires_grad)
        for name, b in list(m._buffers.items()):
            if b is not None and b.is_meta:
                m._buffers[name] = torch.empty_like(b, device="cpu")


def build(model: str, mode: str, optimizer: str):
    """Teacher, student, heads and optimisers of the real trainer at the preset size (meta, then fake).

    mode personalize: personalisation stage 2 (trainers.personalize.build_personal_pair): the teacher
    with its LoRA merged and the released Sprint DiT, both bf16 and frozen, LoRA adapters on the Sprint
    DiT; the largest of the two stages (stage 1 holds one base and smaller adapters, no heads)."""
    config = PRESETS[f"teacher_{model}"]
    with torch.device("meta"):
        teacher = SanaSprintDiT(config, dtype=torch.bfloat16).requires_grad_(False)
        if mode == "personalize":
            sprint = SanaSprintDiT(config.replace(guidance_embeds=True), dtype=torch.bfloat16)
            cfg = Config(model=ModelConfig(mode="lora", gradient_checkpointing=True),
                         personalize=PersonalizeConfig(enabled=True, sprint="(fake)"))
            pair = build_personal_pair(cfg, "meta", {"teacher": teacher, "sprint": sprint})
        else:
            pair = build_pair(teacher, ModelConfig(mode=mode, gradient_checkpointing=True))
        blocks = [b for b in DistillConfig().head_blocks if b < config.num_layers]
        disc = Discriminator(config.hidden_size, blocks)
    for module in (pair.student, pair.teacher.dit, disc):
        to_fake(module)
    trainable = [p for p in pair.student.parameters() if p.requires_grad]
    frozen = {id(p): p for p in [*pair.student.parameters(), *pair.teacher.dit.parameters()] if not p.requires_grad}
    return pair, disc, trainable, list(frozen.values()), blocks


def measure(model: str, mode: str, optimizer: str, batch: int, resolution: int, rounds: int = 2,
            ladd: bool = True) -> dict:
    """Two G and two D iterations on fake tensors (bf16 autocast); the peak of live bytes, by category.
    ladd=False: sCM only (ladd_weight 0): no heads, no D iterations."""
    with FakeTensorMode(allow_non_fake_inputs=True):
        pair, disc, trainable, frozen, blocks = build(model, mode, optimizer)
        if not ladd:
            disc = nn.Module()  # no heads: nothing to count
        cfg = DistillConfig(head_blocks=blocks, ladd=ladd)
        nets = Nets.local(pair.student, pair.teacher, disc if ladd else None)
        states: list = []
        tracker = LiveBytes(categorizer(trainable, frozen, disc, states))
        for t in [*trainable, *frozen, *disc.parameters(), *disc.buffers()]:
            tracker.add(t)
        with tracker:
            for step in range(rounds):  # the second round runs with the optimiser states allocated
                for phase in ("G", "D") if ladd else ("G",):
                    data = fake_batch(batch, resolution)
                    draws = Draws(torch.Generator().manual_seed(step), "cpu")
                    params = trainable if phase == "G" else list(disc.parameters())
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        if phase == "G":
                            generator_step(nets, data, cfg, 2 * step, draws)
                        else:
                            discriminator_step(nets, data, cfg, draws)
                    torch.nn.utils.clip_grad_norm_(params, 0.1)
                    if step == 0:
                        states += optimizer_states(params, optimizer)
                        if phase == "G":  # train.ema: an fp32 shadow of every trainable tensor
                            states += [torch.zeros_like(p, dtype=torch.float32) for p in params]
                    for p in params:
                        p.grad = None
    # AdamW's multi-tensor step allocates one fp32 temporary of all trainable sizes (sqrt of exp_avg_sq)
    step_transient = 4 * max(sum(p.numel() for p in trainable), sum(p.numel() for p in disc.parameters()))
    step_transient = step_transient if optimizer == "adamw" else 0
    return {"model": model, "mode": mode, "optimizer": optimizer, "batch": batch, "resolution": resolution,
            "ladd": ladd,
            "peak_gib": round(tracker.peak / GIB, 3), "optimizer_step_transient_gib": round(step_transient / GIB, 3),
            "at_peak_gib": {k: round(v / GIB, 3) for k, v in tracker.at_peak.items()},
            "at_peak_bytes": dict(tracker.at_peak)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("1600m", "600m"), default="1600m")
    parser.add_argument("--mode", choices=("lora", "full", "personalize"), default="lora")
    parser.add_argument("--optimizer", choices=("adamw", "adafactor"), default="adamw")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--no-ladd", action="store_true", help="sCM only (ladd_weight 0): no heads, no D iterations")
    parser.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    args = parser.parse_args()
    t0 = time.time()
    result = measure(args.model, args.mode, args.optimizer, args.batch, args.resolution, ladd=not args.no_ladd)
    result["seconds"] = round(time.time() - t0, 1)
    result.pop("at_peak_bytes")
    print(json.dumps(result))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
