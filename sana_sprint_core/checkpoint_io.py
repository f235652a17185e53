"""Reading and writing state dicts from files, for any model.

Formats read: a single safetensors file (``.safetensors``/``.sft``), a sharded set described by an
index json (``*.index.json`` with a ``weight_map``), a folder holding one of those, and PyTorch files
(``.pth``/``.pt``/``.bin``/``.ckpt``) through ``torch.load(weights_only=True)``. Pickles are never
executed. Every error names the file and says what was expected.
"""

from __future__ import annotations

import codecs
import json
import os
import pickle
import struct
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, NamedTuple, TypeVar

import torch
from safetensors.torch import load_file, save_file

from .constants import SAFETENSORS_MAX_HEADER_BYTES

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
INDEX_SUFFIX = ".index.json"
# Training checkpoints nest the weights; the first of these keys whose value is a dict is
# descended into, repeatedly, until a dict of tensors is reached. NVlabs/Sana saves
# {"state_dict": ..., "optimizer": ..., ...}; Lightning {"state_dict": ...}; other trainers
# {"model": ...} / {"module": ...} (DeepSpeed) / {"ema": ...}. "state_dict" comes first because
# it is the released weights of NVlabs checkpoints; "ema" last, so an EMA copy is used only when
# it is the only weights dict present.
NESTED_WEIGHT_KEYS = ("state_dict", "model", "module", "ema")
_MAX_NESTING = 4

# safetensors dtype names (header "dtype") -> torch dtypes.
_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}

T = TypeVar("T")


class TensorSpec(NamedTuple):
    """Shape and dtype of one stored tensor, known without reading its data."""

    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass(frozen=True)
class SourceInfo:
    """Where a state dict comes from: the path given, the weight files and their format."""

    path: Path                      # what the caller passed, resolved
    files: tuple[Path, ...]         # weight files, in shard order
    format: str                     # "safetensors" or "torch"
    index: Path | None = None       # the index json of a sharded set
    metadata: dict[str, str] = field(default_factory=dict)  # safetensors __metadata__ (merged)


# --------------------------------------------------------------------------------------------------
# Resolving a path to weight files


