"""SANA LoRA files as the tools people use write them, read into one form.

Formats, told apart by their keys (a file mixing them is refused):
  comfy       diffusion_model.<path>.lora_down.weight / .lora_up.weight / .alpha (this pack, ComfyUI)
  kohya       lora_unet_<path, dots as underscores>.lora_down.weight / .lora_up.weight / .alpha
  onetrainer  lora_transformer_<path, dots as underscores>.lora_down.weight / .lora_up.weight / .alpha
  lycoris     lycoris_<path, dots as underscores>.lora_down.weight / ..., or LoKr (lokr_w1, lokr_w2,
              lokr_w1_a/_b, lokr_w2_a/_b) and LoHa (hada_w1_a/_b, hada_w2_a/_b) keys with .alpha
              (SimpleTuner's LyCORIS; the math in lycoris.py); LoKr / LoHa keys under any prefix above
  peft        [transformer.|base_model.model.]<path>.lora_A.weight / .lora_B.weight (diffusers' and
              peft's files); the alpha is not a tensor there: diffusers keeps it in the safetensors
              metadata `lora_adapter_metadata` (JSON: transformer.lora_alpha, transformer.alpha_pattern,
              transformer.use_rslora), peft's own files in adapter_config.json (pass it as `peft_config`);
              without either the scale is 1 (alpha = rank), as diffusers assumes.
A <path> may use this pack's (diffusers) module names or NVlabs' (blocks.N.attn.qkv,
blocks.N.cross_attn.kv_linear, blocks.N.mlp.inverted_conv.conv, ...): a LoRA on a fused projection
is split exactly, its up rows into the q/k/v (k/v) parts over the same down and alpha, because
(up @ down)[rows of q] = up[rows of q] @ down.

The result maps each DiT weight (`<path>.weight`, our names) to an Adapter. `to_comfy` writes the
`diffusion_model.` keys ComfyUI's LoRA patching reads; `delta` is the weight change for merging
(strength x alpha / rank x up @ down). `check_against` refuses a LoRA whose shapes do not fit the model,
naming the base it was made for, and every key that names no weight of the model. Never partial.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from .checkpoint_io import short_list
from .dit_keys import map_nvlabs_key, split_tensor
from .lycoris import LOHA_KEYS, LOKR_KEYS, TUCKER_KEYS, Diff, Hadamard, Kron, lycoris_adapter

# key suffix -> role (LyCORIS keys keep their own name as the role)
_SUFFIXES = (
    (".lora_down.weight", "down"), (".lora_up.weight", "up"), (".alpha", "alpha"),
    (".lora_A.weight", "down"), (".lora_B.weight", "up"),
    (".lora_A.default.weight", "down"), (".lora_B.default.weight", "up"), (".lora_B.bias", "up_bias"),
    *((f".{k}", k) for k in (*LOKR_KEYS, *LOHA_KEYS, *TUCKER_KEYS)),
)
# prefix -> (format, whether module paths are written with underscores)
_PREFIXES = (
    ("diffusion_model.", "comfy", False),
    ("lora_unet_", "kohya", True),
    ("lora_transformer_", "onetrainer", True),
    ("lycoris_", "lycoris", True),
    ("base_model.model.", "peft", False),
    ("transformer.", "peft", False),
    ("", "peft", False),
)
# Hidden widths of the released SANA models, to name the base a LoRA was made for.
BASE_WIDTHS = {1152: "SANA / SANA-Sprint 0.6B (width 1152)", 2240: "SANA / SANA-Sprint 1.6B (width 2240)",
               2048: "SANA 4.8B (width 2048)"}


@dataclass
class Adapter:
    """One low-rank update W' = W + strength * scale * up @ down, scale = alpha / rank (or / sqrt(rank))."""

    down: Tensor  # (r, in) or (r, in, 1, 1)
    up: Tensor  # (out, r) or (out, r, 1, 1)
    alpha: float
    rslora: bool = False

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    def delta(self, shape: torch.Size, strength: float = 1.0) -> Tensor:
        """The float32 weight change, in the weight's own shape."""
        d = self.up.float().flatten(1) @ self.down.float().flatten(1)
        return (d * (strength * self.scale)).reshape(shape)

    def out_in(self) -> tuple[int, int]:
        return self.up.shape[0], self.down.flatten(1).shape[1]

    def comfy(self, base: str) -> dict[str, Tensor]:
        """ComfyUI's LoRA keys, the alpha rescaled so that ComfyUI's alpha / rank gives this scale."""
        return {f"{base}.lora_down.weight": self.down, f"{base}.lora_up.weight": self.up,
                f"{base}.alpha": torch.tensor(self.scale * self.rank)}


