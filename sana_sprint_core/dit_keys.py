"""Key names of Sana DiT checkpoints: layout detection and the NVlabs -> diffusers mapping.

Pure functions on key names and, where tensors are split, on values through a `split` callback,
so the same code maps a state dict (tensors) and a header listing (TensorSpec shapes). Our DiT
uses diffusers' `SanaTransformer2DModel` names (guidance-model naming of the time embedder).
Reference: sana_sprint_model.md section 1.7.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, TypeVar

from .checkpoint_io import TensorSpec, short_list, strip_prefix

V = TypeVar("V")
Split = Callable[[V, int, str], list]  # (value, parts, key) -> `parts` values split along dim 0

DIFFUSERS_ANCHOR = "patch_embed.proj.weight"
NVLABS_ANCHOR = "x_embedder.proj.weight"
_ANCHORS = ((DIFFUSERS_ANCHOR, "diffusers"), (NVLABS_ANCHOR, "nvlabs"))

# NVlabs keys dropped on purpose, and only these (reference 1.7, "Dropped by the converter"):
NVLABS_DROPPED = frozenset({
    "pos_embed",               # (1, N, D) sincos/zero buffer; Sprint and teachers run with use_pe=false
    "y_embedder.y_embedding",  # (300, 2304) learned null caption, used only for CFG dropout in training
    "logvar_linear.weight",    # (1, D) sCM adaptive loss-weight head, training only
    "logvar_linear.bias",
})

# NVlabs name prefix -> diffusers name prefix, outside the blocks.
_NVLABS_TOP = (
    ("x_embedder.proj.", "patch_embed.proj."),
    ("t_embedder.mlp.0.", "time_embed.timestep_embedder.linear_1."),
    ("t_embedder.mlp.2.", "time_embed.timestep_embedder.linear_2."),
    ("cfg_embedder.mlp.0.", "time_embed.guidance_embedder.linear_1."),
    ("cfg_embedder.mlp.2.", "time_embed.guidance_embedder.linear_2."),
    ("t_block.1.", "time_embed.linear."),
    ("y_embedder.y_proj.fc1.", "caption_projection.linear_1."),
    ("y_embedder.y_proj.fc2.", "caption_projection.linear_2."),
    ("attention_y_norm.", "caption_norm."),
    ("final_layer.scale_shift_table", "scale_shift_table"),
    ("final_layer.linear.", "proj_out."),
)
# Inside `blocks.i.` -> `transformer_blocks.i.`.
_NVLABS_BLOCK = (
    ("scale_shift_table", "scale_shift_table"),
    ("attn.q_norm.", "attn1.norm_q."),
    ("attn.k_norm.", "attn1.norm_k."),
    ("attn.proj.", "attn1.to_out.0."),
    ("cross_attn.q_linear.", "attn2.to_q."),
    ("cross_attn.q_norm.", "attn2.norm_q."),
    ("cross_attn.k_norm.", "attn2.norm_k."),
    ("cross_attn.proj.", "attn2.to_out.0."),
    ("mlp.inverted_conv.conv.", "ff.conv_inverted."),
    ("mlp.depth_conv.conv.", "ff.conv_depth."),
    ("mlp.point_conv.conv.", "ff.conv_point."),
)
# Fused projections split along dim 0: NVlabs prefix -> diffusers prefixes, in output-row order
# (self-attn qkv rows are [q; k; v]; cross-attn kv_linear rows are [k; v]).
_NVLABS_FUSED = (
    ("attn.qkv.", ("attn1.to_q.", "attn1.to_k.", "attn1.to_v.")),
    ("cross_attn.kv_linear.", ("attn2.to_k.", "attn2.to_v.")),
)
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.*)$")
# diffusers names the time embedder of non-guidance models (AdaLayerNormSingle) one level deeper.
_DIFFUSERS_NO_GUIDANCE_TIME = ("time_embed.emb.timestep_embedder.", "time_embed.timestep_embedder.")

# Key patterns of other models, checked when no DiT anchor key is present, with what to say.
_FOREIGN = (
    (r"(^|\.)controlnet_blocks\.\d+\.",
     "a Sana ControlNet (controlnet_blocks.* keys); load it with the ControlNet loader"),
    (r"(^|\.)encoder\.(project_in\.|stages\.|down_blocks\.\d+\.\d+\.)",
     "a DC-AE autoencoder (encoder.*/decoder.* keys); load it with the VAE loader"),
    (r"(^|\.)(encoder|decoder)\.(conv_in|down|up|mid)",
     "a VAE / autoencoder (encoder.*/decoder.* keys), not a DiT"),
    (r"(^|\.)input_blocks\.\d+\.", "a Stable Diffusion / SDXL UNet (input_blocks.* keys), not a Sana DiT"),
    (r"(^|\.)double_blocks\.\d+\.", "a Flux transformer (double_blocks.* keys), not a Sana DiT"),
    (r"(^|\.)joint_blocks\.\d+\.", "an SD3 MMDiT (joint_blocks.* keys), not a Sana DiT"),
    (r"lora_(A|B|up|down)\b", "a LoRA (lora_* keys), not a full model; apply it to a loaded DiT"),
    (r"(^|\.)(layers\.\d+\.(self_attn|mlp)\.|embed_tokens\.weight)",
     "a text encoder / language model such as Gemma (layers.*.self_attn, embed_tokens keys); "
     "load it with the text-encoder loader"),
)


@dataclass(frozen=True)
class DiTLayout:
    """How a DiT checkpoint names its keys: ``kind`` "diffusers" or "nvlabs", under ``prefix``."""

    kind: str
    prefix: str = ""


def split_tensor(t, parts: int, key: str) -> list:
    """Split a tensor into ``parts`` equal chunks along dim 0 (views, no copy)."""
    _check_divisible(t.shape[0], parts, key)
    return list(t.chunk(parts, dim=0))


def split_spec(spec: TensorSpec, parts: int, key: str) -> list[TensorSpec]:
    """The TensorSpecs of :func:`split_tensor` applied to a tensor with ``spec``."""
    _check_divisible(spec.shape[0], parts, key)
    rows = spec.shape[0] // parts
    return [TensorSpec((rows, *spec.shape[1:]), spec.dtype)] * parts


def _check_divisible(rows: int, parts: int, key: str) -> None:
    if rows % parts:
        raise ValueError(f"fused tensor {key!r} has {rows} rows, not divisible into {parts} parts")


def describe_foreign(keys: Iterable[str]) -> str | None:
    """What model a key set belongs to when it is not a Sana DiT (None when unknown)."""
    keys = list(keys)
    for pattern, what in _FOREIGN:
        rx = re.compile(pattern)
        if any(rx.search(k) for k in keys):
            return what
    return None


def detect_layout(keys: Iterable[str], source: str | os.PathLike = "<state dict>") -> DiTLayout:
    """Find the key layout and the prefix shared by every key (e.g. ComfyUI ``model.diffusion_model.``).

    The prefix is whatever precedes an anchor key (``patch_embed.proj.weight`` for diffusers,
    ``x_embedder.proj.weight`` for NVlabs), so the longest prefix under which the keys form a
    DiT is found without a list of known prefixes. File names are never consulted.
    """
    keys = list(keys)
    found = {(k[: len(k) - len(a)], kind) for k in keys for a, kind in _ANCHORS
             if k == a or k.endswith("." + a)}
    foreign = describe_foreign(keys)
    if not found or (foreign and foreign.startswith("a Sana ControlNet")):
        what = foreign or (
            f"no known model: it has no {DIFFUSERS_ANCHOR} (diffusers) or {NVLABS_ANCHOR} (NVlabs) key"
        )
        raise ValueError(
            f"{source} is not a Sana DiT checkpoint; it looks like {what}. "
            f"First keys: {short_list(sorted(keys), 5)}"
        )
    whole = sorted((p, kind) for p, kind in found if all(k.startswith(p) for k in keys))
    if len(whole) == 1:
        return DiTLayout(whole[0][1], whole[0][0])
    if len(whole) > 1:
        raise ValueError(f"{source}: keys mix DiT layouts {whole} (both diffusers and NVlabs names)")
    prefixes = sorted(p for p, _ in found)
    outside = [k for k in keys if not any(k.startswith(p) for p in prefixes)]
    raise ValueError(
        f"{source}: a DiT sits under prefix(es) {prefixes} but {len(outside) or len(keys)} key(s) lie "
        f"outside a single model (e.g. {short_list(outside or keys, 5)}); combined checkpoints "
        "(DiT + VAE + text encoder, or model + EMA copies) are not supported: extract the DiT first"
    )


def nvlabs_to_diffusers(
    state: Mapping[str, V], split: Split, source: str | os.PathLike = "<state dict>"
) -> dict[str, V]:
    """Rename NVlabs `SanaMS`/`SanaMSCM` keys to diffusers names (reference 1.7).

    Fused q/k/v and k/v projections are split with ``split``; NVLABS_DROPPED keys are removed.
    Keys no rule knows keep their name, so strict key accounting reports them unchanged.
    """
    out: dict[str, V] = {}
    for key, value in state.items():
        if key in NVLABS_DROPPED:
            continue
        for new_key, new_value in map_nvlabs_key(key, value, split):
            if new_key in out:
                raise ValueError(f"{source}: NVlabs key {key!r} maps onto {new_key!r}, already present")
            out[new_key] = new_value
    return out


def map_nvlabs_key(key: str, value: V, split: Split) -> list[tuple[str, V]]:
    """The diffusers (key, value) pairs one NVlabs key becomes."""
    m = _BLOCK.match(key)
    if m is None:
        return [(_rename(key, _NVLABS_TOP) or key, value)]
    head, rest = f"transformer_blocks.{m.group(1)}.", m.group(2)
    for old, news in _NVLABS_FUSED:
        if rest.startswith(old):
            suffix = rest[len(old):]
            return [(head + new + suffix, part) for new, part in zip(news, split(value, len(news), key))]
    renamed = _rename(rest, _NVLABS_BLOCK)
    return [(key if renamed is None else head + renamed, value)]


def _rename(key: str, rules) -> str | None:
    """``key`` with the first matching (old prefix -> new prefix) rule applied; None if none match."""
    for old, new in rules:
        if key.startswith(old):
            return new + key[len(old):]
    return None


def diffusers_to_ours(state: Mapping[str, V], source: str | os.PathLike = "<state dict>") -> dict[str, V]:
    """diffusers keys -> ours: only the non-guidance time embedder moves up one level."""
    old, new = _DIFFUSERS_NO_GUIDANCE_TIME
    out = {(new + k[len(old):] if k.startswith(old) else k): v for k, v in state.items()}
    if len(out) != len(state):
        raise ValueError(f"{source}: holds both {old}* and {new}* keys")
    return out


def to_canonical(
    state: Mapping[str, V], layout: DiTLayout, split: Split, source: str | os.PathLike = "<state dict>"
) -> dict[str, V]:
    """Strip the layout's prefix and rename to our (diffusers guidance-model) key names."""
    state = strip_prefix(state, layout.prefix, source)
    if layout.kind == "nvlabs":
        state = nvlabs_to_diffusers(state, split, source)
    return diffusers_to_ours(state, source)
