"""Stand-ins for the ComfyUI pieces the training nodes use (see stubs.py), installed by `install`.

* `comfy.lora`: `model_lora_keys_unet` (generic `diffusion_model.` / `lora_unet_` map) and
  `load_lora` (lora_up/lora_down/alpha pairs, `.diff` / `.diff_b`), which logs
  "lora key not loaded: <key>" for every key it did not use, as ComfyUI 0.3.64 does;
* a ModelPatcher with `patches` / `add_patches` (keys must exist in the model's state dict) whose
  patches model management applies on load (W + strength * alpha / rank * up @ down, W + strength
  * diff) and removes when another patcher of the same model loads or the model is unloaded;
* `current_loaded_models`, `free_memory(memory, device, keep_loaded)`, `soft_empty_cache`;
* `io.LossMap` (LOSS_MAP) and `ui.PreviewText`.
Numbers follow ComfyUI's definitions; the real patching is exercised by tests/e2e.
"""

from __future__ import annotations

import logging
import types
from dataclasses import dataclass, field

import torch


@dataclass
class TrainingState:
    unloads: list = field(default_factory=list)  # patchers unloaded by free_memory


TRAINING = TrainingState()


def _delta(patch, weight: torch.Tensor) -> torch.Tensor:
    kind = patch[0]
    if kind == "diff":
        return patch[1].float()
    up, down, alpha = patch[1].float(), patch[2].float(), patch[3]
    scale = 1.0 if alpha is None else alpha / down.shape[0]
    return scale * (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)


class LoadedModel:
    def __init__(self, patcher, device):
        self.model, self.device = patcher, device


def _unpatch(model) -> None:
    """Put the original parameters back (ComfyUI restores its backup the same way)."""
    for key, original in (getattr(model, "_stub_backup", None) or {}).items():
        _set_param(model, key, original)
    model._stub_backup, model._stub_patched_by = {}, None


def _set_param(model, key: str, value: torch.nn.Parameter) -> torch.nn.Parameter:
    module, _, name = key.rpartition(".")
    owner = model.get_submodule(module)
    old = getattr(owner, name)
    setattr(owner, name, value)
    return old


def _patch(patcher) -> None:
    """Patched weights as NEW parameters (never in place: a tensor may be shared with another model)."""
    model = patcher.model
    if getattr(model, "_stub_patched_by", None) is patcher:
        return
    _unpatch(model)
    with torch.no_grad():
        for key, entries in patcher.patches.items():
            module, _, name = key.rpartition(".")
            weight = getattr(model.get_submodule(module), name)
            total = weight.float() + sum(strength * _delta(patch, weight) for strength, patch in entries)
            model._stub_backup[key] = _set_param(model, key, torch.nn.Parameter(total.to(weight.dtype),
                                                                                requires_grad=False))
    model._stub_patched_by = patcher


def patcher_class(base: type) -> type:
    """ModelPatcher with ComfyUI's patch bookkeeping on top of the stub in stubs.py."""

    class ModelPatcher(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.patches = {}

        def clone(self):
            n = ModelPatcher(self.model, self.load_device, self.offload_device, self.size)
            n.model_options = {k: (v.copy() if isinstance(v, dict) else v) for k, v in self.model_options.items()}
            n.object_patches = self.object_patches.copy()
            n.patches = {k: v[:] for k, v in self.patches.items()}
            return n

        def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
            keys = set(self.model.state_dict())
            added = [k for k in patches if k in keys]
            for k in added:
                self.patches.setdefault(k, []).append((strength_patch, patches[k]))
            return added

    return ModelPatcher


def _make_lora() -> types.ModuleType:
    lora = types.ModuleType("comfy.lora")

    def model_lora_keys_unet(model, key_map={}):
        for k in model.state_dict():
            if k.startswith("diffusion_model.") and k.endswith(".weight"):
                path = k[len("diffusion_model."):-len(".weight")]
                key_map[f"diffusion_model.{path}"] = k
                key_map["lora_unet_" + path.replace(".", "_")] = k
        return key_map

    def load_lora(lora_sd, to_load, log_missing=True):
        patches, used = {}, set()
        for x, target in to_load.items():
            up, down = f"{x}.lora_up.weight", f"{x}.lora_down.weight"
            if up in lora_sd and down in lora_sd:
                alpha = lora_sd.get(f"{x}.alpha")
                patches[target] = ("lora", lora_sd[up], lora_sd[down], None if alpha is None else float(alpha))
                used |= {up, down, f"{x}.alpha"}
            if f"{x}.diff" in lora_sd:
                patches[target] = ("diff", lora_sd[f"{x}.diff"])
                used.add(f"{x}.diff")
            if f"{x}.diff_b" in lora_sd:
                patches[target[: -len(".weight")] + ".bias"] = ("diff", lora_sd[f"{x}.diff_b"])
                used.add(f"{x}.diff_b")
        if log_missing:
            for k in lora_sd:
                if k not in used:
                    logging.warning("lora key not loaded: {}".format(k))
        return patches

    lora.model_lora_keys_unet, lora.load_lora = model_lora_keys_unet, load_lora
    return lora


def _extend_management(mm: types.ModuleType) -> None:
    mm.current_loaded_models = []
    plain_load = mm.load_models_gpu

    def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                        force_full_load=False):
        plain_load(models, memory_required, force_patch_weights, minimum_memory_required, force_full_load)
        for patcher in models:
            _patch(patcher)
            if not any(lm.model is patcher for lm in mm.current_loaded_models):
                mm.current_loaded_models.insert(0, LoadedModel(patcher, patcher.load_device))

    def free_memory(memory_required, device, keep_loaded=[]):
        for lm in [m for m in mm.current_loaded_models if m.device == device and m not in keep_loaded]:
            if lm.model.model._stub_patched_by is lm.model:
                _unpatch(lm.model.model)
            lm.model.model.to(lm.model.offload_device)
            mm.current_loaded_models.remove(lm)
            TRAINING.unloads.append(lm.model)

    mm.load_models_gpu, mm.free_memory, mm.soft_empty_cache = load_models_gpu, free_memory, lambda force=False: None


def install(mods: dict, io_type) -> None:
    """Add the pieces above to the stub modules of stubs.build_modules."""
    mods["comfy.lora"] = mods["comfy"].lora = _make_lora()
    mods["comfy.model_patcher"].ModelPatcher = patcher_class(mods["comfy.model_patcher"].ModelPatcher)
    _extend_management(mods["comfy.model_management"])
    io = mods["comfy_api.latest"].io
    io.LossMap = io_type("LOSS_MAP")
    ui = mods["comfy_api.latest"].ui

    class PreviewText:
        def __init__(self, value, **kwargs):
            self.value = value

        def as_dict(self):
            return {"text": (self.value,)}

    ui.PreviewText = PreviewText


def reset() -> None:
    TRAINING.unloads.clear()