Update = Adapter | Kron | Hadamard | Diff


@dataclass
class LoraFile:
    """A parsed LoRA: the format it came in and an update per DiT weight key (our names)."""

    format: str
    adapters: dict[str, Update]
    extra: dict[str, Tensor]  # full-weight differences (ours: the guidance embedder, `.diff` / `.diff_b`)


def _split_key(key: str) -> tuple[str, str] | None:
    for suffix, role in _SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    return None


def _format_of(prefixes: set[str]) -> tuple[str, str, bool]:
    """(format, key prefix, underscores) shared by every module prefix of the file."""
    for head, fmt, underscored in _PREFIXES:
        if all(p.startswith(head) for p in prefixes):
            return fmt, head, underscored
    raise AssertionError("the empty prefix matches every key")


def _peft_alphas(metadata: Mapping[str, str] | None, peft_config: Mapping | None) -> tuple[dict, float | None, bool]:
    """(alpha_pattern, lora_alpha, use_rslora) from diffusers' metadata or a peft adapter_config."""
    config = dict(peft_config or {})
    if not config and metadata and "lora_adapter_metadata" in metadata:
        raw = json.loads(metadata["lora_adapter_metadata"])
        config = {k.split(".", 1)[1]: v for k, v in raw.items() if k.startswith("transformer.")}
    if config.get("use_dora"):
        raise ValueError("this LoRA is a DoRA (use_dora true): its magnitude vectors are not a low-rank update "
                         "this loader applies; convert it to a plain LoRA first")
    return dict(config.get("alpha_pattern") or {}), config.get("lora_alpha"), bool(config.get("use_rslora"))


def _pattern_alpha(path: str, patterns: dict, default: float | None) -> float | None:
    for pattern, value in patterns.items():  # peft's rule: the pattern matches the end of the module name
        if re.match(rf"(.*\.)?({pattern})$", path):
            return float(value)
    return default


def module_names(weight_keys) -> dict[str, str]:
    """underscored module path -> dotted module path, for the weights of a DiT (our names) and the
    NVlabs names that map onto them (kohya-style files write either)."""
    names = {}
    for key in weight_keys:
        if key.endswith(".weight"):
            path = key[: -len(".weight")]
            names[path.replace(".", "_")] = path
    for nv in _nvlabs_modules(len({k.split(".")[1] for k in weight_keys if k.startswith("transformer_blocks.")})):
        names.setdefault(nv.replace(".", "_"), nv)
    return names


def _nvlabs_modules(blocks: int) -> list[str]:
    per_block = ("attn.qkv", "attn.proj", "cross_attn.q_linear", "cross_attn.kv_linear", "cross_attn.proj",
                 "mlp.inverted_conv.conv", "mlp.depth_conv.conv", "mlp.point_conv.conv")
    top = ("x_embedder.proj", "t_embedder.mlp.0", "t_embedder.mlp.2", "cfg_embedder.mlp.0", "cfg_embedder.mlp.2",
           "t_block.1", "y_embedder.y_proj.fc1", "y_embedder.y_proj.fc2", "final_layer.linear")
    return [*top, *(f"blocks.{i}.{m}" for i in range(blocks) for m in per_block)]


