"""Scribble pad images: PNG -> (H, W) scribble -> IMAGE + MASK (sana_sprint_core.scribble_pad)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sana_sprint_core.scribble_pad import (
    check_pad_size, empty_scribble, file_digest, read_scribble, scribble_outputs,
)

REPO = Path(__file__).resolve().parents[1]
NODE = shutil.which("node")


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buf, format="PNG")
    return buf.getvalue()


def test_grey_png_is_read_exactly():
    grey = np.arange(64 * 96, dtype=np.uint32).reshape(64, 96) % 256
    got = read_scribble(_png(grey.astype(np.uint8)), 96, 64)
    assert got.dtype == torch.float32 and got.shape == (64, 96)
    assert torch.equal(got, torch.from_numpy(grey.astype(np.float32) / 255))


def test_colour_is_luminance_and_transparency_is_black(tmp_path):
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[:, :32] = (255, 255, 255, 255)  # opaque white
    rgba[:, 32:] = (255, 255, 255, 0)  # transparent white -> black
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red: luma 0.299
    path = tmp_path / "x.png"
    path.write_bytes(_png(rgba))
    got = read_scribble(path, 64, 64)
    assert got[5, 5] == 1.0 and got[5, 40] == 0.0
    assert got[0, 0] == pytest.approx(76 / 255)  # PIL's L of pure red: 255 * 299/1000 -> 76
    rgb = read_scribble(_png(rgba[..., :3].copy()), 64, 64)  # no alpha: the white half stays white
    assert rgb[5, 40] == 1.0


def test_other_sizes_are_resized_to_the_pad():
    grey = np.zeros((32, 32), dtype=np.uint8)
    grey[:, 16:] = 255
    got = read_scribble(_png(grey), 64, 128)
    assert got.shape == (128, 64)
    assert got[:, :30].max() == 0 and got[:, 34:].min() == 1.0
    assert 0 < got[0, 32] < 1  # bilinear across the edge
    assert 0.0 <= got.min() and got.max() <= 1.0


def test_outputs_are_image_and_mask_of_the_same_values():
    grey = torch.rand(64, 96)
    image, mask = scribble_outputs(grey)
    assert image.shape == (1, 64, 96, 3) and mask.shape == (1, 64, 96)
    for c in range(3):
        assert torch.equal(image[0, ..., c], grey)
    assert torch.equal(mask[0], grey)
    mask[0, 0, 0] = 5.0  # outputs do not alias the input or each other
    assert grey[0, 0] != 5.0 and image[0, 0, 0, 0] != 5.0
    assert torch.equal(empty_scribble(96, 64), torch.zeros(64, 96))


def test_digest_follows_the_bytes(tmp_path):
    path = tmp_path / "s.png"
    path.write_bytes(b"abc")
    # SHA-256("abc"), FIPS 180-2 example
    assert file_digest(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    path.write_bytes(b"abd")
    assert file_digest(path) != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.parametrize("width, height, match", [
    (100, 64, "scribble pad width must be a multiple of 32 in \\[64, 4096\\], got 100"),
    (64, 32, "scribble pad height must be a multiple of 32 in \\[64, 4096\\], got 32"),
    (4128, 64, "scribble pad width must be a multiple of 32 in \\[64, 4096\\], got 4128"),
])
def test_bad_sizes_are_rejected(width, height, match):
    with pytest.raises(ValueError, match=match):
        check_pad_size(width, height)
    with pytest.raises(ValueError, match=match):
        read_scribble(_png(np.zeros((8, 8), dtype=np.uint8)), width, height)


def test_missing_and_unreadable_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"scribble file .*nope\.png does not exist"):
        read_scribble(tmp_path / "nope.png", 64, 64)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"scribble file .*bad\.png is not a readable image \(expected a PNG\)"):
        read_scribble(bad, 64, 64)


@pytest.mark.skipif(NODE is None, reason="node (Node.js >= 20) is not installed")
def test_the_canvas_png_decodes_to_the_canvas_raster(tmp_path):
    """Cross-language: web/lib's stroke model + PNG writer (as in the browser) -> our reader."""
    done = subprocess.run([NODE, str(REPO / "tests" / "web" / "make_scribble.mjs"), str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    size = json.loads(done.stdout)
    raster = np.frombuffer((tmp_path / "raster.bin").read_bytes(), dtype=np.uint8)
    raster = raster.reshape(size["height"], size["width"])
    assert 0 < (raster == 255).sum() < raster.size / 2  # strokes, erased in part
    got = read_scribble(tmp_path / "scribble.png", size["width"], size["height"])
    assert torch.equal(got, torch.from_numpy(raster.astype(np.float32) / 255))
