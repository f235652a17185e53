"""Rename the original mit-han-lab (efficientvit) DC-AE layout to our (= diffusers) key names.

Reference section 4.5 (facts from efficientvit `dc_ae.py` / `nn/ops.py` and diffusers'
`convert_dcae_to_diffusers.py`). The original model nests its layers in two kinds of containers
that carry no parameters of their own: `ResidualBlock.main` and `OpSequential.op_list`. Dropping
those two path components leaves paths that map one-to-one:

  encoder.project_in.conv             -> encoder.conv_in
  encoder.project_out.0.conv          -> encoder.conv_out        (project_out.main.op_list.0.conv)
  decoder.project_in.conv             -> decoder.conv_in         (project_in.main.conv)
  decoder.project_out.0 / .2.conv     -> decoder.norm_out / decoder.conv_out
  {encoder,decoder}.stages.i.j.<block> -> encoder.down_blocks.i.j.<block> / decoder.up_blocks.i.j.<block>

and inside a block (`_BLOCK_MODULES`): ResBlock `conv1.conv`, `conv2.conv`, `conv2.norm`; the
down/up-sample conv `conv` / `conv.conv`; EfficientViT `context_module` (LiteMLA) and
`local_module` (GLUMBConv). Two tensors change shape:
  context_module.qkv.conv.weight  (3C, C, 1, 1) -> attn.to_q / to_k / to_v.weight (C, C) each,
                                                   the three row blocks in order;
  context_module.proj.conv.weight (C, 2C, 1, 1) -> attn.to_out.weight (C, 2C).
The multiscale branch k: context_module.aggreg.k.0 / .k.1 -> attn.to_qkv_multiscale.k.proj_in / proj_out.

Keys that match none of these are passed through unchanged, so strict loading reports them.
"""

from __future__ import annotations

from torch import Tensor

_CONTAINERS = ("main", "op_list")
_STAGE_LISTS = {"encoder": "down_blocks", "decoder": "up_blocks"}

_TOP_MODULES = {
    ("encoder", "project_in", "conv"): ("encoder", "conv_in"),
    ("encoder", "project_out", "0", "conv"): ("encoder", "conv_out"),
    ("decoder", "project_in", "conv"): ("decoder", "conv_in"),
    ("decoder", "project_out", "0"): ("decoder", "norm_out"),
    ("decoder", "project_out", "2", "conv"): ("decoder", "conv_out"),
}

_BLOCK_MODULES = {
    ("conv1", "conv"): ("conv1",),  # ResBlock
    ("conv2", "conv"): ("conv2",),
    ("conv2", "norm"): ("norm",),
    ("conv",): ("conv",),  # encoder DownBlock: a stride-2 ConvLayer's nn.Conv2d
    ("conv", "conv"): ("conv",),  # decoder UpBlock: InterpolateConvUpSampleLayer.conv (a ConvLayer)
    ("context_module", "proj", "norm"): ("attn", "norm_out"),
    ("local_module", "inverted_conv", "conv"): ("conv_out", "conv_inverted"),
    ("local_module", "depth_conv", "conv"): ("conv_out", "conv_depth"),
    ("local_module", "point_conv", "conv"): ("conv_out", "conv_point"),
    ("local_module", "point_conv", "norm"): ("conv_out", "norm"),
}
_QKV = ("context_module", "qkv", "conv")
_PROJ = ("context_module", "proj", "conv")
_AGGREG_PARTS = {"0": "proj_in", "1": "proj_out"}

ORIGINAL_MARKER_KEY = "encoder.project_in.conv.weight"


def is_original_layout(keys) -> bool:
    """True for efficientvit-named DC-AE keys (its encoder input conv is `project_in.conv`)."""
    return ORIGINAL_MARKER_KEY in keys


def _block_module(rest: tuple[str, ...]) -> tuple[str, ...] | None:
    """Map a module path inside one stage block; None when it is not a known one."""
    if rest in _BLOCK_MODULES:
        return _BLOCK_MODULES[rest]
    if len(rest) == 4 and rest[:2] == ("context_module", "aggreg") and rest[3] in _AGGREG_PARTS:
        return ("attn", "to_qkv_multiscale", rest[2], _AGGREG_PARTS[rest[3]])
    if rest in (_QKV, _PROJ):
        return rest  # reshaped by _emit
    return None


def rename_module(path: tuple[str, ...]) -> tuple[str, ...] | None:
    """Map an original module path (containers already dropped) to ours; None if unknown."""
    if path in _TOP_MODULES:
        return _TOP_MODULES[path]
    if len(path) >= 4 and path[1] == "stages" and path[0] in _STAGE_LISTS:
        inner = _block_module(path[4:])
        if inner is not None:
            return (path[0], _STAGE_LISTS[path[0]], path[2], path[3]) + inner
    return None


def _as_linear(key: str, w: Tensor) -> Tensor:
    """A 1x1 conv weight (O, I, 1, 1) as a Linear weight (O, I)."""
    if w.ndim != 4 or tuple(w.shape[2:]) != (1, 1):
        raise ValueError(f"original DC-AE key {key!r}: expected a 1x1 conv weight (O, I, 1, 1), got {tuple(w.shape)}")
    return w.flatten(1)


def _emit(out: dict[str, Tensor], key: str, new: tuple[str, ...], param: str, t: Tensor) -> None:
    """Store one renamed tensor, splitting qkv and squeezing proj on the way."""
    prefix = ".".join(new[:-3])  # the block, e.g. "encoder.down_blocks.3.0"
    if new[-3:] == _QKV and param == "weight":
        for name, part in zip(("to_q", "to_k", "to_v"), _as_linear(key, t).chunk(3, dim=0)):
            out[f"{prefix}.attn.{name}.weight"] = part  # (C, C): rows [0:C], [C:2C], [2C:3C]
    elif new[-3:] == _PROJ and param == "weight":
        out[f"{prefix}.attn.to_out.weight"] = _as_linear(key, t)
    else:
        out[".".join(new + (param,))] = t


def original_to_diffusers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename an efficientvit DC-AE state dict to our keys; unknown keys pass through unchanged.

    Tensors are not copied (qkv is split into views); `state` itself is left as it was.
    """
    out: dict[str, Tensor] = {}
    for key, t in state.items():
        parts = tuple(p for p in key.split(".") if p not in _CONTAINERS)
        new = rename_module(parts[:-1])
        if new is None:
            out[key] = t
        else:
            _emit(out, key, new, parts[-1], t)
    return out