def resolve_checkpoint(path: str | os.PathLike) -> SourceInfo:
    """Find the weight files behind ``path`` (file, index json or folder) and check they are readable.

    Safetensors headers are validated here (truncation, non-safetensors content); PyTorch files are
    sniffed (zip archive or pickle). No tensor data is read.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    p = p.resolve()
    if p.is_dir():
        return _resolve_file(_pick_in_folder(p), given=p)
    return _resolve_file(p, given=p)


def _pick_in_folder(folder: Path) -> Path:
    """The one weights entry of a folder: an index json, else one safetensors, else one torch file."""
    names = sorted(c.name for c in folder.iterdir())
    indexes = [n for n in names if n.endswith(INDEX_SUFFIX)]
    safes = [n for n in names if n.endswith(SAFETENSORS_SUFFIXES)]
    torches = [n for n in names if n.endswith(TORCH_SUFFIXES)]
    for group in (indexes, safes, torches):  # first non-empty kind wins; it must have one file
        if len(group) == 1:
            return folder / group[0]
        if len(group) > 1:
            raise ValueError(
                f"folder {folder} holds several weight files {group}; pass the file to load"
            )
    shown = ", ".join(names[:20]) + (f", ... ({len(names)} entries)" if len(names) > 20 else "")
    raise FileNotFoundError(
        f"folder {folder} holds no weights (expected one *.safetensors, *.sft, *.pth, *.pt, *.bin, "
        f"*.ckpt or *{INDEX_SUFFIX}); it contains: {shown or 'nothing'}"
    )


def _resolve_file(p: Path, given: Path) -> SourceInfo:
    """SourceInfo for one file: an index json, a safetensors file or a PyTorch file."""
    name = p.name.lower()
    if name.endswith(INDEX_SUFFIX):
        return _resolve_index(p, given)
    if name.endswith(SAFETENSORS_SUFFIXES):
        specs_meta = _read_safetensors_header(p)
        return SourceInfo(given, (p,), "safetensors", None, specs_meta[1])
    if name.endswith(TORCH_SUFFIXES):
        _check_torch_file(p)
        return SourceInfo(given, (p,), "torch")
    raise ValueError(
        f"{p}: unknown weights file type {p.suffix!r}; expected one of "
        f"{SAFETENSORS_SUFFIXES + TORCH_SUFFIXES} or *{INDEX_SUFFIX}"
    )


def _resolve_index(index: Path, given: Path) -> SourceInfo:
    """SourceInfo of a sharded set: every shard named in ``weight_map`` must exist."""
    weight_map = _read_weight_map(index)
    shards = tuple(dict.fromkeys(weight_map.values()))  # first-seen order, no duplicates
    missing = [s for s in shards if not (index.parent / s).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{index}: shard(s) listed in weight_map not found next to the index: {missing}"
        )
    infos = [_resolve_file(index.parent / s, index.parent / s) for s in shards]
    formats = {i.format for i in infos}
    if len(formats) != 1:
        raise ValueError(f"{index}: shards mix formats {sorted(formats)}")
    metadata = {k: v for i in infos for k, v in i.metadata.items()}
    return SourceInfo(given, tuple(i.files[0] for i in infos), formats.pop(), index, metadata)


def _read_weight_map(index: Path) -> dict[str, str]:
    """The ``weight_map`` (tensor name -> shard file name) of an index json."""
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{index}: not a valid index json ({e})") from e
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index}: index json has no 'weight_map' dict of tensor name -> shard")
    return weight_map


# --------------------------------------------------------------------------------------------------
# File sniffing


def _describe_foreign(head: bytes) -> str | None:
    """Name the kind of file whose first bytes are ``head``, for formats that are not weights."""
    signatures = (
        (b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
        (b"GIF8", "a GIF image"), (b"GGUF", "a GGUF file"), (b"PK\x03\x04", "a zip archive"),
    )
    for magic, what in signatures:
        if head.startswith(magic):
            return what
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle (PyTorch file)"
    try:  # an incremental decoder tolerates a multi-byte character cut at the end of `head`
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return None
    return "a text file" if text and all(c.isprintable() or c.isspace() for c in text) else None


def _read_head(p: Path, n: int = 16) -> bytes:
    with open(p, "rb") as f:
        return f.read(n)


def _check_torch_file(p: Path) -> None:
    """Raise unless ``p`` is a PyTorch zip archive or a legacy (pickle) torch file."""
    head = _read_head(p)
    if not head:
        raise ValueError(f"{p}: file is empty, not a PyTorch checkpoint")
    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            if any(n.endswith("data.pkl") for n in z.namelist()):
                return
        raise ValueError(f"{p}: a zip archive without data.pkl, not a PyTorch checkpoint")
    if head.startswith(b"PK"):
        raise ValueError(f"{p}: damaged or truncated zip archive (PyTorch files are zip archives)")
    what = _describe_foreign(head)
    if what is None or not what.startswith("a Python pickle"):
        raise ValueError(f"{p}: not a PyTorch checkpoint; it looks like {what or 'unknown binary data'}")


def _read_safetensors_header(p: Path) -> tuple[dict[str, TensorSpec], dict[str, str]]:
    """Parse a safetensors header (u64 little-endian length + JSON) and check the file is complete.

    Returns (name -> TensorSpec, __metadata__). Raises naming the file when it is not a
    safetensors file or is truncated (header or data shorter than the header says).
    """
    size = p.stat().st_size
    with open(p, "rb") as f:
        first = f.read(8)
        n = struct.unpack("<Q", first)[0] if len(first) == 8 else None
        if n is None or n > size - 8:
            _raise_bad_header(p, n, size)
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{p}: not a safetensors file (header is not valid JSON: {e})") from e
    if not isinstance(header, dict):
        raise ValueError(f"{p}: not a safetensors file (header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    specs, data_end = _header_specs(p, header)
    if 8 + n + data_end > size:
        raise ValueError(
            f"{p}: truncated safetensors file: the header describes {8 + n + data_end} bytes "
            f"but the file has {size}"
        )
    return specs, metadata


def _raise_bad_header(p: Path, n: int | None, size: int) -> None:
    """Raise for a header length that does not fit the file: foreign content or truncation."""
    what = _describe_foreign(_read_head(p))
    implausible = n is None or n > SAFETENSORS_MAX_HEADER_BYTES
    if implausible or (what is not None and what != "a text file"):
        raise ValueError(
            f"{p}: not a safetensors file; it looks like {what or 'unknown binary data'}"
        )
    raise ValueError(
        f"{p}: truncated safetensors file: header length {n} bytes but the file has {size} bytes"
    )


def _header_specs(p: Path, header: dict) -> tuple[dict[str, TensorSpec], int]:
    """TensorSpecs from the parsed header and the end offset of the data section."""
    specs: dict[str, TensorSpec] = {}
    data_end = 0
    for name, entry in header.items():
        try:
            dtype_name, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (TypeError, KeyError, ValueError) as e:
            raise ValueError(f"{p}: not a safetensors file (bad header entry {name!r})") from e
        if dtype_name not in _ST_DTYPES:
            raise ValueError(f"{p}: tensor {name!r} has unsupported dtype {dtype_name}")
        specs[name] = TensorSpec(tuple(int(s) for s in shape), _ST_DTYPES[dtype_name])
        data_end = max(data_end, int(end))
    return specs, data_end


# --------------------------------------------------------------------------------------------------
# Reading


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read every tensor of the checkpoint at ``path`` (file, index json or folder) onto the CPU."""
    return read_state_dict_with_info(path)[0]


