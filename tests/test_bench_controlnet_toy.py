"""The ControlNet toy's data and adherence metric (bench/controlnet_toy.py; docs/training.md 10.2), and the
flow-matching step that trains its teacher ControlNet."""

from __future__ import annotations

import pytest
import torch

from bench import controlnet_toy as toy
from sana_sprint_core.controlnet import ControlledDiT, SanaControlNet
from sana_sprint_core.dit import SanaSprintDiT
from tests.fixtures.distill import one_thread  # noqa: F401 (fixture)
from trainers.config import PrepareConfig
from trainers.prepare import fm_loss, fm_step
from trainers.steps import Draws

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vae():
    return toy.toy_vae()


def test_rectangles_are_solid_boxes_of_the_stated_sizes():
    masks = toy.rectangles(200, torch.Generator().manual_seed(0))
    rows, cols = masks.any(2), masks.any(1)
    heights, widths = rows.sum(1), cols.sum(1)
    assert bool(((heights >= 2) & (heights <= 5) & (widths >= 2) & (widths <= 5)).all())
    assert torch.equal(masks.sum((1, 2)), heights * widths)  # a full box, no holes
    assert len({tuple(m.flatten().tolist()) for m in masks}) > 100  # positions and sizes vary


def test_outline_is_the_rectangle_border_at_pixel_scale():
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 2:5, 1:4] = True  # rows 2-4, cols 1-3 -> pixels 8..19 x 4..15
    line = toy.outlines(mask)[0, 0]
    assert line.shape == (32, 32) and torch.equal(toy.outlines(mask)[0, 1], line)
    ys, xs = torch.nonzero(line, as_tuple=True)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (8, 19, 4, 15)
    assert line[9:19, 5:15].sum() == 0  # hollow
    assert line.sum() == 2 * 12 + 2 * 10  # a 12 x 12 pixel ring one pixel wide


def test_data_structure_is_read_back_exactly_and_chance_is_low(vae):
    data = toy.make_data(256, 0, vae)
    assert torch.equal(toy.extract(data.latents), data.masks)
    assert toy.iou(toy.extract(data.latents), data.masks) == 1.0
    other = toy.make_data(256, 1, vae)
    assert toy.iou(other.masks, data.masks) < 0.25
    assert 0.8 < data.latents.pow(2).mean().sqrt().item() < 1.3  # unit scale, as the trainer expects


def test_iou_counts_overlap_over_union():
    a = torch.zeros(2, 8, 8, dtype=torch.bool)
    b = torch.zeros(2, 8, 8, dtype=torch.bool)
    a[0, :2, :2] = b[0, :2, :2] = True  # identical: 1
    a[1, :2, :4] = True  # 8 cells
    b[1, :2, 2:6] = True  # 8 cells, 4 shared: 4 / 12
    assert toy.iou(a, b) == pytest.approx((1 + 4 / 12) / 2)


def test_control_latents_follow_the_rectangle(vae):
    data = toy.make_data(64, 0, vae)
    assert data.controls.shape == (64, toy.CHANNELS, toy.SIDE, toy.SIDE)
    assert 0.7 < data.controls.std().item() < 1.4  # the toy DC-AE is scaled to unit latent std
    same = toy.make_data(64, 0, vae)
    assert torch.equal(same.controls, data.controls)
    a, b = data.controls.flatten(1), toy.make_data(64, 1, vae).controls.flatten(1)
    assert (a - b).norm(dim=1).mean() > 0.5 * a.norm(dim=1).mean()  # other rectangles, other controls


def test_flow_step_with_a_control_trains_only_the_controlnet_and_the_control_matters(vae):
    torch.manual_seed(0)
    base = SanaSprintDiT(toy.SANA).eval().requires_grad_(False)
    net = SanaControlNet.from_base(base, toy.CN_BLOCKS, "nvlabs")
    with torch.no_grad():  # non-zero projections, so the control reaches the output
        for proj in (net.input_block, *net.controlnet_blocks):
            proj.weight.normal_(0, 0.05)
    model = ControlledDiT(base, net)
    data = toy.make_data(8, 0, vae)
    texts, null = toy.class_texts()
    idx = torch.arange(8)
    cfg = PrepareConfig(caption_dropout=0.0)
    draws = Draws(torch.Generator().manual_seed(1), "cpu")
    fm_step(model, toy.batch_of(data, idx, texts, null, control=True), cfg, draws, torch.float32)
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in net.parameters() if p.ndim > 1)
    assert all(p.grad is None for p in base.parameters())
    with torch.no_grad():
        losses = [fm_loss(model, toy.batch_of(data, idx, texts, null, control=c), cfg,
                          Draws(torch.Generator().manual_seed(1), "cpu"), torch.float32) for c in (True, False)]
    assert abs(losses[0].item() - losses[1].item()) > 1e-4
