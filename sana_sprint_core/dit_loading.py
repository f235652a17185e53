"""Loading a Sana / Sana-Sprint DiT from a diffusers or NVlabs checkpoint.

`load_dit` reads the key listing first (safetensors headers only), detects the layout from key
names and shapes (never the file name), infers the DiTConfig, checks every key and shape against
a model built on the meta device, then reads the tensors and assigns them as the parameters
(`load_state_dict(strict=True, assign=True)`): no random init, one copy of the weights in memory.

Config inference (only head counts and the time scale are not visible in the shapes):
- shapes give hidden_size, in/out_channels, patch_size, caption_channels, num_layers, mlp_ratio,
  qk_norm (norm_q keys present) and guidance_embeds (guidance_embedder keys present);
- heads: a diffusers ``config.json`` beside the weights (`num_attention_heads`,
  `num_cross_attention_heads`); else self-attention heads = hidden / 32 and cross heads from the
  released width (2240 -> 20, 1152 -> 16, from PRESETS); other widths need ``config`` or
  ``overrides={"cross_heads": ...}``;
- time_input_scale (the embedder sees tau * scale, tau in [0, 1]):
  guidance models (Sprint) -> 1.0, the Sprint pipelines feed tau itself (reference 1.4);
  other models with a diffusers config.json -> 1000 * `timestep_scale`, because SanaPipeline
  feeds t = 1000 * tau times `timestep_scale` (1.0 for original Sana, 0.001 for a dense-time teacher);
  other models without config.json -> 1.0 when qk_norm is present (the Sprint teachers are
  fine-tuned with dense time and QK-norm), else 1000.0 (original Sana).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Mapping

import torch

from .checkpoint_io import (
    TensorSpec, read_config_json, read_state_dict, read_tensor_specs, resolve_checkpoint, save_safetensors_atomic,
    short_list,
)
from .constants import FLOW_TIME_SCALE
from .dit import SanaSprintDiT
from .dit_config import LINEAR_HEAD_DIM, PRESETS, DiTConfig
from .dit_keys import detect_layout, split_spec, split_tensor, to_canonical
from .precision import COMPUTE_DTYPES, is_fp8, storage_dtype
from .precision import compute_dtype as precision_compute_dtype

DIFFUSERS_CLASS = "SanaTransformer2DModel"
# safetensors metadata key under which files we write carry the DiTConfig as JSON.
CONFIG_METADATA_KEY = "sana_sprint_config"
_COMPUTE_DTYPES = tuple(COMPUTE_DTYPES.values())
# Fields visible in the shapes, compared with an explicit `config` and with config.json.
_SHAPE_FIELDS = ("hidden_size", "in_channels", "out_channels", "patch_size", "caption_channels",
                 "num_layers", "mlp_hidden", "qk_norm", "guidance_embeds")
_BLOCK_INDEX = re.compile(r"^transformer_blocks\.(\d+)\.")


def load_dit(
    path: str | os.PathLike,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str = "cpu",
    config: DiTConfig | None = None,
    overrides: Mapping[str, object] | None = None,
    operations=None,
    compute_dtype: torch.dtype | None = None,
) -> SanaSprintDiT:
    """Load a Sana DiT from a file, sharded index, diffusers folder or diffusers pipeline folder.

    dtype: the storage dtype, fp32/bf16/fp16/fp8_e4m3fn/fp8_e5m2 (torch dtype or name); None keeps the
    file's dtype when every tensor has the same one of the first three, else fp32. compute_dtype: what
    the layers compute in (None: the storage dtype, or for fp8 precision.compute_dtype on `device`).
    config: the architecture, checked against the shapes; None infers it (module docstring).
    overrides: DiTConfig fields set on top of either.
    """
    path = _transformer_folder(Path(path))
    info = resolve_checkpoint(path)
    src = info.path
    state = None if info.format == "safetensors" else read_state_dict(path)
    specs = read_tensor_specs(path) if state is None else _specs_of(state)
    layout = detect_layout(specs, src)
    shapes = {k: s.shape for k, s in to_canonical(specs, layout, split_spec, src).items()}
    config = config if config is not None else config_from_metadata(info.metadata, src)
    cfg = resolve_config(shapes, config, overrides, read_diffusers_config(path), src)
    target = resolve_dtype(dtype, specs.values())
    model = _build_meta(cfg, target, operations)
    check_keys(_model_shapes(model), shapes, src)  # before reading any safetensors data
    if state is None:
        state = read_state_dict(path)
    state = to_canonical(state, layout, split_tensor, src)
    for key in list(state):  # cast one tensor at a time: peak memory ~ one copy of the weights
        state[key] = state[key].to(target)
    return with_compute_dtype(_assign(model, state, device, src), compute_dtype, device)


def with_compute_dtype(model, compute: torch.dtype | None, device):
    """`model` with its compute dtype set: `compute`, or for fp8 storage the device's (precision.py)."""
    if compute is None and is_fp8(model.dtype):
        compute = precision_compute_dtype(model.dtype, device)
    if compute is not None and compute != model.dtype:
        model.compute_dtype = compute
    return model


