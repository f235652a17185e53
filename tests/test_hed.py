"""HED network, scribble post-processing and weights lookup (sana_sprint_core/hed.py)."""

from __future__ import annotations

import importlib.util
import math
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sana_sprint_core import hed
from sana_sprint_core.constants import SCRIBBLE_BLUR_KERNEL, SCRIBBLE_NMS_KERNEL

# ControlNetHED_Apache2: (output channels, 3x3 convs) per stage; 14,716,168 parameters (reference deps 2).
STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
HED_PARAMS = 14_716_168


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return hed.HEDNetwork().eval()


def _expected_shapes() -> dict[str, tuple]:
    shapes, cin = {"norm": (1, 3, 1, 1)}, 3
    for i, (cout, n) in enumerate(STAGES, start=1):
        for j in range(n):
            shapes[f"block{i}.convs.{j}.weight"] = (cout, cin if j == 0 else cout, 3, 3)
            shapes[f"block{i}.convs.{j}.bias"] = (cout,)
        shapes[f"block{i}.projection.weight"] = (1, cout, 1, 1)
        shapes[f"block{i}.projection.bias"] = (1,)
        cin = cout
    return shapes


def test_network_has_the_controlnet_hed_keys(net):
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == _expected_shapes()
    assert sum(p.numel() for p in net.parameters()) == HED_PARAMS


def _reference_sides(state: dict, x: torch.Tensor) -> list[torch.Tensor]:
    """The architecture written out with F.conv2d on the state dict."""
    h, sides = x - state["norm"], []
    for i, (_, n) in enumerate(STAGES, start=1):
        if i > 1:
            h = F.max_pool2d(h, kernel_size=2, stride=2)
        for j in range(n):
            h = F.relu(F.conv2d(h, state[f"block{i}.convs.{j}.weight"], state[f"block{i}.convs.{j}.bias"], padding=1))
        sides.append(F.conv2d(h, state[f"block{i}.projection.weight"], state[f"block{i}.projection.bias"]))
    return sides


def test_network_matches_a_written_out_reference(net):
    x = torch.rand(1, 3, 36, 52, generator=torch.Generator().manual_seed(1)) * 255  # odd sizes after pooling
    with torch.no_grad():
        ours = net(x)
        ref = _reference_sides(net.state_dict(), x)
    assert [tuple(s.shape) for s in ours] == [(1, 1, 36, 52), (1, 1, 18, 26), (1, 1, 9, 13), (1, 1, 4, 6), (1, 1, 2, 3)]
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_edges_are_the_sigmoid_of_the_mean_side_output():
    """All convolutions zero, side biases b_k: every pixel is sigmoid(mean b_k), at the detect size."""
    net = hed.HEDNetwork()
    biases = [0.3, -1.2, 2.0, 0.5, -0.1]
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        for i, b in enumerate(biases, start=1):
            getattr(net, f"block{i}").projection.bias.fill_(b)
    edges = hed.hed_edges(net, torch.rand(2, 3, 50, 75), detect_resolution=64)
    assert edges.shape == (2, 1, 64, 128)  # short side 50 -> 64; 75 * 64 / 50 = 96 -> 128 (round 1.5 -> 2)
    want = 1 / (1 + math.exp(-sum(biases) / 5))
    torch.testing.assert_close(edges, torch.full_like(edges, want), rtol=0, atol=1e-6)


@pytest.mark.parametrize("hw, res, want", [((100, 150), 128, (128, 192)), ((1024, 768), 1024, (1344, 1024)),
                                           ((512, 512), 512, (512, 512)), ((40, 1000), 64, (64, 1600))])
def test_detect_size(hw, res, want):
    assert hed.detect_size(*hw, res) == want


def test_detect_resolution_must_fit():
    with pytest.raises(ValueError, match="detect_resolution must be at least 64, got 32"):
        hed.detect_size(100, 100, 32)