def _targets(path: str, update: Update) -> list[tuple[str, Update]]:
    """Our weight key(s) for a module path in our or NVlabs names. A low-rank update of a fused NVlabs
    projection splits exactly into one per part (its up rows); a LoKr / LoHa one into full differences."""
    if isinstance(update, Adapter):
        mapped = map_nvlabs_key(path + ".weight", update.up, split_tensor)
        return [(key, Adapter(update.down, up.contiguous(), update.alpha, update.rslora)) for key, up in mapped]
    keys = [key for key, _ in map_nvlabs_key(path + ".weight", None, lambda v, n, k: [None] * n)]
    if len(keys) == 1:
        return [(keys[0], update)]
    out, inp = update.out_in()
    rows = update.delta(torch.Size((out, inp)))
    return [(key, Diff(part.contiguous())) for key, part in zip(keys, split_tensor(rows, len(keys), path))]


def _extra_target(key: str) -> str:
    """The DiT key a full difference changes: diffusion_model.<path>.diff -> <path>.weight, .diff_b -> .bias."""
    return key[len("diffusion_model."):].replace(".diff_b", ".bias").replace(".diff", ".weight")


def _bias_diff(parts: dict[str, Tensor], path: str) -> dict[str, Tensor]:
    """PEFT's lora_bias (a bias on lora_B): the bias change, as the `.diff_b` key ComfyUI reads. PEFT puts
    one on every lora_B of the file; the all-zero ones change nothing and are dropped."""
    bias = parts.pop("up_bias", None)
    return {} if bias is None or not bool(bias.any()) else {f"diffusion_model.{path}.diff_b": bias}


def _update(parts: dict[str, Tensor], alpha: float | None, rslora: bool, name: str) -> Update:
    """The update one module's keys describe: a low-rank pair, or a LyCORIS LoKr / LoHa."""
    if "down" in parts or "up" in parts:
        if "down" not in parts or "up" not in parts:
            raise ValueError(f"{name} has {sorted(parts)} but needs both down (lora_A) and up (lora_B)")
        return Adapter(parts["down"], parts["up"], float(parts["down"].shape[0]) if alpha is None else alpha, rslora)
    return lycoris_adapter({k: v for k, v in parts.items() if k != "alpha"}, alpha, name)


def read_lora(tensors: Mapping[str, Tensor], weight_keys, metadata: Mapping[str, str] | None = None,
              peft_config: Mapping | None = None, source: str = "LoRA") -> LoraFile:
    """Parse any format above against a DiT's weight keys (our names); raise naming unknown keys.
    `weight_keys` None (converting a file without a model): dotted names only, not checked."""
    check = weight_keys is not None
    weight_keys = set(weight_keys or ())
    groups: dict[str, dict[str, Tensor]] = {}
    extra, unknown = {}, []
    for key, value in tensors.items():
        if key.endswith((".diff", ".diff_b")) and key.startswith("diffusion_model."):
            extra[key] = value
            continue
        parts = _split_key(key)
        if parts is None:
            unknown.append(key)
            continue
        groups.setdefault(parts[0], {})[parts[1]] = value
    if unknown:
        raise ValueError(f"{source}: {len(unknown)} key(s) are no LoRA weight this loader knows: "
                         f"{short_list(sorted(unknown))}; nothing was applied")
    if not groups:
        raise ValueError(f"{source} holds no LoRA weights (lora_down/lora_up or lora_A/lora_B keys)")
    fmt, head, underscored = _format_of(set(groups))
    patterns, default_alpha, rslora = _peft_alphas(metadata, peft_config) if fmt == "peft" else ({}, None, False)
    names = module_names(weight_keys) if underscored else {}
    adapters: dict[str, Update] = {}
    for prefix, parts in sorted(groups.items()):
        path = prefix[len(head):]
        path = names.get(path, path) if underscored else path
        alpha = float(parts["alpha"]) if "alpha" in parts else _pattern_alpha(path, patterns, default_alpha)
        extra.update(_bias_diff(parts, path))
        for key, part in _targets(path, _update(parts, alpha, rslora, f"{source}: {prefix}")):
            if key in adapters:
                raise ValueError(f"{source}: two entries of the file update {key}")
            adapters[key] = part
    touched = set(adapters) | {_extra_target(k) for k in extra}
    missing = sorted(touched - weight_keys) if check else []
    if missing:
        raise ValueError(f"{source} ({fmt} format): {len(missing)} LoRA module(s) name no weight of this SANA model: "
                         f"{short_list([k.rsplit('.', 1)[0] for k in missing])}; nothing was applied")
    return LoraFile(fmt, adapters, extra)