def config_from_metadata(metadata: Mapping[str, str], source) -> DiTConfig | None:
    """The DiTConfig that our own files carry as JSON under the CONFIG_METADATA_KEY metadata key."""
    raw = metadata.get(CONFIG_METADATA_KEY)
    if raw is None:
        return None
    try:
        return DiTConfig.from_dict(json.loads(raw))
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise ValueError(f"{source}: metadata {CONFIG_METADATA_KEY!r} is not a valid DiT config: {e}") from e


def save_dit(model: SanaSprintDiT, path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> None:
    """Write the DiT as one safetensors file (our key names) with its config in the metadata, atomically."""
    meta = {**(metadata or {}), CONFIG_METADATA_KEY: json.dumps(model.config.to_dict())}
    save_safetensors_atomic(model.state_dict(), path, metadata=meta)


def dit_from_state_dict(
    state: Mapping[str, torch.Tensor],
    config: DiTConfig,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str = "cpu",
    operations=None,
    source: str | os.PathLike = "<state dict>",
) -> SanaSprintDiT:
    """Build a DiT on the meta device and assign ``state`` (our key names) as its parameters.

    Tensors already in the target dtype become the parameters without a copy (shared storage);
    ``state`` itself is not modified. Key and shape mismatches raise ValueError.
    """
    target = resolve_dtype(dtype, [TensorSpec(tuple(v.shape), v.dtype) for v in state.values()])
    model = _build_meta(config, target, operations)
    check_keys(_model_shapes(model), {k: tuple(v.shape) for k, v in state.items()}, source)
    return _assign(model, {k: v.to(target) for k, v in state.items()}, device, source)


# --------------------------------------------------------------------------------------------------
# Building and assigning


def _build_meta(config: DiTConfig, dtype: torch.dtype, operations) -> SanaSprintDiT:
    """The model with meta tensors: no memory, and init functions touch no real data."""
    with torch.device("meta"):
        return SanaSprintDiT(config, dtype=dtype, device="meta", operations=operations)


def _model_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _assign(model: SanaSprintDiT, state: Mapping[str, torch.Tensor], device, source) -> SanaSprintDiT:
    """load_state_dict(strict, assign) then move to ``device``; every tensor must be real after."""
    model.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"{source}: tensors left on the meta device after loading: {short_list(left)}")
    return model.to(device).eval()


def check_keys(expected: Mapping[str, tuple], got: Mapping[str, tuple], source: str | os.PathLike,
               what: str = "Sana DiT") -> None:
    """Raise ValueError naming missing and unexpected keys, then shape mismatches (key, expected, got)."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{source}: keys do not match the {what}; missing {len(missing)}: {short_list(missing)}; "
            f"unexpected {len(unexpected)}: {short_list(unexpected)}"
        )
    bad = [f"{k}: expected {tuple(expected[k])}, got {tuple(got[k])}"
           for k in sorted(expected) if tuple(expected[k]) != tuple(got[k])]
    if bad:
        raise ValueError(f"{source}: {len(bad)} shape mismatch(es): {short_list(bad, 5)}")


def resolve_dtype(dtype: torch.dtype | str | None, specs) -> torch.dtype:
    """The storage dtype: the one asked for, else the file's when uniform fp32/fp16/bf16, else fp32."""
    if dtype is None:
        kinds = {s.dtype for s in specs}
        return kinds.pop() if len(kinds) == 1 and kinds <= set(_COMPUTE_DTYPES) else torch.float32
    return storage_dtype(dtype)


