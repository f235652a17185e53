"""Outputs of the trainer: a ComfyUI-format LoRA and a full student DiT, both safetensors with metadata.

LoRA keys (ComfyUI's generic `diffusion_model.` map, LoRAAdapter names; reference comfyui.md):
  diffusion_model.<module path>.lora_down.weight  (r, in[, 1, 1])   = peft lora_A
  diffusion_model.<module path>.lora_up.weight    (out, r[, 1, 1])  = peft lora_B
  diffusion_model.<module path>.alpha             scalar; ComfyUI scale = alpha / r = peft's scale
Modules trained in full inside a LoRA run (the new guidance embedder, absent from the teacher) are
written as `diffusion_model.<path>.diff` (weight) and `.diff_b` (bias) over a zero base; the
metadata key `sana_sprint.full_modules` lists them. The full student is a plain DiT state dict
(adapters merged) with its DiTConfig in the metadata, so `load_dit` reads it without arguments.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from sana_sprint_core.checkpoint_io import read_state_dict_with_info, resolve_checkpoint, save_safetensors_atomic
from sana_sprint_core.dit import SanaSprintDiT
from sana_sprint_core.dit_loading import dit_from_state_dict, save_dit
from sana_sprint_core.lora_formats import read_lora, to_peft

from .student import ADAPTER_NAME, Student

COMFY_PREFIX = "diffusion_model."
# The outputs of a distillation run (train.output_dir); the diffusers twin with train.export_diffusers_lora.
LORA_FILE, STUDENT_FILE = "sprint_lora.safetensors", "sprint_student.safetensors"
DIFFUSERS_LORA_FILE = "sprint_lora_diffusers.safetensors"
# Modules that a LoRA run trains in full because the teacher does not have them.
FULL_MODULES = ("time_embed.guidance_embedder",)
META_PREFIX = "sana_sprint."
_HASH_CHUNK = 1 << 24


def weights_sha256(path: str | os.PathLike) -> str:
    """sha256 over the weight files behind `path` (file, index json or folder), in shard order."""
    digest = hashlib.sha256()
    for file in resolve_checkpoint(path).files:
        with open(file, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def lora_layers(dit: nn.Module) -> dict[str, nn.Module]:
    """Module path -> peft LoRA layer, for every adapted layer of the DiT."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in dit.named_modules() if isinstance(m, LoraLayer)}


def _lora_pair(layer: nn.Module) -> tuple[Tensor, Tensor, float]:
    """(down (r, in, ...), up (out, r, ...), peft scale alpha / r) of one adapted layer."""
    down = layer.lora_A[ADAPTER_NAME].weight.detach()
    up = layer.lora_B[ADAPTER_NAME].weight.detach()
    return down, up, float(layer.scaling[ADAPTER_NAME])


def trained_full_modules(dit: nn.Module) -> tuple[str, ...]:
    """The FULL_MODULES a LoRA run trains in full: present and trainable (a LoRA on a Sprint model keeps
    the Sprint guidance embedder frozen, and a teacher has none)."""
    names = dict(dit.named_modules())
    return tuple(m for m in FULL_MODULES if m in names and any(p.requires_grad for p in names[m].parameters()))


def comfy_lora_state_dict(dit: nn.Module, dtype: torch.dtype,
                          full_modules: tuple[str, ...] | None = None) -> dict[str, Tensor]:
    """ComfyUI LoRA tensors of a peft-adapted DiT (module docstring); `full_modules` (default: the
    trained ones, `trained_full_modules`) are written as `.diff` over a zero base."""
    full_modules = trained_full_modules(dit) if full_modules is None else full_modules
    out: dict[str, Tensor] = {}
    for path, layer in lora_layers(dit).items():
        down, up, scale = _lora_pair(layer)
        key = COMFY_PREFIX + path
        out[f"{key}.lora_down.weight"] = down.to(dtype).contiguous()
        out[f"{key}.lora_up.weight"] = up.to(dtype).contiguous()
        out[f"{key}.alpha"] = torch.tensor(scale * down.shape[0], dtype=torch.float32)
    for prefix in full_modules:
        module = dit.get_submodule(prefix)
        for name, p in module.named_parameters():
            kind = "diff" if name.endswith("weight") else "diff_b"
            out[f"{COMFY_PREFIX}{prefix}.{name.rsplit('.', 1)[0]}.{kind}"] = p.detach().to(dtype).contiguous()
    return out


def _delta(down: Tensor, up: Tensor, scale: float) -> Tensor:
    """scale * up @ down for Linear (2-D) and 1x1 conv (4-D) adapters, in fp32."""
    d, u = down.float().flatten(1), up.float().flatten(1)  # (r, in), (out, r)
    return scale * (u @ d).reshape(up.shape[0], *down.shape[1:])


def merged_state_dict(dit: nn.Module) -> dict[str, Tensor]:
    """Plain DiT state dict (our keys) with every adapter merged: W + (alpha / r) up @ down."""
    layers = lora_layers(dit)
    state: dict[str, Tensor] = {}
    for key, value in dit.state_dict().items():
        if ".lora_" in key:
            continue
        module, _, param = key.rpartition(".")
        if module.endswith(".base_layer"):
            path = module[: -len(".base_layer")]
            if param == "weight" and path in layers:
                value = (value.float() + _delta(*_lora_pair(layers[path]))).to(value.dtype)
            key = f"{path}.{param}"
        state[key] = value.detach()
    return state