def read_state_dict_with_info(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], SourceInfo]:
    """Like :func:`read_state_dict`, also returning the :class:`SourceInfo` of the files read."""
    info = resolve_checkpoint(path)
    state: dict[str, torch.Tensor] = {}
    for f in info.files:
        part = load_file(str(f)) if info.format == "safetensors" else _load_torch(f)
        _merge_shard(state, part, f)
    if info.index is not None:
        _check_against_index(info.index, state)
    if not state:
        raise ValueError(f"{info.path}: checkpoint holds no tensors")
    return state, info


def read_tensor_specs(path: str | os.PathLike) -> dict[str, TensorSpec]:
    """Names, shapes and dtypes of the tensors at ``path`` without reading safetensors data.

    PyTorch zip files are memory-mapped, so only the pickle is parsed; legacy (non-zip) torch
    files have to be read whole.
    """
    info = resolve_checkpoint(path)
    specs: dict[str, TensorSpec] = {}
    for f in info.files:
        if info.format == "safetensors":
            part = _read_safetensors_header(f)[0]
        else:
            part = {k: TensorSpec(tuple(v.shape), v.dtype) for k, v in _load_torch(f).items()}
        _merge_shard(specs, part, f)
    return specs


def _merge_shard(into: dict[str, T], part: Mapping[str, T], f: Path) -> None:
    dup = sorted(set(into) & set(part))
    if dup:
        raise ValueError(f"{f}: tensor(s) also present in an earlier shard: {short_list(dup)}")
    into.update(part)


def _check_against_index(index: Path, state: Mapping[str, object]) -> None:
    listed = set(_read_weight_map(index))
    missing, extra = sorted(listed - set(state)), sorted(set(state) - listed)
    if missing or extra:
        raise ValueError(
            f"{index}: shards do not match the weight_map; listed but absent: "
            f"{short_list(missing)}; present but not listed: {short_list(extra)}"
        )


