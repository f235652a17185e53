"""checkpoint_io: every supported layout reads back the exact tensors; every bad input names the file."""

import argparse
import json
import os
import struct

import pytest
import torch
from safetensors.torch import save_file

from sana_sprint_core import checkpoint_io as cio
from sana_sprint_core.checkpoint_io import (
    TensorSpec, read_state_dict, read_state_dict_with_info, read_tensor_specs, resolve_checkpoint,
    save_safetensors_atomic, select_prefix, strip_prefix, unwrap_state_dict,
)

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(40)


def tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "a.weight": torch.randn(4, 3, generator=g),
        "a.bias": torch.randn(4, generator=g).to(torch.bfloat16),
        "b.table": torch.randn(2, 3, 5, generator=g).half(),
        "c.count": torch.arange(6, dtype=torch.int64),
    }


def assert_same(got, want):
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        assert torch.equal(got[k], want[k]), k


def write_sharded(folder, sd, split_at=2, shard_ext="safetensors"):
    """Two shards plus an index json; returns the index path."""
    keys = sorted(sd)
    shards = {f"model-0000{i + 1}-of-00002.{shard_ext}": ks for i, ks in enumerate((keys[:split_at], keys[split_at:]))}
    for name, ks in shards.items():
        part = {k: sd[k] for k in ks}
        save_file(part, folder / name) if shard_ext == "safetensors" else torch.save(part, folder / name)
    index = folder / f"model.{shard_ext}.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}))
    return index


# --- safetensors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".safetensors", ".sft"])
def test_single_safetensors_roundtrip_with_metadata(tmp_path, suffix):
    sd = tensors()
    path = tmp_path / f"w{suffix}"
    save_file(sd, path, metadata={"format": "pt", "note": "x"})
    got, info = read_state_dict_with_info(path)
    assert_same(got, sd)
    assert info.format == "safetensors" and info.files == (path,) and info.index is None
    assert info.metadata == {"format": "pt", "note": "x"}


@pytest.mark.parametrize("via", ["index", "folder"])
def test_sharded_safetensors(tmp_path, via):
    sd = tensors()
    index = write_sharded(tmp_path, sd)
    got, info = read_state_dict_with_info(index if via == "index" else tmp_path)
    assert_same(got, sd)
    assert info.index == index and len(info.files) == 2


def test_sharded_torch_bin(tmp_path):
    sd = tensors()
    write_sharded(tmp_path, sd, shard_ext="bin")
    got, info = read_state_dict_with_info(tmp_path)
    assert_same(got, sd)
    assert info.format == "torch"


def test_missing_shard_is_named(tmp_path):
    index = write_sharded(tmp_path, tensors())
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors\.index\.json.*model-00002-of-00002"):
        read_state_dict(index)


def test_index_and_shards_must_agree(tmp_path):
    index = write_sharded(tmp_path, tensors())
    data = json.loads(index.read_text())
    data["weight_map"]["ghost.weight"] = "model-00001-of-00002.safetensors"
    index.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"index\.json: shards do not match.*listed but absent: ghost\.weight"):
        read_state_dict(index)


def test_index_without_weight_map(tmp_path):
    index = tmp_path / "m.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}}))
    with pytest.raises(ValueError, match=r"m\.safetensors\.index\.json: index json has no 'weight_map'"):
        read_state_dict(index)


def test_truncated_data_is_reported(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file(tensors(), path)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 10)
    msg = rf"cut\.safetensors: truncated safetensors file: .* describes {size} bytes but the file has {size - 10}"
    with pytest.raises(ValueError, match=msg):
        read_state_dict(path)