def metadata(kind: str, *, base_hash: str, base_name: str, steps: int, config_json: str, extra=None) -> dict[str, str]:
    """Common safetensors metadata of our outputs (all values str)."""
    meta = {"kind": kind, "base_model_sha256": base_hash, "base_model": base_name, "steps": str(steps),
            "train_config": config_json, **(extra or {})}
    return {META_PREFIX + k: str(v) for k, v in meta.items()}


@dataclass
class LoraFile:
    """A ComfyUI LoRA in memory: tensors (module docstring) and the string metadata of the file."""

    tensors: dict[str, Tensor]
    metadata: dict[str, str]

    @classmethod
    def read(cls, path: str | os.PathLike) -> "LoraFile":
        """A LoRA file as written by `save`."""
        tensors, info = read_state_dict_with_info(path)
        return cls(tensors, dict(info.metadata))

    def save(self, path: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Write it atomically; floating tensors (not the alphas) cast to `dtype` when given."""
        cast = {k: v.to(dtype) if dtype is not None and not k.endswith(".alpha") else v for k, v in self.tensors.items()}
        save_safetensors_atomic(cast, path, metadata=self.metadata)
        return Path(path)


def lora_file(student: Student, meta: dict[str, str], rank: int, alpha: float,
              dtype: torch.dtype = torch.float32) -> LoraFile:
    """The ComfyUI LoRA of a LoRA-mode student with the LoRA metadata (rank, alpha, full modules)."""
    full_modules = trained_full_modules(student.dit)
    tensors = comfy_lora_state_dict(student.dit, dtype, full_modules)
    if not any(k.endswith(".lora_down.weight") for k in tensors):
        raise ValueError("the student has no LoRA adapters (model.mode is 'full'?); export the full student instead")
    extra = {f"{META_PREFIX}lora_rank": str(rank), f"{META_PREFIX}lora_alpha": str(alpha),
             f"{META_PREFIX}full_modules": json.dumps(list(full_modules))}
    return LoraFile({k: v.cpu() for k, v in tensors.items()}, {**meta, **extra})


# The key layouts a LoRA is written in: this pack's / ComfyUI's, or diffusers' PEFT form
# (sana_sprint_core.lora_formats.to_peft).
LORA_FILE_FORMATS = ("comfyui", "diffusers")


def diffusers_lora(lora: LoraFile) -> LoraFile:
    """The same LoRA in diffusers' PEFT keys, alpha in `lora_adapter_metadata`, our metadata kept."""
    tensors, peft_meta = to_peft(read_lora(lora.tensors, None, source="the LoRA"))
    return LoraFile(tensors, {**lora.metadata, **peft_meta, f"{META_PREFIX}file_format": "diffusers"})


def export_student(student: Student, path: str | os.PathLike, meta: dict[str, str],
                   dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write the full student DiT (adapters merged) in `dtype`; `load_dit(path)` reads it back."""
    state = merged_state_dict(student.dit)
    dit = dit_from_state_dict({k: v.to("cpu") for k, v in state.items()}, student.dit.config, dtype=dtype)
    save_dit(dit, path, metadata=meta)
    return Path(path)


def plain_dit(student_dit: nn.Module) -> SanaSprintDiT:
    """A plain SanaSprintDiT (fp32, CPU) equal to the adapted student DiT."""
    state = {k: v.to("cpu") for k, v in merged_state_dict(student_dit).items()}
    return dit_from_state_dict(state, student_dit.config, dtype=torch.float32)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The safetensors metadata of a file we wrote."""
    return dict(resolve_checkpoint(path).metadata)



def layer_classes(dit: SanaSprintDiT) -> SimpleNamespace:
    """The `operations` namespace a DiT was built with (a host's Linear / Conv2d classes)."""
    return SimpleNamespace(Linear=type(dit.proj_out), Conv2d=type(dit.patch_embed.proj))


def dit_like(template: SanaSprintDiT, state: dict[str, Tensor], config, device) -> SanaSprintDiT:
    """A DiT of `config` from `state` (strict keys), of the class, layer classes and dtype of `template`.

    The class is the template's own, so a host that imported the core under another package name
    (the ComfyUI pack) gets its own class back. Tensors already in that dtype and on `device` become
    the parameters without a copy.
    """
    with torch.device("meta"):
        model = type(template)(config, operations=layer_classes(template), dtype=template.dtype)
    model.requires_grad_(False)  # frozen, like a loaded model; a trainer unfreezes what it trains
    model.load_state_dict({k: v.to(template.dtype) for k, v in state.items()}, strict=True, assign=True)
    return model.to(device).eval()


def lora_base_dit(teacher: SanaSprintDiT, device=None) -> SanaSprintDiT:
    """What our LoRA applies to: the teacher's weights plus a zero guidance (CFG) embedder.

    The LoRA stores the trained embedder as `.diff` over a zero base (module docstring), so adding
    it here at strength s gives s times the trained embedder. Shares the teacher's tensors when they
    are already on `device` (default: where the teacher is); the teacher is not modified.
    """
    if teacher.config.guidance_embeds:
        raise ValueError("the DiT already has a guidance (CFG) embedder; a zero one is added only to a teacher")
    device = teacher.proj_out.weight.device if device is None else torch.device(device)
    config = teacher.config.replace(guidance_embeds=True)
    with torch.device("meta"):
        shapes = type(teacher)(config).state_dict()
    state = {k: v.detach().to(device) for k, v in teacher.state_dict().items()}
    for key, value in shapes.items():
        if key not in state:
            state[key] = torch.zeros(value.shape, dtype=teacher.dtype, device=device)
    return dit_like(teacher, state, config, device)


def state_dict_sha256(module: nn.Module) -> str:
    """sha256 over a module's state dict: names, dtypes, shapes and bytes, in key order."""
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        t = value.detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