def _specs_of(state: Mapping[str, torch.Tensor]) -> dict[str, TensorSpec]:
    return {k: TensorSpec(tuple(v.shape), v.dtype) for k, v in state.items()}


def _transformer_folder(path: Path) -> Path:
    """A diffusers pipeline folder (model_index.json + transformer/) means its transformer/."""
    if path.is_dir() and (path / "model_index.json").is_file() and (path / "transformer").is_dir():
        return path / "transformer"
    return path


# --------------------------------------------------------------------------------------------------
# Config


def read_diffusers_config(path: str | os.PathLike) -> dict | None:
    """The diffusers config.json of a SanaTransformer2DModel in folder ``path`` or beside file ``path``."""
    return read_config_json(path, DIFFUSERS_CLASS)


def resolve_config(
    shapes: Mapping[str, tuple[int, ...]],
    config: DiTConfig | None = None,
    overrides: Mapping[str, object] | None = None,
    diffusers_config: Mapping | None = None,
    source: str | os.PathLike = "<state dict>",
) -> DiTConfig:
    """The DiTConfig for canonical ``shapes``: ``config`` or the inferred one, plus ``overrides``;
    always checked against the shapes."""
    fields = _shape_fields(shapes, source)
    if config is None:
        values = {**fields, **_head_fields(fields, diffusers_config, source)}
        values["time_input_scale"] = _time_input_scale(fields, diffusers_config)
        values.update(_override_dict(overrides))
        lacking = [h for h in ("num_heads", "cross_heads") if h not in values]
        if lacking:
            raise ValueError(
                f"{source}: hidden size {fields['hidden_size']} is not a released Sana width "
                f"({sorted({p.hidden_size for p in PRESETS.values()})}) and no diffusers config.json "
                f"is beside it, so {lacking} cannot be inferred from shapes; pass config=DiTConfig(...) "
                f"or overrides={{{', '.join(repr(h) + ': N' for h in lacking)}}}"
            )
        values.pop("mlp_hidden")
        cfg = DiTConfig.from_dict(values)
    else:
        cfg = config.replace(**_override_dict(overrides))
    _check_against(cfg, fields, source)
    return cfg


def _override_dict(overrides: Mapping[str, object] | None) -> dict:
    known = set(DiTConfig.__dataclass_fields__)
    unknown = sorted(set(overrides or {}) - known)
    if unknown:
        raise ValueError(f"unknown DiTConfig override(s) {unknown}; known fields: {sorted(known)}")
    return dict(overrides or {})


def _need(shapes: Mapping[str, tuple], key: str, what: str, source) -> tuple[int, ...]:
    if key not in shapes:
        raise ValueError(f"{source}: key {key!r} is missing; it is needed to infer {what}")
    return tuple(shapes[key])


def _shape_fields(shapes: Mapping[str, tuple], source) -> dict:
    """Every config field the shapes determine (mlp as `mlp_hidden` and the derived `mlp_ratio`)."""
    embed = _need(shapes, "patch_embed.proj.weight", "hidden size and patch size", source)  # (D, C, p, p)
    if len(embed) != 4 or embed[2] != embed[3]:
        raise ValueError(f"{source}: patch_embed.proj.weight has shape {embed}, expected (D, C, p, p)")
    dim, patch = embed[0], embed[2]
    caption = _need(shapes, "caption_projection.linear_1.weight", "caption_channels", source)  # (D, Cc)
    out_rows = _need(shapes, "proj_out.weight", "out_channels", source)[0]  # p*p*C_out
    mlp_hidden = _need(shapes, "transformer_blocks.0.ff.conv_point.weight", "mlp_ratio", source)[1]  # (D, Hf, 1, 1)
    if out_rows % (patch * patch):
        raise ValueError(f"{source}: proj_out has {out_rows} rows, not a multiple of patch_size^2={patch * patch}")
    return dict(
        hidden_size=dim, in_channels=embed[1], patch_size=patch, caption_channels=caption[1],
        out_channels=out_rows // (patch * patch), num_layers=_count_blocks(shapes, source),
        mlp_hidden=mlp_hidden, mlp_ratio=_mlp_ratio(dim, mlp_hidden, source),
        qk_norm="transformer_blocks.0.attn1.norm_q.weight" in shapes,
        guidance_embeds="time_embed.guidance_embedder.linear_1.weight" in shapes,
    )