def test_truncated_header_is_reported(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file(tensors(), path)
    n = struct.unpack("<Q", path.read_bytes()[:8])[0]
    path.write_bytes(path.read_bytes()[: 8 + n // 2])
    with pytest.raises(ValueError, match=rf"cut\.safetensors: truncated safetensors file: header length {n} bytes"):
        read_state_dict(path)


@pytest.mark.parametrize(
    "content, what",
    [
        (PNG, "a PNG image"),
        (b"just some notes\nabout weights\n" * 3, "a text file"),
        (b"GGUF\x03\x00" + bytes(30), "a GGUF file"),
    ],
)
def test_foreign_file_renamed_safetensors(tmp_path, content, what):
    path = tmp_path / "fake.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"fake\.safetensors: not a safetensors file; it looks like {what}"):
        read_state_dict(path)


def test_header_that_is_not_json(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 4) + b"\x00\x01\x02\x03")
    with pytest.raises(ValueError, match=r"bad\.safetensors: not a safetensors file \(header is not valid JSON"):
        read_state_dict(path)


def test_specs_come_from_the_header_without_reading_data(tmp_path, monkeypatch):
    sd = tensors()
    path = tmp_path / "w.safetensors"
    save_file(sd, path)
    monkeypatch.setattr(cio, "load_file", lambda *a, **k: pytest.fail("tensor data was read"))
    specs = read_tensor_specs(path)
    assert specs == {k: TensorSpec(tuple(v.shape), v.dtype) for k, v in sd.items()}


# --- PyTorch files --------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin", ".ckpt"])
def test_torch_file_flat(tmp_path, suffix):
    sd = tensors()
    torch.save(sd, tmp_path / f"w{suffix}")
    assert_same(read_state_dict(tmp_path / f"w{suffix}"), sd)


def test_legacy_non_zip_torch_file(tmp_path):
    sd = tensors()
    torch.save(sd, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    assert_same(read_state_dict(tmp_path / "old.pth"), sd)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"state_dict": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]}, "step": 7},
        lambda sd: {"model": sd, "epoch": 3},
        lambda sd: {"module": sd},
        lambda sd: {"ema": sd, "iters": 10},
        lambda sd: {"model": {"module": sd}},
        lambda sd: {"state_dict": sd, "ema": {"a.weight": torch.zeros(4, 3)}},  # state_dict wins
    ],
    ids=["nvlabs_training", "model", "module", "ema", "model_module", "state_dict_before_ema"],
)
def test_nested_torch_checkpoints_unwrap(tmp_path, wrap):
    sd = tensors()
    torch.save(wrap(sd), tmp_path / "ckpt.pth")
    assert_same(read_state_dict(tmp_path / "ckpt.pth"), sd)


def test_torch_specs_match(tmp_path):
    sd = tensors()
    torch.save({"state_dict": sd}, tmp_path / "w.pth")
    assert read_tensor_specs(tmp_path / "w.pth") == {k: TensorSpec(tuple(v.shape), v.dtype) for k, v in sd.items()}