def base_of(lora: LoraFile) -> str:
    """The base a LoRA was made for, from the width its attention projections see."""
    for key, adapter in lora.adapters.items():
        if (".attn1.to_q." in key or ".attn1.to_out.0." in key) and isinstance(adapter, Adapter):
            width = adapter.out_in()[1]
            return BASE_WIDTHS.get(width, f"a model of width {width}")
    return "another model"


def check_against(lora: LoraFile, shapes: Mapping[str, torch.Size], model: str, source: str = "LoRA") -> None:
    """Refuse (naming the base) a LoRA whose updates do not have the shapes of the model's weights."""
    bad = []
    for key, adapter in lora.adapters.items():
        shape = shapes[key]
        out, inp = adapter.out_in()
        if (out, inp) != (shape[0], math.prod(shape[1:])):
            bad.append(f"{key[:-len('.weight')]} {out}x{inp} vs {shape[0]}x{math.prod(shape[1:])}")
    if bad:
        raise ValueError(f"{source} was made for {base_of(lora)}, not for this {model}: {len(bad)} update(s) do not "
                         f"fit ({short_list(bad, 3)}); nothing was applied")


def to_comfy(lora: LoraFile) -> dict[str, Tensor]:
    """The keys ComfyUI's weight adapters read, under diffusion_model.<path>: lora_down/lora_up/alpha
    (the alpha rescaled for rsLoRA), LoKr and LoHa keys as they are, `.diff` for full differences."""
    out = dict(lora.extra)
    for key, update in lora.adapters.items():
        out.update(update.comfy("diffusion_model." + key[: -len(".weight")]))
    return out


def merge_into(state: dict[str, Tensor], lora: LoraFile, strength: float) -> None:
    """W += strength * delta for every adapted weight of `state` (our keys), and the full differences
    (`.diff` of a weight, `.diff_b` of a bias), computed in float32."""
    changes = {key: (lambda shape, a=adapter: a.delta(shape, strength)) for key, adapter in lora.adapters.items()}
    for key, diff in lora.extra.items():
        changes[_extra_target(key)] = lambda shape, d=diff: (d.float() * strength).reshape(shape)
    for key, change in changes.items():
        w = state[key]
        state[key] = (w.float() + change(w.shape).to(w.device)).to(w.dtype)


def parse_lora_arg(text: str) -> tuple[str, float]:
    """`FILE[:STRENGTH]` of the command line (strength 1 when left out; a Windows drive letter is kept)."""
    path, sep, strength = text.rpartition(":")
    if not sep or not path or "/" in strength or "\\" in strength:
        return text, 1.0
    try:
        value = float(strength)
    except ValueError:
        raise ValueError(f"--lora {text!r}: the strength after the last ':' must be a number, e.g. "
                         f"style.safetensors:0.8") from None
    if not math.isfinite(value):
        raise ValueError(f"--lora {text!r}: the strength must be a finite number, got {strength}")
    return path, value


