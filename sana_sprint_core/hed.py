"""HED scribbles for the Sana ControlNet, in torch (reference 5.3; no OpenCV, no controlnet_aux).

    net = load_hed(find_hed(models_dir) or "ControlNetHED.pth")
    edges = hed_edges(net, image)                        # (B, 3, H, W) in [0, 1] -> (B, 1, h, w) in [0, 1]
    scribble = scribble_from_edges(edges, thickness=2)   # binary {0, 1}, white lines on black
    scribble = scribble_from_drawing(drawing, invert=True)   # or a hand drawing, without HED
    control = to_control_image(scribble, width, height)      # (B, 3, H, W) in [0, 1] for the DC-AE

The network is a clean-room module with the state-dict keys of lllyasviel's Apache-2.0
`ControlNetHED_Apache2` (controlnet_aux.hed), so the public `ControlNetHED.pth` loads strictly:
a learned RGB offset `norm` (1, 3, 1, 1) and five stages of 2/2/3/3/3 3x3 conv + ReLU with
64/128/256/512/512 channels, 2x2 max-pool before stages 2-5, each with a 1x1 projection to one
channel. Edges = sigmoid(mean of the five projections bilinearly resized to the input size).
The post-processing follows NVlabs `get_scribble_map` (tools/controlnet/utils.py) on float maps:
nms (blur, directional 3x3 maxima, threshold), blur + threshold, thickness by erode/dilate.
Deviations, all before or inside blurs: resizing uses torch bicubic (antialiased) instead of
OpenCV Lanczos4/area, and edges are not quantised to uint8 between the steps.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint_io import read_state_dict, short_list
from .constants import (
    HED_DEFAULT_DETECT_RESOLUTION, HED_FILE_NAME, HED_SIZE_MULTIPLE, HF_ANNOTATORS,
    SCRIBBLE_BLUR_KERNEL, SCRIBBLE_BLUR_SIGMA, SCRIBBLE_BLUR_THRESHOLD, SCRIBBLE_DEFAULT_THICKNESS,
    SCRIBBLE_ERODE_SIZE, SCRIBBLE_NMS_KERNEL, SCRIBBLE_NMS_SIGMA, SCRIBBLE_NMS_THRESHOLD,
)
from .model_files import HED_FILES

HED_FILE = HED_FILES[0]
# Where the comfyui_controlnet_aux pack keeps the same file (ckpts/<repo>/<file>), relative to the
# ComfyUI folder that holds models/; found there too so users need not download it twice.
CONTROLNET_AUX_HED = ("custom_nodes", "comfyui_controlnet_aux", "ckpts", *HF_ANNOTATORS.split("/"), HED_FILE_NAME)
# (input, output channels, 3x3 convs) of the five stages.
_STAGES = ((3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3))
# The four 3x3 line directions of the nms (horizontal, vertical, two diagonals) as (dy, dx).
_DIRECTIONS = ((0, 1), (1, 0), (1, 1), (1, -1))


class HEDStage(nn.Module):
    """n 3x3 convs with ReLU and a 1x1 side projection to one channel."""

    def __init__(self, cin: int, cout: int, n: int):
        super().__init__()
        self.convs = nn.Sequential(*(nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1) for i in range(n)))
        self.projection = nn.Conv2d(cout, 1, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(features for the next stage, side output (B, 1, H, W))."""
        for conv in self.convs:
            x = F.relu(conv(x))
        return x, self.projection(x)


class HEDNetwork(nn.Module):
    """The ControlNet HED edge network; input RGB (B, 3, H, W) in 0..255, output 5 side maps."""

    def __init__(self):
        super().__init__()
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))
        for i, (cin, cout, n) in enumerate(_STAGES, start=1):
            self.add_module(f"block{i}", HEDStage(cin, cout, n))

    def forward(self, x: Tensor) -> list[Tensor]:
        """Five side outputs (B, 1, H / 2^k, W / 2^k), k = 0..4 (pre-sigmoid edge logits)."""
        h, sides = x - self.norm, []
        for i in range(1, len(_STAGES) + 1):
            if i > 1:
                h = F.max_pool2d(h, 2, 2)
            h, side = getattr(self, f"block{i}")(h)
            sides.append(side)  # (B, 1, H / 2^(i-1), W / 2^(i-1))
        return sides