def _test_image(h: int = 100, w: int = 150) -> torch.Tensor:
    """A bright disc and a dark bar on a mid-grey background, (1, 3, h, w) in [0, 1]."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    img = torch.full((h, w), 0.5)
    img[(yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (h / 4) ** 2] = 0.95
    img[h // 5: h // 5 + 8, w // 2: w - 10] = 0.05
    return torch.stack([img, img * 0.9, img * 0.8])[None]


def test_hed_on_a_test_image_gives_a_binary_map_of_the_right_size(net):
    edges = hed.hed_edges(net, _test_image().expand(2, -1, -1, -1), detect_resolution=128)
    assert edges.shape == (2, 1, 128, 192) and 0 <= float(edges.min()) and float(edges.max()) <= 1
    scribble = hed.scribble_from_edges(edges, thickness=2)
    assert scribble.shape == (2, 1, 128, 192)
    assert set(scribble.unique().tolist()) <= {0.0, 1.0}
    control = hed.to_control_image(scribble, width=96, height=64)
    assert control.shape == (2, 3, 64, 96) and float(control.min()) >= 0 and float(control.max()) <= 1


def test_gaussian_kernel_follows_opencv():
    k = hed.gaussian_kernel(25, 3.0, dtype=torch.float64)
    i = torch.arange(25, dtype=torch.float64) - 12
    want = torch.exp(-i**2 / 18)
    torch.testing.assert_close(k, want / want.sum(), rtol=0, atol=1e-15)
    # OpenCV's size for ksize (0, 0): round(sigma * 4 * 2 + 1) | 1 (float), round(sigma * 3 * 2 + 1) | 1 (uint8)
    assert (round(3.0 * 8 + 1) | 1, round(3.0 * 6 + 1) | 1) == (SCRIBBLE_NMS_KERNEL, SCRIBBLE_BLUR_KERNEL)


def test_gaussian_blur_delta_constant_and_mirrored_border():
    k = hed.gaussian_kernel(7, 1.5, dtype=torch.float64)
    x = torch.zeros(1, 1, 15, 15, dtype=torch.float64)
    x[0, 0, 7, 7] = 1
    torch.testing.assert_close(hed.gaussian_blur(x, 1.5, 7)[0, 0, 4:11, 4:11], torch.outer(k, k), rtol=0, atol=1e-15)
    const = torch.full((1, 1, 9, 11), 0.25, dtype=torch.float64)
    torch.testing.assert_close(hed.gaussian_blur(const, 1.5, 7), const, rtol=0, atol=1e-15)
    edge = torch.zeros(1, 1, 9, 11, dtype=torch.float64)
    edge[..., 1] = 1  # column 1 mirrors to column -1 (BORDER_REFLECT_101), so column 0 sees it twice
    out = hed.gaussian_blur(edge, 1.5, 7)[0, 0, 4]
    torch.testing.assert_close(out[0], 2 * k[4], rtol=0, atol=1e-15)
    torch.testing.assert_close(out[1], k[3] + k[5], rtol=0, atol=1e-15)  # itself + mirror at distance 2
    with pytest.raises(ValueError, match="larger than 12 px per side for a 25-tap blur"):
        hed.gaussian_blur(torch.zeros(1, 1, 12, 40), 3.0, 25)


def _nms_by_definition(blurred: np.ndarray, t: float) -> np.ndarray:
    """Keep (y, x) when blurred > t and it is >= its in-image neighbours along some 3x3 line."""
    h, w = blurred.shape
    out = np.zeros_like(blurred, dtype=bool)
    for y in range(h):
        for x in range(w):
            v = blurred[y, x]
            for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
                nbrs = [blurred[y + s * dy, x + s * dx] for s in (-1, 1) if 0 <= y + s * dy < h and 0 <= x + s * dx < w]
                if all(v >= n for n in nbrs):
                    out[y, x] = v > t
    return out


def test_nms_matches_its_definition():
    g = torch.Generator().manual_seed(3)
    edges = hed.gaussian_blur(torch.rand(1, 1, 30, 34, generator=g), 1.0, 7)
    edges = (edges - edges.min()) / (edges.max() - edges.min())
    got = hed.nms(edges, threshold=0.4)[0, 0].numpy().astype(bool)
    blurred = hed.gaussian_blur(edges, 3.0, SCRIBBLE_NMS_KERNEL)[0, 0].numpy()
    want = _nms_by_definition(blurred, 0.4)
    assert want.sum() > 10 and (~want).sum() > 10
    np.testing.assert_array_equal(got, want)


def test_scribble_of_a_straight_edge_in_closed_form():
    """A horizontal soft edge: along rows every pixel is a maximum, so the scribble is the band of rows
    whose 1-D blurred profile exceeds 127/255, widened where the second blur reaches 4.5/255."""
    rows = torch.arange(60, dtype=torch.float64)
    profile = torch.exp(-((rows - 30.0) ** 2) / 8)
    edges = profile[None, None, :, None].expand(1, 1, 60, 40).float()
    got = hed.scribble_from_edges(edges, thickness=1)[0, 0]

    def blur1d(v, size):  # reflect-101 padding along rows, as OpenCV
        r = size // 2
        k = hed.gaussian_kernel(size, 3.0, dtype=torch.float64).numpy()
        return np.convolve(np.pad(v, r, mode="reflect"), k, mode="valid")

    kept = blur1d(profile.numpy(), SCRIBBLE_NMS_KERNEL) > 127 / 255
    want_rows = blur1d(kept.astype(np.float64), SCRIBBLE_BLUR_KERNEL) >= 4.5 / 255
    assert 5 < want_rows.sum() < 40
    np.testing.assert_array_equal(got.numpy(), np.repeat(want_rows[:, None], 40, axis=1).astype(np.float32))


def test_dilate_and_erode_windows():
    x = torch.zeros(1, 1, 20, 20)
    x[0, 0, 5, 5] = 1
    d = hed.dilate(x, 2)[0, 0]  # OpenCV anchor (1, 1): offsets -1..0, the dot spreads to 5..6
    assert d.nonzero().tolist() == [[5, 5], [5, 6], [6, 5], [6, 6]]
    sq = torch.zeros(1, 1, 20, 20)
    sq[0, 0, 10:16, 10:16] = 1
    e = hed.erode(sq, 4)[0, 0]  # anchor 2: offsets -2..1, rows r with r-2..r+1 inside 10..15
    assert e.nonzero().min(0).values.tolist() == [12, 12] and e.nonzero().max(0).values.tolist() == [14, 14]
    corner = torch.zeros(1, 1, 20, 20)
    corner[0, 0, :6, :6] = 1  # outside the image does not erode (OpenCV's default border value)
    assert hed.erode(corner, 4)[0, 0].nonzero().max(0).values.tolist() == [4, 4]


def test_thickness():
    g = torch.Generator().manual_seed(0)
    s = (torch.rand(1, 1, 24, 24, generator=g) > 0.9).float()
    for t in (1, 2, 3):
        assert torch.equal(hed.apply_thickness(s, t), s)
    assert torch.equal(hed.apply_thickness(s, 0), hed.erode(s, 4))
    assert torch.equal(hed.apply_thickness(s, 5), hed.dilate(s, 2))
    assert torch.equal(hed.apply_thickness(s, 9), hed.dilate(s, 4))
    assert hed.apply_thickness(s, 9).sum() > hed.apply_thickness(s, 4).sum() > s.sum()
    with pytest.raises(ValueError, match="thickness must be an integer >= 0.*got -1"):
        hed.apply_thickness(s, -1)


def test_scribble_from_drawing():
    drawing = torch.zeros(1, 3, 4, 4)
    drawing[..., 1, :] = 1.0  # a white stroke on black
    drawing[..., 2, 0] = 0.6
    white = hed.scribble_from_drawing(drawing)
    assert white.shape == (1, 1, 4, 4) and white[0, 0, 1].tolist() == [1, 1, 1, 1] and white.sum() == 5
    black_on_white = 1 - drawing
    torch.testing.assert_close(hed.scribble_from_drawing(black_on_white, invert=True), white, rtol=0, atol=0)
    assert hed.scribble_from_drawing(drawing, threshold=0.7).sum() == 4
    with pytest.raises(ValueError, match=r"drawing must be a float tensor \(B, 3 or 1, H, W\).*got \(4, 4, 3\)"):
        hed.scribble_from_drawing(torch.zeros(4, 4, 3))
    with pytest.raises(ValueError, match=r"drawing must hold values in \[0, 1\], got min 0, max 255"):
        hed.scribble_from_drawing(drawing * 255)
    with pytest.raises(ValueError, match="threshold must be in \\(0, 1\\), got 1.5"):
        hed.scribble_from_drawing(drawing, threshold=1.5)


def test_to_control_image_keeps_a_same_size_map_and_resizes():
    s = (torch.rand(1, 1, 8, 12) > 0.5).float()
    same = hed.to_control_image(s, width=12, height=8)
    assert same.shape == (1, 3, 8, 12) and torch.equal(same[:, 1:2], s)
    up = hed.to_control_image(s, width=24, height=16)
    assert up.shape == (1, 3, 16, 24) and float(up.min()) >= 0 and float(up.max()) <= 1
    with pytest.raises(ValueError, match="edges must be \\(B, 1, H, W\\)"):
        hed.scribble_from_edges(torch.zeros(1, 3, 32, 32))


def test_load_hed_round_trip_and_errors(tmp_path, net):
    path = tmp_path / "ControlNetHED.pth"
    torch.save(net.state_dict(), path)
    loaded = hed.load_hed(path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), net.state_dict().values()))
    hint = r"HED weights not found: .*missing\.pth\. Download ControlNetHED\.pth from https://huggingface\.co/"
    with pytest.raises(FileNotFoundError, match=hint + r"lllyasviel/Annotators .*models/annotators/"):
        hed.load_hed(tmp_path / "missing.pth")
    torch.save({"x_embedder.proj.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"other\.pth is not ControlNetHED\.pth.*missing block1\.convs.*"
                                         r"unexpected x_embedder"):
        hed.load_hed(tmp_path / "other.pth")


def test_find_hed(tmp_path):
    models = tmp_path / "ComfyUI" / "models"
    models.mkdir(parents=True)
    assert hed.find_hed(models) is None
    aux = tmp_path / "ComfyUI" / "custom_nodes" / "comfyui_controlnet_aux" / "ckpts" / "lllyasviel" / "Annotators"
    aux.mkdir(parents=True)
    (aux / "ControlNetHED.pth").write_bytes(b"x")
    assert hed.find_hed(models) == aux / "ControlNetHED.pth"
    (models / "annotators").mkdir()
    (models / "annotators" / "ControlNetHED.pth").write_bytes(b"x")
    assert hed.find_hed(models) == models / "annotators" / "ControlNetHED.pth"


def _controlnet_aux():
    """controlnet_aux.hed and cv2 (the README test command installs both): through a stub package, so
    controlnet_aux's eager __init__ (torchvision, timm) is skipped, as dependencies.md section 2."""
    pytest.importorskip("cv2")
    if "controlnet_aux" not in sys.modules:  # the stub of an earlier call has no __spec__ to look up
        spec = importlib.util.find_spec("controlnet_aux")
        if spec is None:
            pytest.skip("controlnet_aux not installed (oracle only: pip install --no-deps controlnet-aux==0.0.10)")
        stub = types.ModuleType("controlnet_aux")
        stub.__path__ = list(spec.submodule_search_locations)
        sys.modules["controlnet_aux"] = stub
    from controlnet_aux import hed as aux_hed, util as aux_util

    return aux_hed, aux_util


def test_against_controlnet_aux_when_installed(net):
    aux_hed, aux_util = _controlnet_aux()
    import cv2

    ref = aux_hed.ControlNetHED_Apache2().float().eval()
    ref.load_state_dict(net.state_dict())
    x = torch.rand(1, 3, 64, 96) * 255
    with torch.no_grad():
        for a, b in zip(ref(x), net(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    u8 = (hed.hed_edges(net, _test_image(), 128)[0, 0].numpy() * 255).astype(np.uint8)
    m = cv2.GaussianBlur(aux_util.nms(u8, 127, 3.0), (0, 0), 3.0)
    want = (m > 4).astype(np.float32)
    got = hed.scribble_from_edges(torch.from_numpy(u8 / 255.0).float()[None, None], thickness=1)[0, 0].numpy()
    assert (got != want).mean() < 0.01  # OpenCV's 8-bit fixed-point blur rounds near the threshold
