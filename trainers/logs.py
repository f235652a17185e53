"""Loss CSV (append per step, truncated on resume) and a loss plot PNG drawn with PIL."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from PIL import Image, ImageDraw

# loss_denoise: the ControlNet training mode's loss (trainers/controlnet.py).
COLUMNS = ("step", "phase", "loss_scm", "loss_adv", "loss_d", "loss_fm", "loss_prior", "loss_denoise",
           "grad_norm", "clip_at", "clipped",
           "lr", "skipped")
_COLORS = {"loss_scm": (31, 119, 180), "loss_adv": (255, 127, 14), "loss_d": (44, 160, 44), "loss_fm": (214, 39, 40),
           "loss_denoise": (148, 103, 189),
           "loss_prior": (140, 86, 75)}


class LossLog:
    """Rows of COLUMNS in a CSV file; rows at or after `keep_before` are dropped when reopening."""

    def __init__(self, path: str | Path, keep_before: int | None = None):
        self.path = Path(path)
        rows = read_rows(self.path) if self.path.is_file() else []
        if keep_before is not None:
            rows = [r for r in rows if int(r["step"]) < keep_before]
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    def append(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, COLUMNS).writerow({k: row.get(k, "") for k in COLUMNS})

    def read(self) -> list[dict]:
        return read_rows(self.path)


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a loss CSV as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _series(rows: list[dict], column: str) -> list[tuple[int, float]]:
    out = []
    for r in rows:
        if r.get(column) not in ("", None) and math.isfinite(float(r[column])):
            out.append((int(r["step"]), float(r[column])))
    return out


def _smooth(values: list[float], beta: float = 0.9) -> list[float]:
    out, avg = [], None
    for v in values:
        avg = v if avg is None else beta * avg + (1 - beta) * v
        out.append(avg)
    return out


def clipping_summary(rows: list[dict]) -> str:
    """'student updates clipped: k of n (p %); median pre-clip norm m' of the G rows of a loss log."""
    g = [r for r in rows if r.get("phase") == "G" and r.get("clipped") not in ("", None)]
    if not g:
        return "student updates clipped: no updates logged"
    clipped = sum(int(r["clipped"]) for r in g)
    norms = sorted(float(r["grad_norm"]) for r in g)
    return (f"student updates clipped: {clipped} of {len(g)} ({100 * clipped / len(g):.1f} %); median pre-clip "
            f"gradient norm {norms[len(norms) // 2]:.4g}")


def plot_losses(csv_path: str | Path, png_path: str | Path, size: tuple[int, int] = (900, 500)) -> Path:
    """The loss plot of a loss CSV (`draw_losses`), written to png_path."""
    draw_losses(read_rows(csv_path), size).save(png_path)
    return Path(png_path)


def draw_losses(rows: list[dict], size: tuple[int, int] = (900, 500)) -> Image.Image:
    """One panel per loss column (EMA-smoothed line over the raw points), as a PIL RGB image."""
    panels = [(c, s) for c in _COLORS if (s := _series(rows, c))]
    w, h = size
    img = Image.new("RGB", (w, max(1, len(panels)) * h // 2), "white")
    draw = ImageDraw.Draw(img)
    for k, (column, pts) in enumerate(panels):
        top, bottom, left, right = k * h // 2 + 20, (k + 1) * h // 2 - 25, 60, w - 20
        steps, vals = [p[0] for p in pts], [p[1] for p in pts]
        lo, hi = min(vals), max(vals)
        hi = hi if hi > lo else lo + 1.0
        s0, s1 = steps[0], max(steps[-1], steps[0] + 1)
        xy = lambda s, v: (left + (right - left) * (s - s0) / (s1 - s0), bottom - (bottom - top) * (v - lo) / (hi - lo))  # noqa: E731
        draw.rectangle([left, top, right, bottom], outline=(120, 120, 120))
        light = tuple(min(255, c + 150) for c in _COLORS[column])
        draw.line([xy(s, v) for s, v in pts], fill=light, width=1)
        draw.line([xy(s, v) for s, v in zip(steps, _smooth(vals))], fill=_COLORS[column], width=2)
        if len(pts) == 1:
            x, y = xy(*pts[0])
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=_COLORS[column])
        draw.text((left, top - 15), f"{column}  (steps {s0}-{steps[-1]}, last {vals[-1]:.4g})", fill=(0, 0, 0))
        draw.text((2, top), f"{hi:.3g}", fill=(0, 0, 0))
        draw.text((2, bottom - 10), f"{lo:.3g}", fill=(0, 0, 0))
    return img