def apply_lora_files(dit, loras: list[tuple[str, float]]) -> None:
    """Merge each (file, strength) LoRA, any format above, into `dit`'s weights in place, in order."""
    from .checkpoint_io import read_state_dict_with_info

    state = dict(dit.state_dict())
    shapes = {k: v.shape for k, v in state.items()}
    for path, strength in loras:
        tensors, info = read_state_dict_with_info(path)
        lora = read_lora(tensors, shapes, info.metadata, source=f"LoRA {path}")
        if lora.extra:
            raise ValueError(f"LoRA {path} also carries full-weight differences ({short_list(sorted(lora.extra))}): "
                             "it is a distilled-teacher LoRA of this pack; load it on the teacher in ComfyUI")
        check_against(lora, shapes, f"SANA model (width {dit.config.hidden_size})", f"LoRA {path}")
        merge_into(state, lora, strength)
    dit.load_state_dict(state, strict=True)


def to_peft(lora: LoraFile) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The diffusers / PEFT form of a low-rank LoRA: (tensors, safetensors metadata) that
    SanaSprintPipeline.load_lora_weights reads. Keys transformer.<path>.lora_A/lora_B.weight; rank and
    alpha in `lora_adapter_metadata` (rank_pattern / alpha_pattern where a module differs). Full weight
    differences over a zero base (this pack's distilled guidance embedder, `.diff` / `.diff_b`) become
    exact full-rank pairs (lora_A the identity, lora_B the weight, alpha = rank) with PEFT's lora_bias
    carrying the bias; the base must then hold that module at zero (diffusers builds a Sprint student
    from its teacher with a zero guidance embedder)."""
    tensors, ranks, alphas = {}, {}, {}
    for key, update in lora.adapters.items():
        if not isinstance(update, Adapter) or update.rslora:
            kind = "rsLoRA" if isinstance(update, Adapter) else type(update).__name__
            raise ValueError(f"{key}: only plain low-rank LoRA updates have a PEFT form (this one is {kind})")
        path = key[: -len(".weight")]
        tensors[f"transformer.{path}.lora_A.weight"] = update.down.contiguous()
        tensors[f"transformer.{path}.lora_B.weight"] = update.up.contiguous()
        ranks[path], alphas[path] = update.rank, update.alpha
    biases = _full_pairs(lora.extra, tensors, ranks, alphas)
    if biases:  # lora_bias puts a bias on every lora_B: zero where the file has none
        for path in ranks:
            name = f"transformer.{path}.lora_B.bias"
            tensors.setdefault(name, torch.zeros(tensors[f"transformer.{path}.lora_B.weight"].shape[0]))
    rank = max(set(ranks.values()), key=list(ranks.values()).count)
    alpha = max(set(alphas.values()), key=list(alphas.values()).count)
    config = {"r": rank, "lora_alpha": alpha, "target_modules": sorted(ranks),
              "rank_pattern": {p: r for p, r in ranks.items() if r != rank},
              "alpha_pattern": {p: a for p, a in alphas.items() if a != alpha},
              "lora_bias": biases, "lora_dropout": 0.0, "bias": "none", "use_dora": False, "use_rslora": False,
              "init_lora_weights": True, "fan_in_fan_out": False, "peft_type": "LORA"}
    meta = {"format": "pt", "lora_adapter_metadata": json.dumps({f"transformer.{k}": v for k, v in config.items()})}
    return tensors, meta


def _full_pairs(extra: dict[str, Tensor], tensors: dict, ranks: dict, alphas: dict) -> bool:
    """Write each `.diff` (and its `.diff_b`) as an identity-factor pair; True when a bias was written."""
    biased = False
    for key, diff in extra.items():
        if not key.endswith(".diff"):
            continue
        path = key[len("diffusion_model."): -len(".diff")]
        inp = diff.flatten(1).shape[1]
        tensors[f"transformer.{path}.lora_A.weight"] = torch.eye(inp).reshape(inp, *diff.shape[1:])
        tensors[f"transformer.{path}.lora_B.weight"] = diff.reshape(diff.shape[0], inp).contiguous()
        ranks[path], alphas[path] = inp, float(inp)
        bias = extra.get(f"diffusion_model.{path}.diff_b")
        if bias is not None:
            tensors[f"transformer.{path}.lora_B.bias"] = bias.contiguous()
            biased = True
    return biased
