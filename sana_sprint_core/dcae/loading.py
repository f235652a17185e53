"""load_vae: read a DC-AE checkpoint (diffusers or original efficientvit layout) into a DCAE.

The architecture is inferred from the keys and shapes, never from the file name, so the same
loader reads the real f32c32 and tiny test models. The model is built on the meta device and the
checkpoint tensors are assigned to it, so the peak memory is one copy of the weights.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from torch import Tensor

from ..checkpoint_io import read_state_dict_with_info
from ..constants import DCAE_HEAD_DIM, DCAE_SCALE
from .config import DCAEConfig
from .keymap import ORIGINAL_MARKER_KEY, is_original_layout, original_to_diffusers
from .model import DCAE

DIFFUSERS_MARKER_KEY = "encoder.conv_in.weight"
_BLOCK_KEY = re.compile(r"^(encoder\.down_blocks|decoder\.up_blocks)\.(\d+)\.(\d+)\.(.+)$")
# Key fragments of checkpoints that are not a DC-AE, and what they are.
_FOREIGN = (
    (("transformer_blocks.", "caption_projection.", "x_embedder.", "t_embedder.", "y_embedder.",
      "model.diffusion_model.", "adaln_single."), "a Sana DiT (transformer) checkpoint; load it with load_dit"),
    (("embed_tokens.", "self_attn.q_proj.", "lm_head."), "a text encoder (Gemma / LLM) checkpoint"),
    (("quant_conv.", ".resnets.", "encoder.down.0."), "a KL autoencoder (SD / Flux VAE), not a DC-AE"),
)


def _short(items, n: int = 8) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _identify(state: dict[str, Tensor], source: str) -> str:
    """'diffusers' or 'original'; raises naming what the file looks like otherwise."""
    if is_original_layout(state):
        return "original"
    if DIFFUSERS_MARKER_KEY in state and "decoder.conv_in.weight" in state:
        return "diffusers"
    for fragments, what in _FOREIGN:
        if any(f in k for k in state for f in fragments):
            raise ValueError(f"{source}: not a DC-AE checkpoint; it looks like {what}")
    raise ValueError(
        f"{source}: not a DC-AE checkpoint: it has neither {DIFFUSERS_MARKER_KEY!r} and "
        f"'decoder.conv_in.weight' (diffusers layout) nor {ORIGINAL_MARKER_KEY!r} (efficientvit layout); "
        f"first keys: {_short(sorted(state))}"
    )


def _read_diffusers_config(path: Path) -> dict:
    """config.json of a diffusers AutoencoderDC folder (or next to its weights file), else {}."""
    folder = path if path.is_dir() else path.parent
    cfg_path = folder / "config.json"
    if not cfg_path.is_file() or (not path.is_dir() and not path.name.startswith("diffusion_pytorch_model")):
        return {}
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{cfg_path}: not valid JSON ({e})") from e
    cls = cfg.get("_class_name") if isinstance(cfg, dict) else None
    if cls not in (None, "AutoencoderDC"):
        raise ValueError(f"{cfg_path}: describes a {cls}, not a DC-AE (AutoencoderDC)")
    return cfg


def _block_kinds(shapes: dict[str, tuple], prefix: str, source: str, empty_first: bool = False) -> list[list[str]]:
    """For each stage of `prefix` (encoder.down_blocks / decoder.up_blocks): the kind of each block.
    empty_first: stage 0 may have no blocks (a DC-AE-Lite decoder), so its keys may start at stage 1."""
    found: dict[int, dict[int, set[str]]] = {}
    for key in shapes:
        m = _BLOCK_KEY.match(key)
        if m and m.group(1) == prefix:
            found.setdefault(int(m.group(2)), {}).setdefault(int(m.group(3)), set()).add(m.group(4))
    if empty_first and found and 0 not in found:
        found[0] = {}
    if sorted(found) != list(range(len(found))) or not found:
        raise ValueError(f"{source}: {prefix} stages must be numbered 0..n-1 with no gap, found {sorted(found)}")
    stages = []
    for i in range(len(found)):
        blocks = found[i]
        if sorted(blocks) != list(range(len(blocks))):
            raise ValueError(f"{source}: {prefix}.{i} blocks must be numbered 0..n-1, found {sorted(blocks)}")
        stages.append([_kind(blocks[j], f"{prefix}.{i}.{j}", source) for j in range(len(blocks))])
    return stages


def _kind(params: set[str], where: str, source: str) -> str:
    """'attn' (EfficientViT), 'res' (ResBlock) or 'sample' (down/up conv) from a block's param names."""
    if "attn.to_q.weight" in params:
        return "attn"
    if "conv1.weight" in params:
        return "res"
    if "conv.weight" in params:
        return "sample"
    raise ValueError(f"{source}: cannot tell the block type of {where} from its keys {_short(sorted(params))}")


