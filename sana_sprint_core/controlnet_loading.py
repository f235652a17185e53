"""Loading and saving Sana ControlNets: NVlabs `.pth`/safetensors, diffusers `SanaControlNetModel`, ours.

Layouts, told apart by key names (never the file name):
- NVlabs `SanaMSControlNet` (reference 5.1): the WHOLE base model (`x_embedder`, `blocks.*`, ...)
  plus `controlnet.{j}.copied_block.*` (base-block names), `controlnet.0.before_proj.*` and
  `controlnet.{j}.after_proj.*`. Only the ControlNet part is loaded (-> "nvlabs" wiring);
  `load_controlnet_base` loads the base part as a SanaSprintDiT.
- diffusers `SanaControlNetModel` (reference 5.2): `patch_embed`, `time_embed.emb.timestep_embedder`,
  `time_embed.linear`, `caption_projection`, `caption_norm`, `transformer_blocks.{j}`,
  `input_block`, `controlnet_blocks.{j}` (-> "diffusers" wiring). Without the embedders (a
  stripped conversion of an NVlabs file) the same names mean the "nvlabs" wiring.
- ours (`save_controlnet`): diffusers names plus the ControlNetConfig in safetensors metadata.
Copied-block keys are renamed by dit_keys (the DiT's own NVlabs mapping). Keys are accounted for
strictly: anything left over or missing raises, naming the file.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import torch
from safetensors import safe_open

from .checkpoint_io import (
    TensorSpec, read_config_json, read_state_dict, read_tensor_specs, resolve_checkpoint, save_safetensors_atomic,
    short_list, strip_prefix,
)
from .controlnet import WIRINGS, ControlNetConfig, SanaControlNet
from .dit import SanaSprintDiT
from .dit_config import LINEAR_HEAD_DIM, PRESETS, DiTConfig
from .dit_keys import DIFFUSERS_ANCHOR, NVLABS_ANCHOR, DiTLayout, describe_foreign, diffusers_to_ours
from .dit_keys import nvlabs_to_diffusers, split_spec, split_tensor, to_canonical
from .dit_loading import check_keys, dit_from_state_dict, resolve_config, resolve_dtype, with_compute_dtype
from .model_files import CONTROLNET_FILES  # noqa: F401  (re-exported: where to download)

logger = logging.getLogger(__name__)

CONFIG_METADATA_KEY = "sana_sprint_controlnet_config"
DIFFUSERS_CLASS = "SanaControlNetModel"
_NVLABS_CN = "controlnet.0.before_proj.weight"
_DIFFUSERS_CN = "input_block.weight"
_EMBEDDERS = ("patch_embed.", "time_embed.", "caption_projection.", "caption_norm.")
_NV_COPIED = re.compile(r"^controlnet\.(\d+)\.copied_block\.(.*)$")
_NV_AFTER = re.compile(r"^controlnet\.(\d+)\.after_proj\.(.*)$")
_BLOCK_INDEX = re.compile(r"^transformer_blocks\.(\d+)\.")



@dataclass(frozen=True)
class ControlNetLayout:
    """Key naming of a ControlNet file: ``kind`` "nvlabs" or "diffusers", under ``prefix``."""

    kind: str
    prefix: str = ""


def detect_controlnet_layout(keys: Iterable[str], source: str | os.PathLike = "<state dict>") -> ControlNetLayout:
    """Find the layout from anchor keys; a DiT or another model gets an error saying what it is."""
    keys = list(keys)
    anchors = ((_NVLABS_CN, "nvlabs"), (_DIFFUSERS_CN, "diffusers"))
    found = {(k[: len(k) - len(a)], kind) for k in keys for a, kind in anchors if k == a or k.endswith("." + a)}
    found = {(p, kind) for p, kind in found if kind == "nvlabs" or f"{p}controlnet_blocks.0.weight" in keys}
    if len(found) == 1:
        prefix, kind = found.pop()
        return ControlNetLayout(kind, prefix)
    if found:
        raise ValueError(f"{source}: keys hold several ControlNets or mix layouts {sorted(found)}")
    if any(k.endswith((DIFFUSERS_ANCHOR, NVLABS_ANCHOR)) for k in keys):
        what = "a Sana DiT, not a ControlNet (it has no controlnet.* / input_block keys); load it with the DiT loader"
    else:
        what = describe_foreign(keys) or "no known model"
    raise ValueError(f"{source} is not a Sana ControlNet checkpoint; it looks like {what}. "
                     f"First keys: {short_list(sorted(keys), 5)}")


def split_controlnet_keys(state: Mapping, layout: ControlNetLayout, split, source) -> tuple[dict, dict]:
    """(ControlNet part in our names, the rest under the prefix: the base model of NVlabs files)."""
    state = strip_prefix(state, layout.prefix, source)
    if layout.kind == "diffusers":
        return diffusers_to_ours(state, source), {}
    control = {k: v for k, v in state.items() if k.startswith("controlnet.")}
    base = {k: v for k, v in state.items() if not k.startswith("controlnet.")}
    blocks, other = {}, {}
    for key, value in control.items():
        if m := _NV_COPIED.match(key):
            blocks[f"blocks.{m.group(1)}.{m.group(2)}"] = value
        elif m := _NV_AFTER.match(key):
            other[f"controlnet_blocks.{m.group(1)}.{m.group(2)}"] = value
        elif key.startswith("controlnet.0.before_proj."):
            other["input_block." + key[len("controlnet.0.before_proj."):]] = value
        else:
            other[key] = value  # unknown: reported by the strict key check
    return {**nvlabs_to_diffusers(blocks, split, source), **other}, base


def infer_controlnet_config(shapes: Mapping[str, tuple], wiring: str, diffusers_config: Mapping | None = None,
                            source: str | os.PathLike = "<state dict>") -> ControlNetConfig:
    """ControlNetConfig from the ControlNet's shapes (our names); heads from config.json or the width."""
    dim = _need(shapes, "input_block.weight", source)[0]
    mlp_hidden = _need(shapes, "transformer_blocks.0.ff.conv_point.weight", source)[1]  # (D, Hf, 1, 1)
    values = dict(hidden_size=dim, num_layers=_count_blocks(shapes, source), mlp_ratio=mlp_hidden / dim,
                  qk_norm="transformer_blocks.0.attn1.norm_q.weight" in shapes, guidance_embeds=False)
    if int(dim * values["mlp_ratio"]) != mlp_hidden:
        raise ValueError(f"{source}: GLUMBConv width {mlp_hidden} is not int({dim} * r); pass config=")
    if "patch_embed.proj.weight" in shapes:  # (D, C, p, p)
        embed = shapes["patch_embed.proj.weight"]
        values.update(in_channels=embed[1], patch_size=embed[2])
    if "caption_projection.linear_1.weight" in shapes:  # (D, caption_channels)
        values["caption_channels"] = shapes["caption_projection.linear_1.weight"][1]
    values.update(_heads(dim, diffusers_config, source))
    return ControlNetConfig(DiTConfig.from_dict(values), values["num_layers"], wiring)


