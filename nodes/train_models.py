"""Model plumbing of the training nodes: releasing models from the GPU, applying our LoRA to a MODEL.

Our LoRA (trainers/export.py) holds low-rank pairs for the teacher's layers plus the student's new
guidance (CFG) embedder as `.diff` / `.diff_b` over a zero base. ComfyUI's LoRA machinery can add
those only to weights that exist, so a teacher MODEL first becomes a new MODEL whose DiT is the
teacher's (same tensors while they sit on the offload device) plus a zero guidance embedder; the
input MODEL is never changed. The LoRA is then loaded with `comfy.lora` and added as ordinary
ModelPatcher patches at a strength, exactly as ComfyUI's own LoRA loaders do; keys that match
nothing raise instead of being logged and skipped.
"""

from __future__ import annotations

import copy
import logging
from contextlib import contextmanager

import comfy.lora
import comfy.model_management as mm

from ..sana_sprint_core import lora_formats
from ..sana_sprint_core.checkpoint_io import short_list
from ..trainers.export import FULL_MODULES, lora_base_dit
from .comfy_model import dit_patcher, sana_dit

# model_options key holding the training metadata (steps, config, base hash ...) of a MODEL that
# came out of SanaSprintDistill or SanaSprintLoraLoader; SanaSprintSaveStudent writes it to the file.
TRAINING_METADATA_KEY = "sana_sprint_training"
_NOT_LOADED = "lora key not loaded: "  # ComfyUI's log line for a LoRA key that matched nothing


def release(*models) -> None:
    """Unload every loaded model that shares a ModelPatcher's model with `models` (clones too).

    The weights go back to the offload device with their patches removed; ComfyUI loads them again
    when a node needs them.
    """
    inner = [getattr(m, "model", None) for m in models]
    loaded = list(mm.current_loaded_models)
    targets = [lm for lm in loaded if lm.model is not None and any(lm.model.model is i for i in inner)]
    keep = [lm for lm in loaded if lm not in targets]
    for device in {lm.device for lm in targets}:
        mm.free_memory(1e30, device, keep_loaded=keep)


class _KeyLog(logging.Handler):
    """Collects ComfyUI's "lora key not loaded" warnings while a LoRA is matched."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.keys: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(_NOT_LOADED):
            self.keys.append(message[len(_NOT_LOADED):])


@contextmanager
def _unloaded_keys():
    handler = _KeyLog()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler.keys
    finally:
        root.removeHandler(handler)


def _carries_embedder(tensors: dict) -> bool:
    """Whether a LoRA, in any format lora_formats reads, changes the guidance embedder."""
    names = (*FULL_MODULES, *(m.replace(".", "_") for m in FULL_MODULES))  # dotted or underscored key names
    return any(name in k for k in tensors for name in names)


def with_zero_guidance(model):
    """A new MODEL: the teacher's DiT plus a zero guidance embedder, with the input's patches and options."""
    release(model)  # unpatched weights on the offload device: the new DiT shares them
    dit = sana_dit(model, "SanaSprintLoraLoader")
    base = dit_patcher(lora_base_dit(dit, device=model.offload_device),
                       manual_cast_dtype=model.model.manual_cast_dtype)
    for key, patch_list in model.patches.items():  # e.g. a LoRA applied to the teacher before
        base.patches[key] = patch_list[:]
    base.object_patches = model.object_patches.copy()
    base.model_options = copy.deepcopy(model.model_options)
    return base


def _check_base(model, source: str) -> None:
    """A distilled LoRA's embedder is a difference over zero: refuse a model whose embedder is trained."""
    embedder = sana_dit(model, "SanaSprintLoraLoader").time_embed.guidance_embedder
    if any(float(p.detach().abs().max()) != 0.0 for p in embedder.parameters()):
        raise ValueError(f"{source} was distilled from a flow-matching teacher: it stores the student's whole "
                         "guidance embedder as a difference over zero, so it applies to that teacher, not to a model "
                         "that already has a trained guidance embedder (a SANA-Sprint model). Connect the teacher.")


def apply_lora(model, tensors: dict, strength: float, source: str, metadata: dict | None = None,
               file_metadata: dict | None = None):
    """A MODEL with the LoRA `tensors` (any format of core lora_formats) added as patches at `strength`;
    `model` is unchanged. `metadata` (this pack's training keys) is kept on the MODEL; `file_metadata`
    is the file's whole safetensors metadata (diffusers keeps a PEFT LoRA's alpha there)."""
    dit = sana_dit(model, "SanaSprintLoraLoader")
    if _carries_embedder(tensors) and not dit.config.guidance_embeds:
        patched = with_zero_guidance(model)
    else:
        if _carries_embedder(tensors):
            _check_base(model, source)
        patched = model.clone()
    shapes = {k: v.shape for k, v in sana_dit(patched, "SanaSprintLoraLoader").state_dict().items()}
    lora = lora_formats.read_lora(tensors, shapes, file_metadata, source=source)
    lora_formats.check_against(lora, shapes, f"SANA model (width {dit.config.hidden_size})", source)
    tensors = lora_formats.to_comfy(lora)
    key_map = comfy.lora.model_lora_keys_unet(patched.model, {})
    with _unloaded_keys() as missing:
        patches = comfy.lora.load_lora(tensors, key_map)
    if missing:
        raise ValueError(f"{source}: {len(missing)} LoRA key(s) match no weight of this model: {short_list(missing)}")
    added = patched.add_patches(patches, strength)
    if len(added) != len(patches):
        raise ValueError(f"{source}: {len(patches) - len(added)} LoRA patch(es) found no weight of this model")
    if metadata:
        patched.model_options[TRAINING_METADATA_KEY] = dict(metadata)
    return patched