def find_hed(models_dir: str | os.PathLike) -> Path | None:
    """models/annotators/ControlNetHED.pth, else comfyui_controlnet_aux's copy beside models/; None if absent."""
    models_dir = Path(models_dir)
    for candidate in (models_dir / HED_FILE.folder / HED_FILE.name, models_dir.parent.joinpath(*CONTROLNET_AUX_HED)):
        if candidate.is_file():
            return candidate
    return None


def load_hed(path: str | os.PathLike, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32) -> HEDNetwork:
    """Load ControlNetHED.pth (torch.load with weights_only=True, or safetensors) strictly."""
    path = Path(path)
    if not path.is_file():
        where = path.parent if path.suffix else path
        raise FileNotFoundError(
            f"HED weights not found: {path}. Download {HED_FILE.what} from https://huggingface.co/{HED_FILE.repo} "
            f"(resolve/main/{HED_FILE_NAME}) into {where} (in ComfyUI: models/{HED_FILE.folder}/{HED_FILE_NAME})")
    state = read_state_dict(path)
    net = HEDNetwork()
    expected = net.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    bad = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or bad:
        raise ValueError(f"{path} is not ControlNetHED.pth (ControlNetHED_Apache2): missing {short_list(missing)}; "
                         f"unexpected {short_list(unexpected)}; wrong shapes {short_list(bad)}")
    net.load_state_dict(state, strict=True)
    return net.to(device=device, dtype=dtype).eval()


def _check_image(name: str, image: Tensor) -> None:
    ok = isinstance(image, Tensor) and image.ndim == 4 and image.shape[1] in (1, 3) and image.is_floating_point()
    if not ok:
        got = f"{tuple(image.shape)} {image.dtype}" if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"{name} must be a float tensor (B, 3 or 1, H, W) with values in [0, 1], got {got}")
    lo, hi = float(image.min()), float(image.max())
    if lo < 0 or hi > 1:
        raise ValueError(f"{name} must hold values in [0, 1], got min {lo:.4g}, max {hi:.4g}")


def detect_size(height: int, width: int, detect_resolution: int) -> tuple[int, int]:
    """Short side scaled to detect_resolution, both sides rounded to multiples of 64 (resize_image)."""
    if detect_resolution < HED_SIZE_MULTIPLE:
        raise ValueError(f"detect_resolution must be at least {HED_SIZE_MULTIPLE}, got {detect_resolution}")
    k = detect_resolution / min(height, width)
    m = HED_SIZE_MULTIPLE
    return max(m, round(height * k / m) * m), max(m, round(width * k / m) * m)


def resize(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Antialiased bicubic resize of (B, C, H, W) to size (h, w), clamped to [0, 1]."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)


@torch.no_grad()
def hed_edges(net: HEDNetwork, image: Tensor, detect_resolution: int = HED_DEFAULT_DETECT_RESOLUTION) -> Tensor:
    """Soft HED edges (B, 1, h, w) in [0, 1] at the detect size (short side ~ detect_resolution, x64)."""
    _check_image("image", image)
    size = detect_size(image.shape[-2], image.shape[-1], detect_resolution)
    p = next(net.parameters())
    x = resize(image.float(), size).expand(-1, 3, -1, -1) * 255.0  # RGB 0..255, the network's input
    sides = net(x.to(device=p.device, dtype=p.dtype))
    sides = [F.interpolate(s.float(), size=size, mode="bilinear", align_corners=False) for s in sides]
    return torch.sigmoid(torch.stack(sides).mean(0))


def gaussian_kernel(size: int, sigma: float, dtype=torch.float32, device=None) -> Tensor:
    """OpenCV getGaussianKernel: w_i ~ exp(-(i - (size-1)/2)^2 / (2 sigma^2)), sum 1."""
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    w = torch.exp(-x**2 / (2 * sigma**2))
    return (w / w.sum()).to(dtype)


def gaussian_blur(x: Tensor, sigma: float, size: int) -> Tensor:
    """Separable Gaussian blur of (B, 1, H, W) with mirrored borders (OpenCV BORDER_REFLECT_101)."""
    r = size // 2
    if min(x.shape[-2:]) <= r:
        raise ValueError(f"maps must be larger than {r} px per side for a {size}-tap blur, got {tuple(x.shape[-2:])}")
    k = gaussian_kernel(size, sigma, x.dtype, x.device)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, size))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, size, 1))