def _stage_layout(stages: list[list[str]], sample_at: int, side: str, source: str) -> tuple[list[int], list[bool]]:
    """Depths and attention flags of each stage; `sample_at` = 0 (decoder) or -1 (encoder)."""
    depths, attention = [], []
    for i, kinds in enumerate(stages):
        if i == 0 and not kinds and sample_at == 0:  # a decoder stage 0 without blocks (DC-AE-Lite)
            depths.append(0), attention.append(False)
            continue
        if i < len(stages) - 1:
            if kinds[sample_at] != "sample":
                raise ValueError(f"{source}: {side} stage {i} has no resampling conv where expected")
            kinds = kinds[1:] if sample_at == 0 else kinds[:-1]
        if not kinds or len(set(kinds)) != 1 or kinds[0] == "sample":
            raise ValueError(f"{source}: {side} stage {i} must hold >= 1 blocks of one type, found {kinds}")
        depths.append(len(kinds))
        attention.append(kinds[0] == "attn")
    return depths, attention


def _stage_widths(shapes: dict[str, tuple], enc_stages: list[list[str]]) -> list[int]:
    """Channels of each encoder stage, read from its first block."""
    widths = []
    for i, kinds in enumerate(enc_stages):
        base = f"encoder.down_blocks.{i}.0."
        key = base + ("attn.to_q.weight" if kinds[0] == "attn" else "conv1.weight")
        widths.append(shapes[key][1])
    return widths


def _attention_params(shapes: dict[str, tuple], hints: dict) -> tuple[int, tuple[int, ...]]:
    """(head_dim, multiscale kernels) from the first EfficientViT block; head_dim from hints if no branch."""
    first = next((k[: -len("attn.to_q.weight")] for k in sorted(shapes) if k.endswith("attn.to_q.weight")), None)
    kernels = []
    while first is not None and f"{first}attn.to_qkv_multiscale.{len(kernels)}.proj_in.weight" in shapes:
        kernels.append(shapes[f"{first}attn.to_qkv_multiscale.{len(kernels)}.proj_in.weight"][-1])
    if kernels:  # proj_out is grouped by head: (3C, head_dim, 1, 1)
        return shapes[f"{first}attn.to_qkv_multiscale.0.proj_out.weight"][1], tuple(kernels)
    return int(hints.get("attention_head_dim", DCAE_HEAD_DIM)), ()


def infer_config(state: dict[str, Tensor], source: str = "<state dict>", hints: dict | None = None) -> DCAEConfig:
    """The DCAEConfig of a diffusers-named DC-AE state dict, from its keys and shapes.

    hints: a diffusers config.json dict; it supplies scaling_factor (default DCAE_SCALE) and the
    head dim when no multiscale branch reveals it, and must agree with what the shapes say.
    """
    hints = hints or {}
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for key in ("encoder.conv_in.weight", "encoder.conv_out.weight"):
        if key not in shapes:
            raise ValueError(f"{source}: missing {key!r}, cannot infer the DC-AE architecture")
    enc = _block_kinds(shapes, "encoder.down_blocks", source)
    dec = _block_kinds(shapes, "decoder.up_blocks", source, empty_first="decoder.conv_out.conv.weight" in shapes)
    if len(enc) != len(dec):
        raise ValueError(f"{source}: encoder has {len(enc)} stages but decoder has {len(dec)}")
    enc_depths, enc_attn = _stage_layout(enc, -1, "encoder", source)
    dec_depths, dec_attn = _stage_layout(dec, 0, "decoder", source)
    head_dim, kernels = _attention_params(shapes, hints)
    widths = tuple(_stage_widths(shapes, enc))
    upsample = _decoder_upsample(shapes, widths, dec_depths, source)
    values = dict(
        in_channels=shapes["encoder.conv_in.weight"][1], latent_channels=shapes["encoder.conv_out.weight"][0],
        widths=widths, encoder_depths=tuple(enc_depths), decoder_depths=tuple(dec_depths),
        encoder_attention=tuple(enc_attn), decoder_attention=tuple(dec_attn), attention_head_dim=head_dim,
        multiscale_kernels=kernels, scaling_factor=float(hints.get("scaling_factor", DCAE_SCALE)),
        decoder_upsample=upsample,
        # not visible in the shapes: config.json's, else what the releases of each up-sampling use
        decoder_out_act=hints.get("decoder_conv_act_fn", "silu" if upsample == "pixel_shuffle" else "relu"),
    )
    _check_hints(values, hints, source)
    try:
        return DCAEConfig(**values)
    except ValueError as e:
        raise ValueError(f"{source}: inferred DC-AE architecture is not valid: {e}") from e


