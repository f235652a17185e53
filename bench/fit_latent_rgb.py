"""Fit the latent -> RGB preview factors of the DC-AE (constants.DCAE_LATENT_RGB_FACTORS / _BIAS).

    python bench/fit_latent_rgb.py --vae models/vae/dc-ae-f32c32-sana-1.1-diffusers --images some/photos

Encodes every image (centre-cropped to a multiple of 32, at most --size pixels a side) with the
real DC-AE, then solves least squares from the 32 latent channels (model space: DC-AE latent *
0.41407, what ComfyUI's previewer sees) to the image averaged over each 32x32 patch, mapped to
[-1, 1]. Prints the two constants as Python and the fit's RMS error in [0, 255] units. Needs the
real weights (not shipped; not reachable offline, which is why the constants are still None).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sana_sprint_core.constants import LATENT_DOWNSCALE  # noqa: E402
from sana_sprint_core.dcae import encode, load_vae  # noqa: E402
from sana_sprint_core.preview import fit_latent_rgb, linear_rgb  # noqa: E402

SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def load_image(path: Path, size: int) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1], longest side <= size, both sides multiples of 32 (centre crop)."""
    img = Image.open(path).convert("RGB")
    img.thumbnail((size, size))
    w, h = (s // LATENT_DOWNSCALE * LATENT_DOWNSCALE for s in img.size)
    left, top = (img.width - w) // 2, (img.height - h) // 2
    array = np.asarray(img.crop((left, top, left + w, top + h)), dtype=np.float32) / 255
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae", type=Path, required=True, help="DC-AE folder or file (load_vae)")
    parser.add_argument("--images", type=Path, required=True, help="folder of photos (a few dozen varied ones)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in SUFFIXES)
    if not paths:
        print(f"no images ({', '.join(SUFFIXES)}) in {args.images}", file=sys.stderr)
        return 1
    vae = load_vae(args.vae, dtype=torch.float32, device=args.device)
    latents, images = [], []
    with torch.no_grad():
        for p in paths:
            image = load_image(p, args.size)
            latents.append(encode(vae, image.to(args.device)).cpu().flatten(2).transpose(1, 2))  # (1, hw, C)
            pooled = torch.nn.functional.avg_pool2d(image, LATENT_DOWNSCALE)  # (1, 3, h, w)
            images.append(pooled.flatten(2).transpose(1, 2))  # (1, hw, 3)
    # Stack every latent pixel as one "image" of size (n, 1) so images of different sizes combine.
    lat = torch.cat(latents, 1).transpose(1, 2)[..., None]  # (1, C, n, 1)
    rgb = torch.cat(images, 1).transpose(1, 2)[..., None]  # (1, 3, n, 1)
    factors, bias = fit_latent_rgb(lat, rgb)
    err = (linear_rgb(lat[0], factors, bias) - rgb[0].movedim(0, -1)).pow(2).mean().sqrt() * 255
    print(f"# fitted on {len(paths)} images, {lat.shape[2]} latent pixels; RMS error {err:.1f}/255")
    print(f"DCAE_LATENT_RGB_FACTORS = {[[round(v, 4) for v in row] for row in factors.tolist()]}")
    print(f"DCAE_LATENT_RGB_BIAS = {[round(v, 4) for v in bias.tolist()]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
