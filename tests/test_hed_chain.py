"""The `hed` control chain with real content: a deterministic HED network whose weights detect edges
(the released ControlNetHED.pth cannot be downloaded here, and random weights give empty maps), through
HED -> NMS -> scribble -> DC-AE latent -> ControlNet, and the scribble step against controlnet-aux's own
HED post-processing on the same edge map.

The network: block 1's first conv takes the grey level's Sobel derivatives in x and y, each sign in its
own channel (so the ReLU keeps both), its second conv sums them over 3 x 3 (a ridge 4 pixels wide), and
block 2 sums that again at half resolution; their side projections scale and subtract a bias, every
other weight and bias is zero (the other side outputs are 0). Edge map: 0.018 on flat areas, a soft
ridge about 8 pixels wide reaching 1.0 on a step of 0.5 in grey level, as HED's own edges look."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sana_sprint_core import hed

SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
K1, B1, K2, B2 = 4.0, 12.0, 0.5, 8.0  # side-output scales and biases of blocks 1 and 2


def edge_hed() -> hed.HEDNetwork:
    """The deterministic edge-detecting HED network of the module docstring."""
    net = hed.HEDNetwork().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        first, second = net.block1.convs
        for channel, kernel in enumerate((SOBEL_X, -SOBEL_X, SOBEL_X.T, -SOBEL_X.T)):
            first.weight[channel] = kernel / (3 * 255.0)  # grey = mean of RGB, input in 0..255
            second.weight[0, channel] = 1.0  # 3x3 sum of every sign channel: a 4-pixel ridge
        net.block1.projection.weight[0, 0], net.block1.projection.bias[0] = K1, -B1
        net.block2.convs[0].weight[0, 0] = 1.0  # the ridge again, summed 3x3 at half resolution
        net.block2.convs[1].weight[0, 0, 1, 1] = 1.0
        net.block2.projection.weight[0, 0], net.block2.projection.bias[0] = K2, -B2
    return net


def square_image(size: int = 128, lo: float = 0.0, hi: float = 0.5) -> torch.Tensor:
    """A grey square on black (no step at the image border, where the zero padding sees one)."""
    img = torch.full((size, size), lo)
    img[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = hi
    return img.expand(3, -1, -1)[None].clone()


def outline(size: int = 128) -> torch.Tensor:
    """The square's outline: the pixels on either side of its edge, (size, size) bool."""
    inside = (square_image(size)[0, 0] > 0.25).float()[None, None]
    grown = F.max_pool2d(inside, 3, 1, 1)
    shrunk = -F.max_pool2d(-inside, 3, 1, 1)
    return ((grown - shrunk) > 0)[0, 0]


def near(mask: torch.Tensor, r: int) -> torch.Tensor:
    """Pixels within Chebyshev distance r of `mask`."""
    return F.max_pool2d(mask.float()[None, None], 2 * r + 1, 1, r)[0, 0] > 0


def test_edges_are_strong_on_the_outline_and_faint_elsewhere():
    edges = hed.hed_edges(edge_hed(), square_image(), detect_resolution=128)[0, 0]
    line = outline()
    assert float(edges[line].min()) > 0.9 and float(edges[~near(line, 6)].max()) < 0.05


def test_scribble_traces_the_outline():
    """controlnet-aux's scribble is thick (a blur of sigma 3 thresholded at 4/255): the whole outline is
    covered, nothing further than 12 pixels from it, the square's middle and the corners of the image empty."""
    edges = hed.hed_edges(edge_hed(), square_image(), detect_resolution=128)
    on = hed.scribble_from_edges(edges, thickness=1)[0, 0] > 0.5
    line = outline()
    assert bool(on[line].all()) and not bool(on[~near(line, 12)].any())
    assert 0.1 < float(on.float().mean()) < 0.4


def test_scribble_equals_controlnet_aux_post_processing_on_the_same_edges():
    """controlnet-aux's HED annotator, scribble mode: nms(edges, 127, 3.0), GaussianBlur sigma 3, > 4."""
    pytest.importorskip("cv2")
    import cv2

    from tests.test_hed import _controlnet_aux

    _, aux_util = _controlnet_aux()
    edges = hed.hed_edges(edge_hed(), square_image(), detect_resolution=128)
    u8 = (edges[0, 0].numpy() * 255).astype(np.uint8)
    want = (cv2.GaussianBlur(aux_util.nms(u8, 127, 3.0), (0, 0), 3.0) > 4).astype(np.float32)
    got = hed.scribble_from_edges(torch.from_numpy(u8 / 255.0).float()[None, None], thickness=1)[0, 0].numpy()
    assert want.mean() > 0.02  # the oracle sees the outline too
    assert (got != want).mean() < 0.01  # OpenCV's 8-bit fixed-point blur rounds near the threshold


def test_the_whole_hed_chain_steers_a_controlnet():
    """HED scribble -> DC-AE latent -> ControlNet on the DiT: the control of the square steers the output,
    and another picture (the square moved) steers it elsewhere."""
    from sana_sprint_core.controlnet import ControlInput, ControlledDiT, SanaControlNet
    from sana_sprint_core.dcae import DCAE, encode
    from sana_sprint_core.trigflow_model import TrigFlowModel
    from tests.fixtures.comfy_models import TINY_DCAE, _randomise
    from tests.fixtures.distill import TINY_TEACHER, tiny_teacher
    from trainers.controlnet import scribble_encoder

    torch.manual_seed(0)
    vae = DCAE(TINY_DCAE).eval()
    _randomise(vae, 1, 1.0)
    base = tiny_teacher(config=TINY_TEACHER.replace(in_channels=32, out_channels=32))
    net = SanaControlNet.from_base(base, 2)
    with torch.no_grad():
        for p in (net.input_block.weight, *(b.weight for b in net.controlnet_blocks)):
            p.add_(torch.randn_like(p) * 0.05)
    model = TrigFlowModel(ControlledDiT(base, net)).eval()
    encode_control = scribble_encoder(edge_hed(), lambda image: encode(vae, image), 128, (2, 2),
                                      torch.Generator().manual_seed(0))
    moved = torch.roll(square_image(), shifts=(20, 12), dims=(-2, -1))
    with torch.no_grad():
        latents = [encode_control(square_image()), encode_control(moved)]
        g = torch.Generator().manual_seed(3)
        x, s = torch.randn(1, 32, 4, 4, generator=g), torch.tensor([1.2])
        ctx, mask = torch.randn(1, 6, 48, generator=g), torch.ones(1, 6, dtype=torch.int64)
        free = model(x, s, ctx, mask)
        outs = [model(x, s, ctx, mask, control=ControlInput(lat, 1.0)) for lat in latents]
    assert latents[0].shape == (1, 32, 4, 4) and not torch.equal(latents[0], latents[1])
    assert (outs[0] - free).abs().max() > 1e-2 and (outs[0] - outs[1]).abs().max() > 1e-3