def _decoder_upsample(shapes: dict[str, tuple], widths: tuple, depths: list[int], source: str) -> str:
    """interpolate (the conv keeps C_out channels) or pixel_shuffle (4 C_out), from the first up-sampling
    conv of the decoder."""
    stage = next((i for i in range(len(widths) - 1) if depths[i]), None)
    if stage is None:
        return "interpolate"
    out = shapes[f"decoder.up_blocks.{stage}.0.conv.weight"][0]
    if out not in (widths[stage], 4 * widths[stage]):
        raise ValueError(f"{source}: decoder.up_blocks.{stage}.0.conv has {out} output channels; expected "
                         f"{widths[stage]} (interpolate) or {4 * widths[stage]} (pixel shuffle)")
    return "interpolate" if out == widths[stage] else "pixel_shuffle"


def _check_hints(values: dict, hints: dict, source: str) -> None:
    """Raise when config.json contradicts the architecture read from the tensors."""
    pairs = (("latent_channels", "latent_channels"), ("in_channels", "in_channels"),
             ("encoder_block_out_channels", "widths"), ("attention_head_dim", "attention_head_dim"),
             ("upsample_block_type", "decoder_upsample"))
    for json_key, field in pairs:
        if json_key in hints and _as_tuple(hints[json_key]) != _as_tuple(values[field]):
            raise ValueError(
                f"{source}: config.json says {json_key}={hints[json_key]} but the weights give {values[field]}"
            )


def _as_tuple(v):
    return tuple(v) if isinstance(v, (list, tuple)) else v


def _check_state(model: DCAE, state: dict[str, Tensor], source: str) -> None:
    """Strict key and shape accounting against the (meta) model; raises listing every problem."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: file {tuple(state[k].shape)}, model {expected[k]}"
             for k in sorted(set(expected) & set(state)) if tuple(state[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_short(unexpected)}")
    if wrong:
        problems.append(f"shape mismatches ({len(wrong)}): {_short(wrong)}")
    if problems:
        raise ValueError(f"{source}: checkpoint does not match the inferred DC-AE architecture; " + "; ".join(problems))


def _target_dtype(state: dict[str, Tensor], dtype: torch.dtype | None, source: str) -> torch.dtype:
    """`dtype`, or the checkpoint's one floating dtype (float32 when it mixes several)."""
    if dtype is not None:
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
        return dtype
    kinds = {t.dtype for t in state.values()}
    if not all(k.is_floating_point for k in kinds):
        raise ValueError(f"{source}: DC-AE weights must be floating point, found dtypes {sorted(map(str, kinds))}")
    return kinds.pop() if len(kinds) == 1 else torch.float32


def build_from_state_dict(
    state: dict[str, Tensor], config: DCAEConfig, *, dtype=None, device="cpu", operations=None,
    source: str = "<state dict>",
) -> DCAE:
    """A DCAE holding the tensors of `state` (diffusers names), built on meta and assigned.

    `state` is emptied as tensors are converted, so at most one copy of the weights lives at once.
    """
    with torch.device("meta"):
        model = DCAE(config, operations=operations)
    _check_state(model, state, source)
    target = _target_dtype(state, dtype, source)
    tensors = {k: state.pop(k).to(device=device, dtype=target) for k in list(state)}
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def load_vae(path: str | os.PathLike, dtype: torch.dtype | None = None, device="cpu", *, operations=None) -> DCAE:
    """Load a DC-AE from a diffusers folder / safetensors file or an efficientvit checkpoint.

    path: a diffusers AutoencoderDC folder (config.json + diffusion_pytorch_model.safetensors), a
    single safetensors file, or an original mit-han-lab file (model.safetensors, or .pth/.pt with
    the weights nested under state_dict/model/module), DC-AE 1.0 or 1.1.
    dtype: weight dtype (None = the checkpoint's); device: where the weights go.
    operations: layer classes (see ops.py), e.g. a host's casting Linear/Conv2d.
    """
    p = Path(path).expanduser()
    state, info = read_state_dict_with_info(p)
    source = str(info.files[0] if len(info.files) == 1 else info.path)
    if _identify(state, source) == "original":
        state = original_to_diffusers(state)
    config = infer_config(state, source, _read_diffusers_config(p))
    return build_from_state_dict(state, config, dtype=dtype, device=device, operations=operations, source=source)