def _count_blocks(shapes: Mapping[str, tuple], source) -> int:
    found = {int(m.group(1)) for k in shapes if (m := _BLOCK_INDEX.match(k))}
    gaps = sorted(set(range(max(found, default=-1) + 1)) - found)
    if not found or gaps:
        raise ValueError(f"{source}: transformer blocks must be numbered 0..N-1; found {sorted(found)}")
    return len(found)


def _mlp_ratio(dim: int, hidden: int, source) -> float:
    """mlp_ratio with int(dim * ratio) == hidden, as both codebases size the GLUMBConv."""
    ratio = hidden / dim
    if int(dim * ratio) != hidden:
        raise ValueError(f"{source}: GLUMBConv width {hidden} is not int({dim} * r) for r = {ratio}; pass config=")
    return ratio


def _head_fields(fields: Mapping, diffusers_config: Mapping | None, source) -> dict:
    """num_heads / cross_heads from config.json, else from the width (LINEAR_HEAD_DIM, PRESETS)."""
    dim = fields["hidden_size"]
    if diffusers_config is not None:
        return _from_diffusers_config(diffusers_config, fields, source)
    out = {}
    if dim % LINEAR_HEAD_DIM == 0:
        out["num_heads"] = dim // LINEAR_HEAD_DIM
    cross = {p.hidden_size: p.cross_heads for p in PRESETS.values()}.get(dim)
    if cross is not None:
        out["cross_heads"] = cross
    return out


def _from_diffusers_config(cfg: Mapping, fields: Mapping, source) -> dict:
    """Head counts, guidance scale and norm eps from a SanaTransformer2DModel config.json.

    Keys that diffusers 0.42 does not know are ignored, as diffusers itself ignores them.
    """
    dim, default = fields["hidden_size"], PRESETS["sprint_1600m"]  # diffusers' defaults are Sprint 1.6B
    heads = cfg.get("num_attention_heads", default.num_heads)
    head_dim = cfg.get("attention_head_dim", default.head_dim)
    cross = cfg.get("num_cross_attention_heads", default.cross_heads)
    cross_dim = cfg.get("cross_attention_head_dim", default.cross_head_dim)
    problems = []
    if heads * head_dim != dim:
        problems.append(f"num_attention_heads * attention_head_dim = {heads * head_dim}")
    if cross * cross_dim != dim:
        problems.append(f"num_cross_attention_heads * cross_attention_head_dim = {cross * cross_dim}")
    if cfg.get("cross_attention_dim", dim) not in (None, dim):
        problems.append(f"cross_attention_dim = {cfg['cross_attention_dim']}")
    if cfg.get("interpolation_scale") is not None:
        problems.append(f"interpolation_scale = {cfg['interpolation_scale']} (positional embedding, unsupported)")
    same_name = ("in_channels", "out_channels", "patch_size", "caption_channels", "num_layers",
                 "guidance_embeds", "mlp_ratio")
    problems += [f"{k} = {cfg[k]} (weights: {fields[k]})" for k in same_name if cfg.get(k) not in (None, fields[k])]
    if problems:
        raise ValueError(f"{source}: config.json does not fit the weights (hidden size {dim}): {'; '.join(problems)}")
    out = {"num_heads": heads, "cross_heads": cross}
    if "guidance_embeds_scale" in cfg:
        out["guidance_embed_scale"] = float(cfg["guidance_embeds_scale"])
    if "norm_eps" in cfg:
        out["norm_eps"] = float(cfg["norm_eps"])
    return out


def _time_input_scale(fields: Mapping, diffusers_config: Mapping | None) -> float:
    """The rule in the module docstring."""
    if fields["guidance_embeds"]:
        return 1.0
    if diffusers_config is not None:
        return FLOW_TIME_SCALE * float(diffusers_config.get("timestep_scale", 1.0))
    return 1.0 if fields["qk_norm"] else FLOW_TIME_SCALE


def _check_against(cfg: DiTConfig, fields: Mapping, source) -> None:
    """Raise when ``cfg`` disagrees with what the shapes show."""
    bad = [f"{f}: config {getattr(cfg, f)}, weights {fields[f]}"
           for f in _SHAPE_FIELDS if getattr(cfg, f) != fields[f]]
    if bad:
        raise ValueError(f"{source}: the config does not fit the weights: {'; '.join(bad)}")