def _load_torch(f: Path) -> dict[str, torch.Tensor]:
    """torch.load with weights_only=True (never executing pickled code), then unwrap nesting."""
    _check_torch_file(f)
    try:
        obj = torch.load(f, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(f))
    except (EOFError, RuntimeError) as e:
        raise ValueError(f"{f}: unreadable PyTorch checkpoint, truncated or damaged ({e})") from e
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise ValueError(f"{f}: unreadable PyTorch checkpoint ({e})") from e
        raise ValueError(
            f"{f}: this PyTorch file contains Python objects that can only be loaded by executing "
            "code from the file. We never execute pickles. Convert it to safetensors with a "
            "trusted tool (load the checkpoint yourself and save its tensors with "
            "safetensors.torch.save_file), then load the .safetensors file."
        ) from e
    return unwrap_state_dict(obj, f)


def unwrap_state_dict(obj: object, source: str | os.PathLike = "<object>") -> dict[str, torch.Tensor]:
    """Descend through NESTED_WEIGHT_KEYS (in that order) to the dict of tensors."""
    for _ in range(_MAX_NESTING + 1):
        if not isinstance(obj, Mapping):
            raise ValueError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        inner = next((k for k in NESTED_WEIGHT_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
            raise ValueError(
                f"{source}: no dict of tensors found; looked for nested {list(NESTED_WEIGHT_KEYS)}; "
                f"entries that are not tensors: {short_list([str(k) for k in bad])}"
            )
        obj = obj[inner]
    raise ValueError(f"{source}: weights nested deeper than {_MAX_NESTING} levels")


# --------------------------------------------------------------------------------------------------
# Writing and key helpers


def save_safetensors_atomic(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> None:
    """Write ``tensors`` to ``path`` as safetensors: temp file in the same folder, fsync, os.replace.

    A tensor that shares storage with an earlier one (e.g. views of one fused weight) or is not
    contiguous is copied first, as safetensors refuses both; ``metadata`` values must be str.
    """
    path = Path(path)
    bad = [k for k, v in (metadata or {}).items() if not (isinstance(k, str) and isinstance(v, str))]
    if bad:
        raise ValueError(f"{path}: safetensors metadata keys and values must be str; bad entries: {bad}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(_unshared(tensors), tmp, metadata=dict(metadata) if metadata else None)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _unshared(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors, with copies for non-contiguous ones and for any sharing an earlier storage."""
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        ptr = t.untyped_storage().data_ptr()
        shared = t.numel() > 0 and ptr in seen
        seen.add(ptr)
        out[key] = t.contiguous().clone() if shared or not t.is_contiguous() else t
    return out


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (POSIX); Windows cannot open folders, where this is skipped."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def strip_prefix(
    state: Mapping[str, T], prefix: str, source: str | os.PathLike = "<state dict>"
) -> dict[str, T]:
    """Remove ``prefix`` (e.g. ComfyUI's ``model.diffusion_model.``) from every key.

    Raises if some key lacks the prefix, listing a few of them.
    """
    if not prefix:
        return dict(state)
    outside = [k for k in state if not k.startswith(prefix)]
    if outside:
        raise ValueError(
            f"{source}: {len(outside)} key(s) do not start with {prefix!r}: {short_list(outside)}"
        )
    return {k[len(prefix):]: v for k, v in state.items()}


def select_prefix(state: Mapping[str, T], prefix: str) -> dict[str, T]:
    """Keys that start with ``prefix``, with the prefix removed (e.g. one model of a bundle)."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def short_list(items: list[str], limit: int = 8) -> str:
    """``a, b, ... and N more`` for error messages: at most ``limit`` items and a count of the rest."""
    if not items:
        return "none"
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def read_config_json(path: str | os.PathLike, class_name: str) -> dict | None:
    """The diffusers ``config.json`` in folder ``path`` or beside file ``path`` when its ``_class_name``
    is ``class_name``; None when there is none or it describes another class."""
    path = Path(path)
    cfg_path = (path if path.is_dir() else path.parent) / "config.json"
    if not cfg_path.is_file():
        return None
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{cfg_path}: not valid JSON ({e})") from e
    return cfg if isinstance(cfg, dict) and cfg.get("_class_name") == class_name else None