def _neighbour(x: Tensor, dy: int, dx: int) -> Tensor:
    """x shifted so that out[i, j] = x[i + dy, j + dx]; -inf outside the map."""
    padded = F.pad(x, (1, 1, 1, 1), value=-math.inf)
    h, w = x.shape[-2:]
    return padded[..., 1 + dy: 1 + dy + h, 1 + dx: 1 + dx + w]


def nms(edges: Tensor, threshold: float = SCRIBBLE_NMS_THRESHOLD, sigma: float = SCRIBBLE_NMS_SIGMA) -> Tensor:
    """Thin edges: blur, keep pixels that are a maximum along any of the 4 line directions, threshold.

    A pixel is a maximum along (dy, dx) when it is >= both neighbours on that line (controlnet_aux
    util.nms: dilation with the 3x3 line kernel leaves it unchanged). Returns {0, 1}.
    """
    x = gaussian_blur(edges.float(), sigma, SCRIBBLE_NMS_KERNEL)
    keep = torch.zeros_like(x, dtype=torch.bool)
    for dy, dx in _DIRECTIONS:
        keep |= (x >= _neighbour(x, dy, dx)) & (x >= _neighbour(x, -dy, -dx))
    return (keep & (x > threshold)).to(edges.dtype)


def dilate(x: Tensor, size: int) -> Tensor:
    """Max over a size x size window anchored at (size // 2, size // 2) (OpenCV dilate, ones kernel)."""
    a = size // 2
    return F.max_pool2d(F.pad(x, (a, size - 1 - a, a, size - 1 - a), value=-math.inf), size, stride=1)


def erode(x: Tensor, size: int) -> Tensor:
    """Min over the same window as dilate (OpenCV erode, ones kernel); borders do not erode."""
    return -dilate(-x, size)


def apply_thickness(scribble: Tensor, thickness: int) -> Tensor:
    """0: erode 4x4 (thinner); 1: unchanged; t > 1: dilate with (t // 2)^2 ones (NVlabs get_scribble_map)."""
    if not isinstance(thickness, int) or thickness < 0:
        raise ValueError("thickness must be an integer >= 0 (0 thins, 1 keeps, t > 1 dilates by t // 2), "
                         f"got {thickness!r}")
    if thickness == 0:
        return erode(scribble, SCRIBBLE_ERODE_SIZE)
    if thickness // 2 > 1:
        return dilate(scribble, thickness // 2)
    return scribble


def scribble_from_edges(edges: Tensor, thickness: int = SCRIBBLE_DEFAULT_THICKNESS) -> Tensor:
    """HED edges (B, 1, h, w) in [0, 1] -> binary scribble (B, 1, h, w) in {0, 1}, white lines on black."""
    if edges.ndim != 4 or edges.shape[1] != 1:
        raise ValueError(f"edges must be (B, 1, H, W) as returned by hed_edges, got {tuple(edges.shape)}")
    thin = nms(edges.float())
    blurred = gaussian_blur(thin, SCRIBBLE_BLUR_SIGMA, SCRIBBLE_BLUR_KERNEL)
    return apply_thickness((blurred >= SCRIBBLE_BLUR_THRESHOLD).float(), thickness)


def scribble_from_drawing(image: Tensor, invert: bool = False, threshold: float = 0.5) -> Tensor:
    """A hand drawing (B, 3 or 1, H, W) in [0, 1] -> scribble {0, 1}: white strokes on black, or with
    invert=True black strokes on white. The grey level (channel mean) is compared with threshold."""
    _check_image("drawing", image)
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    grey = image.float().mean(dim=1, keepdim=True)
    return ((grey < threshold) if invert else (grey > threshold)).float()


def to_control_image(scribble: Tensor, width: int, height: int) -> Tensor:
    """Scribble (B, 1 or 3, h, w) -> RGB control image (B, 3, height, width) in [0, 1] for the DC-AE
    (bicubic resize of the binary map, as NVlabs' transform_control_signal does with PIL)."""
    _check_image("scribble", scribble)
    return resize(scribble.float(), (height, width)).expand(-1, 3, -1, -1).contiguous()