def _need(shapes: Mapping[str, tuple], key: str, source) -> tuple:
    if key not in shapes:
        raise ValueError(f"{source}: key {key!r} is missing; it is needed to infer the ControlNet's shape")
    return tuple(shapes[key])


def _count_blocks(shapes: Mapping[str, tuple], source) -> int:
    found = {int(m.group(1)) for k in shapes if (m := _BLOCK_INDEX.match(k))}
    if not found or found != set(range(max(found) + 1)):
        raise ValueError(f"{source}: ControlNet blocks must be numbered 0..N-1; found {sorted(found)}")
    return len(found)


def _heads(dim: int, diffusers_config: Mapping | None, source) -> dict:
    """num_heads / cross_heads (and norm_eps) from config.json, else from the released widths."""
    if diffusers_config is not None:
        heads = diffusers_config.get("num_attention_heads", 70)
        cross = diffusers_config.get("num_cross_attention_heads", 20)
        if heads * diffusers_config.get("attention_head_dim", 32) != dim or \
                cross * diffusers_config.get("cross_attention_head_dim", 112) != dim:
            raise ValueError(f"{source}: config.json head counts do not fit the width {dim}")
        return {"num_heads": heads, "cross_heads": cross, "norm_eps": float(diffusers_config.get("norm_eps", 1e-6))}
    cross = {p.hidden_size: p.cross_heads for p in PRESETS.values()}.get(dim)
    if cross is None or dim % LINEAR_HEAD_DIM:
        raise ValueError(f"{source}: width {dim} is not a released Sana width "
                         f"({sorted({p.hidden_size for p in PRESETS.values()})}) and no config.json is beside it; "
                         "pass config=ControlNetConfig(DiTConfig(...))")
    return {"num_heads": dim // LINEAR_HEAD_DIM, "cross_heads": cross}


def read_controlnet_config(path: str | os.PathLike) -> dict | None:
    """The diffusers config.json of a SanaControlNetModel in folder ``path`` or beside file ``path``."""
    return read_config_json(path, DIFFUSERS_CLASS)


def _default_wiring(shapes: Mapping[str, tuple], layout: ControlNetLayout) -> str:
    has_embedders = any(k.startswith(_EMBEDDERS) for k in shapes)
    return "diffusers" if layout.kind == "diffusers" and has_embedders else "nvlabs"


def _resolve_wiring(shapes: dict, layout: ControlNetLayout, wiring: str | None, source) -> tuple[str, dict]:
    """The wiring and the shapes it uses; embedders of a file asked to run "nvlabs" are dropped (logged)."""
    chosen = wiring or _default_wiring(shapes, layout)
    if chosen not in WIRINGS:
        raise ValueError(f"wiring must be one of {WIRINGS} or None (the file's own), got {wiring!r}")
    embedders = sorted(k for k in shapes if k.startswith(_EMBEDDERS))
    if chosen == "diffusers" and not embedders:
        raise ValueError(f"{source}: the diffusers wiring needs the ControlNet's own patch_embed, time_embed and "
                         "caption_projection, which this file lacks; use wiring='nvlabs'")
    if chosen == "nvlabs" and embedders:
        logger.info("%s: nvlabs wiring uses the base model's embedders; ignoring %d embedder tensors of the file",
                    source, len(embedders))
        shapes = {k: v for k, v in shapes.items() if not k.startswith(_EMBEDDERS)}
    return chosen, shapes


def load_controlnet(
    path: str | os.PathLike,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str = "cpu",
    config: ControlNetConfig | None = None,
    *,
    wiring: str | None = None,
    operations=None,
    compute_dtype: torch.dtype | None = None,
) -> SanaControlNet:
    """Load the ControlNet of an NVlabs, diffusers or our own file (or folder with config.json).

    wiring: None = the way the file's format was trained (module docstring); "nvlabs"/"diffusers"
    to override. config: the architecture, checked against the shapes (None: metadata, else inferred).
    dtype: the storage dtype, fp32/bf16/fp16/fp8_e4m3fn/fp8_e5m2 or None (the file's when uniform, else
    fp32); compute_dtype as for load_dit.
    """
    info = resolve_checkpoint(path)
    src = info.path
    specs = read_tensor_specs(path)
    layout = detect_controlnet_layout(specs, src)
    cn_specs, base_specs = split_controlnet_keys(specs, layout, split_spec, src)
    if base_specs:
        logger.info("%s also holds a base model (%d tensors); load_controlnet_base loads it", src, len(base_specs))
    shapes = {k: tuple(s.shape) for k, s in cn_specs.items()}
    config = config or _config_from_metadata(info.metadata, src)
    chosen, shapes = _resolve_wiring(shapes, layout, wiring or (config.wiring if config else None), src)
    if config is None:
        config = infer_controlnet_config(shapes, chosen, read_controlnet_config(path), src)
    config = ControlNetConfig(config.dit, config.num_blocks, chosen, config.time_input_scale)
    target = resolve_dtype(dtype, [cn_specs[k] for k in shapes])
    with torch.device("meta"):
        model = SanaControlNet(config, dtype=target, device="meta", operations=operations)
    check_keys({k: tuple(v.shape) for k, v in model.state_dict().items()}, shapes, src, what="Sana ControlNet")
    state = _read_selected(info, layout, set(shapes), src)
    model.load_state_dict({k: v.to(target) for k, v in state.items()}, strict=True, assign=True)
    return with_compute_dtype(model.to(device).eval(), compute_dtype, device)


def load_controlnet_base(
    path: str | os.PathLike,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str = "cpu",
    config: DiTConfig | None = None,
    overrides: Mapping[str, object] | None = None,
    operations=None,
) -> SanaSprintDiT:
    """The base Sana model that an NVlabs ControlNet file carries beside its ControlNet, as a DiT."""
    info = resolve_checkpoint(path)
    src = info.path
    layout = detect_controlnet_layout(read_tensor_specs(path), src)
    if layout.kind != "nvlabs":
        raise ValueError(f"{src}: a diffusers SanaControlNetModel file holds no base model (only copies of its "
                         "embedders); load the base DiT from its own file with the DiT loader")
    _, base = split_controlnet_keys(read_state_dict(path), layout, split_tensor, src)
    state = to_canonical(base, DiTLayout("nvlabs"), split_tensor, src)
    cfg = resolve_config({k: tuple(v.shape) for k, v in state.items()}, config, overrides, None, src)
    return dit_from_state_dict(state, cfg, dtype=dtype, device=device, operations=operations, source=src)


def save_controlnet(model: SanaControlNet, path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> None:
    """Write the ControlNet as one safetensors file (our names) with its config in the metadata, atomically."""
    meta = {**(metadata or {}), CONFIG_METADATA_KEY: json.dumps(model.config.to_dict())}
    save_safetensors_atomic(model.state_dict(), path, metadata=meta)


def _config_from_metadata(metadata: Mapping[str, str], source) -> ControlNetConfig | None:
    raw = metadata.get(CONFIG_METADATA_KEY)
    if raw is None:
        return None
    try:
        return ControlNetConfig.from_dict(json.loads(raw))
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise ValueError(f"{source}: metadata {CONFIG_METADATA_KEY!r} is not a valid ControlNet config: {e}") from e


def _read_selected(info, layout: ControlNetLayout, wanted: set[str], source) -> dict[str, torch.Tensor]:
    """Only the ControlNet's tensors (our names): safetensors files are read key by key, so the base
    model of an NVlabs file is not loaded; PyTorch files are memory-mapped by torch.load."""
    if info.format != "safetensors":
        state = read_state_dict(info.path)
    else:
        state = {}
        for f in info.files:
            with safe_open(str(f), framework="pt") as handle:
                for key in handle.keys():
                    if key.startswith(layout.prefix + ("controlnet." if layout.kind == "nvlabs" else "")):
                        state[key] = handle.get_tensor(key)
    control, _ = split_controlnet_keys(state, layout, split_tensor, source)
    return {k: v for k, v in control.items() if k in wanted}
