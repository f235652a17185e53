"""Training images: folder scan, captions, kohya-style repeat folders, aspect-ratio buckets.

Layout: `image_dir/**/<name>.<png|jpg|jpeg|webp|bmp>` with `<name>.txt` beside each image. A
folder directly under image_dir named `<N>_<anything>` (kohya style, e.g. `10_cat`) repeats its
images N times per epoch. Every unreadable image and every missing caption is reported by name
in one error.
"""

from __future__ import annotations

import hashlib
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from sana_sprint_core.constants import LATENT_DOWNSCALE

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_REPEAT_DIR = re.compile(r"^(\d+)_(.+)$")
# Bucket aspect ratios (height / width) span 1:4 .. 4:1, as PixArt/SANA's ASPECT_RATIO_1024 table.
MAX_ASPECT = 4.0
# A training image upscaled by more than this to its bucket (its sides less than half the training
# size) is named in a warning: it trains the model on an interpolated blur.
UPSCALE_WARNING = 2.0


@dataclass(frozen=True)
class Item:
    """One training image: file, caption text, repeats per epoch."""

    image: Path
    caption: str
    repeats: int
    name: str  # path relative to image_dir, for messages and the cache index


def _repeats(rel: Path) -> int:
    if len(rel.parts) > 1:
        m = _REPEAT_DIR.match(rel.parts[0])
        if m:
            return max(1, int(m.group(1)))
    return 1


@dataclass(frozen=True)
class Scan:
    """What `scan_folder` found: usable items and every skipped image with the reason."""

    root: Path
    items: list[Item]
    missing_caption: list[str]  # image paths relative to root
    unreadable: list[str]  # "<relative path> (<reason>)"

    def problems(self, caption_ext: str) -> list[str]:
        """One sentence per kind of bad file, naming every file."""
        out = []
        if self.missing_caption:
            out.append(f"{len(self.missing_caption)} image(s) without a {caption_ext} caption: "
                       f"{', '.join(self.missing_caption)}")
        if self.unreadable:
            out.append(f"{len(self.unreadable)} unreadable image(s): {', '.join(self.unreadable)}")
        return out


def scan_folder(image_dir: str | Path, caption_ext: str = ".txt", check_images: bool = True) -> Scan:
    """All images under `image_dir` sorted by path, split into usable items and skipped files.

    Raises only when the folder is missing or holds no image file at all.
    """
    root = Path(image_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"data.image_dir {root} is not a folder of images")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"data.image_dir {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    missing, corrupt, items = [], [], []
    for f in files:
        rel = f.relative_to(root)
        caption = f.with_suffix(caption_ext)
        if not caption.is_file():
            missing.append(rel.as_posix())
            continue
        if check_images and (problem := image_problem(f)):
            corrupt.append(f"{rel.as_posix()} ({problem})")
            continue
        items.append(Item(f, caption.read_text(encoding="utf-8").strip(), _repeats(rel), rel.as_posix()))
    return Scan(root, items, missing, corrupt)


def folder_digest(root: str | Path) -> str:
    """sha256 of every file's relative path, size and modification time under `root`: an added, removed
    or edited image or caption changes it (the CLI cache and the Dataset node both rebuild on a change)."""
    root = Path(root)
    digest = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            digest.update(f"{p.relative_to(root).as_posix()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def scan_dataset(image_dir: str | Path, caption_ext: str = ".txt", check_images: bool = True) -> list[Item]:
    """All images under `image_dir` with their captions; raise listing every bad file by name."""
    scan = scan_folder(image_dir, caption_ext, check_images)
    problems = scan.problems(caption_ext)
    if problems:
        raise ValueError(f"data.image_dir {scan.root}: " + "; ".join(problems))
    return scan.items


def image_problem(path: Path) -> str | None:
    """None if PIL can fully decode the image, else the reason."""
    try:
        with Image.open(path) as im:
            im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def make_buckets(resolution: int, step: int = LATENT_DOWNSCALE, max_aspect: float = MAX_ASPECT) -> list[tuple[int, int]]:
    """(height, width) pairs, multiples of `step`, area <= resolution^2, aspect within 1/max..max."""
    area = resolution * resolution
    out = set()
    for h in range(step, int(resolution * math.sqrt(max_aspect)) + 1, step):
        w = (area // h) // step * step
        if w >= step and 1 / max_aspect <= h / w <= max_aspect:
            out.add((h, w))
    return sorted(out)


def nearest_bucket(height: int, width: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket closest in log aspect ratio (ties: the larger area)."""
    target = math.log(height / width)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - target), -b[0] * b[1]))


def load_image(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """RGB image resized to cover (height, width) and center-cropped: (3, H, W) float in [0, 1]."""
    h, w = size
    with Image.open(path) as im:
        im = im.convert("RGB")
        scale = max(h / im.height, w / im.width)
        if scale > UPSCALE_WARNING:
            warnings.warn(f"training image {path} is {im.width}x{im.height} px and is upscaled {scale:.1f}x to "
                          f"{w}x{h}: it will teach a blurred image; use images of at least {w // 2}x{h // 2} px or a "
                          "lower resolution", stacklevel=2)
        rw, rh = max(w, round(im.width * scale)), max(h, round(im.height * scale))
        im = im.resize((rw, rh), Image.Resampling.LANCZOS)
        left, top = (rw - w) // 2, (rh - h) // 2
        im = im.crop((left, top, left + w, top + h))
        data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
    return data.reshape(h, w, 3).permute(2, 0, 1).float() / 255.0


def bucket_for(path: Path, resolution: int, buckets: bool) -> tuple[int, int]:
    """The training size of one image: its aspect bucket, or the square resolution."""
    if not buckets:
        return resolution, resolution
    with Image.open(path) as im:
        return nearest_bucket(im.height, im.width, make_buckets(resolution))


def bucket_counts(items: list[Item], resolution: int, buckets: bool) -> dict[tuple[int, int], int]:
    """Training size (height, width) -> number of images there, sizes sorted."""
    counts: dict[tuple[int, int], int] = {}
    for item in items:
        size = bucket_for(item.image, resolution, buckets)
        counts[size] = counts.get(size, 0) + 1
    return dict(sorted(counts.items()))