def test_pickle_needing_code_is_refused(tmp_path):
    path = tmp_path / "train.pth"
    torch.save({"state_dict": tensors(), "args": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(ValueError, match=r"train\.pth: .*We never execute pickles\. Convert it to safetensors"):
        read_state_dict(path)


def test_dict_without_tensors(tmp_path):
    torch.save({"optimizer": {"lr": 1.0}, "step": 3}, tmp_path / "opt.pth")
    with pytest.raises(ValueError, match=r"opt\.pth: no dict of tensors found.*not tensors: optimizer, step"):
        read_state_dict(tmp_path / "opt.pth")


def test_unwrap_rejects_deep_nesting():
    obj = {"a": torch.zeros(1)}
    for _ in range(6):
        obj = {"model": obj, "x": 1}
    with pytest.raises(ValueError, match="nested deeper than"):
        unwrap_state_dict(obj, "thing")


@pytest.mark.parametrize(
    "content, what",
    [(PNG, "a PNG image"), (b"hello, this is text\n", "a text file"), (bytes(range(7, 40)), "unknown binary data")],
)
def test_foreign_file_renamed_pth(tmp_path, content, what):
    path = tmp_path / "fake.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"fake\.pth: not a PyTorch checkpoint; it looks like {what}"):
        read_state_dict(path)


def test_truncated_torch_zip(tmp_path):
    path = tmp_path / "cut.pth"
    torch.save(tensors(), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"cut\.pth: damaged or truncated zip archive"):
        read_state_dict(path)


# --- paths and folders ----------------------------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*nope\.safetensors"):
        read_state_dict(tmp_path / "nope.safetensors")


def test_folder_without_weights_lists_contents(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "README.md").write_text("hi")
    msg = rf"{tmp_path.name} holds no weights .* it contains: README\.md, config\.json"
    with pytest.raises(FileNotFoundError, match=msg):
        read_state_dict(tmp_path)


def test_folder_with_one_file_and_preference_for_safetensors(tmp_path):
    sd = tensors()
    save_file(sd, tmp_path / "model.safetensors")
    torch.save(tensors(seed=1), tmp_path / "model.bin")  # the same weights in the legacy format
    assert_same(read_state_dict(tmp_path), sd)


def test_folder_with_several_weight_files(tmp_path):
    save_file(tensors(), tmp_path / "a.safetensors")
    save_file(tensors(), tmp_path / "b.safetensors")
    with pytest.raises(ValueError, match=r"holds several weight files \['a\.safetensors', 'b\.safetensors'\]"):
        read_state_dict(tmp_path)


def test_unknown_extension(tmp_path):
    (tmp_path / "w.gguf").write_bytes(b"GGUF")
    with pytest.raises(ValueError, match=r"w\.gguf: unknown weights file type '\.gguf'"):
        resolve_checkpoint(tmp_path / "w.gguf")


# --- writing and prefixes -------------------------------------------------------------------------


def test_atomic_save_roundtrip_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "out.safetensors"
    save_safetensors_atomic(tensors(seed=1), path)
    sd = tensors(seed=2)
    save_safetensors_atomic(sd, path, metadata={"step": "10"})
    got, info = read_state_dict_with_info(path)
    assert_same(got, sd)
    assert info.metadata == {"step": "10"}
    assert os.listdir(tmp_path) == ["out.safetensors"]


def test_atomic_save_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "out.safetensors"
    sd = tensors()
    save_safetensors_atomic(sd, path)

    def broken(tensors, filename, metadata=None):
        open(filename, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(cio, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_safetensors_atomic(tensors(seed=5), path)
    assert_same(read_state_dict(path), sd)
    assert os.listdir(tmp_path) == ["out.safetensors"]


def test_atomic_save_copies_shared_and_strided_views(tmp_path):
    fused = torch.randn(6, 4)
    q, k, v = fused.chunk(3)
    sd = {"q": q, "k": k, "v": v, "t": fused.t()}
    save_safetensors_atomic(sd, tmp_path / "v.safetensors")
    assert_same(read_state_dict(tmp_path / "v.safetensors"), {n: t.contiguous() for n, t in sd.items()})


def test_atomic_save_rejects_non_str_metadata(tmp_path):
    with pytest.raises(ValueError, match=r"out\.safetensors: safetensors metadata .* bad entries: \['step'\]"):
        save_safetensors_atomic(tensors(), tmp_path / "out.safetensors", metadata={"step": 10})
    assert os.listdir(tmp_path) == []


def test_strip_and_select_prefix():
    sd = {"model.diffusion_model.a": 1, "model.diffusion_model.b.c": 2}
    assert strip_prefix(sd, "model.diffusion_model.") == {"a": 1, "b.c": 2}
    assert strip_prefix(sd, "") == sd
    with pytest.raises(ValueError, match=r"f\.sft: 1 key\(s\) do not start with 'model\.diffusion_model\.': vae\.x"):
        strip_prefix({**sd, "vae.x": 3}, "model.diffusion_model.", "f.sft")
    assert select_prefix({**sd, "vae.x": 3}, "vae.") == {"x": 3}
