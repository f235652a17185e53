"""The live preview and scribble pad nodes (nodes/live.py) and the stage timing of the generation
nodes (nodes/timing.py), on the ComfyUI stubs and tiny models."""

from __future__ import annotations

import copy
import io
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from sana_sprint_core.constants import (
    COMFY_DIT_NAME, COMFY_TEXT_ENCODER_NAME, COMFY_VAE_NAME, SCRIBBLE_PAD_UPLOAD_SUBFOLDER,
)
from tests.nodes import stubs

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def executing(prompt_id: str, node_id: str):
    """ComfyUI's executing context (comfy_execution.utils.CurrentNodeContext) for a direct call."""
    utils = sys.modules["comfy_execution.utils"]
    token = utils.current_executing_context.set(utils.ExecutionContext(prompt_id, node_id))
    try:
        yield
    finally:
        utils.current_executing_context.reset(token)


def _input(schema, name):
    return next(i for i in schema.inputs if i.id == name)


# --------------------------------------------------------------------------------------------------
# Schemas and the frontend's names


def test_schemas(nodes):
    live = nodes["SanaSprintLivePreview"].define_schema()
    assert live.is_output_node and live.outputs == []
    assert [i.id for i in live.inputs] == ["images"] and live.inputs[0].io_type == "IMAGE"
    pad = nodes["SanaSprintScribblePad"].define_schema()
    assert not pad.is_output_node
    assert _input(pad, "scribble").io_type == "SANA_SCRIBBLE"
    assert _input(pad, "scribble").extra_dict == {"default": ""}
    for side in ("width", "height"):
        inp = _input(pad, side)
        assert (inp.default, inp.min, inp.max, inp.step) == (1024, 64, 4096, 32)
    assert _input(pad, "image").optional and _input(pad, "image").io_type == "IMAGE"
    assert [o.io_type for o in pad.outputs] == ["IMAGE", "MASK"]


def _js_constants() -> dict[str, str]:
    text = (REPO / "web" / "lib" / "constants.js").read_text()
    return dict(re.findall(r'^export const (\w+) = "([^"]*)";$', text, re.M))


def test_frontend_names_match_the_nodes(pack, nodes):
    js = _js_constants()
    assert js["LIVE_NODE"] == nodes["SanaSprintLivePreview"].define_schema().node_id
    assert js["SCRIBBLE_NODE"] == nodes["SanaSprintScribblePad"].define_schema().node_id
    assert js["SCRIBBLE_WIDGET_TYPE"] == _input(nodes["SanaSprintScribblePad"].define_schema(), "scribble").io_type
    assert js["UPLOAD_SUBFOLDER"] == SCRIBBLE_PAD_UPLOAD_SUBFOLDER
    assert js["LATENCY_KEY"] == pack.nodes.live.LATENCY_KEY
    assert js["BACKGROUND_KEY"] == pack.nodes.live.BACKGROUND_KEY


# --------------------------------------------------------------------------------------------------
# Live preview + stage timing


@pytest.fixture(scope="module")
def models(nodes):
    return SimpleNamespace(
        model=nodes["SanaSprintDiTLoader"].execute(COMFY_DIT_NAME, "auto")[0],
        te=nodes["SanaSprintTextEncoderLoader"].execute(COMFY_TEXT_ENCODER_NAME, "auto")[0],
        vae=nodes["SanaSprintVAELoader"].execute(COMFY_VAE_NAME, "auto")[0])


def _generate(nodes, models, prompt_id: str, text: str, encode: bool = True, cond=None):
    """Text encode (node 4, unless cached), sampler (6), decode (7) as one prompt would run them."""
    if encode:
        with executing(prompt_id, "4"):
            cond = nodes["SanaSprintTextEncode"].execute(models.te, text, True)[0]
    latent = nodes["SanaSprintEmptyLatent"].execute(128, 96, 1, "custom")[0]
    with executing(prompt_id, "6"):
        samples = nodes["SanaSprintSampler"].execute(models.model, cond, latent, 3, 1, 4.5, 1.5708, 1.3, 1.0, "")[0]
    with executing(prompt_id, "7"):
        images = nodes["SanaSprintVAEDecode"].execute(samples, models.vae, "off")[0]
    return cond, images


def test_live_preview_shows_the_images_with_each_stage_latency(pack, nodes, models):
    cond, images = _generate(nodes, models, "prompt-a", "a red fox")
    live = nodes["SanaSprintLivePreview"]
    before = images.clone()
    with executing("prompt-a", "9"):
        first = live.execute(images)
        second = live.execute(images)
    assert torch.equal(images, before)  # input untouched
    assert first.args == () and second.args == ()  # an output node with no outputs
    assert len(stubs.STATE.previews) == 2 and all(p is images for p in stubs.STATE.previews)
    for out in (first, second):
        assert out.ui["images"][0]["type"] == "temp" and out.ui["animated"] == (False,)
        (timing,) = out.ui["sana_timing"]
        assert all(timing[s] > 0 for s in ("text_encode", "sampling", "decode"))
        assert timing["total"] == pytest.approx(timing["text_encode"] + timing["sampling"] + timing["decode"])
        (text,) = out.ui["sana_latency"]
        assert re.fullmatch(r"text encode \d+ ms \| sampling \d+ ms \| decode \d+ ms \| model time \d+ ms", text)
    assert first.ui["sana_timing"] == second.ui["sana_timing"]  # the same prompt's record, read twice
    assert stubs.STATE.texts == []  # shown by the extension from the UI payload, not as progress text

    # The next prompt reuses the conditioning (ComfyUI's cache): text encode shows as cached.
    _, images_b = _generate(nodes, models, "prompt-b", "", encode=False, cond=cond)
    with executing("prompt-b", "9"):
        (text_b,) = live.execute(images_b).ui["sana_latency"]
    assert text_b.startswith("text encode cached | sampling ")
    assert pack.nodes.timing.LOG.summary("prompt-a")["text_encode"] is not None  # kept per prompt


def test_live_preview_outside_a_prompt_shows_images_only(nodes):
    images = torch.rand(2, 64, 64, 3)
    out = nodes["SanaSprintLivePreview"].execute(images)
    assert set(out.ui) == {"images", "animated"}
    assert stubs.STATE.previews == [images] and stubs.STATE.texts == []


def test_timed_records_only_finished_work_inside_a_prompt(pack):
    timing = pack.nodes.timing
    with timing.timed("decode"):  # no executing context: nothing to record under
        pass
    with pytest.raises(RuntimeError), executing("prompt-err", "7"), timing.timed("decode"):
        raise RuntimeError("decode failed")
    assert "prompt-err" not in timing.LOG
    with executing("prompt-ok", "7"), timing.timed("decode"):
        pass
    assert timing.LOG.summary("prompt-ok")["decode"] >= 0
    with executing("prompt-ok", "7"):
        assert timing.current_summary() == timing.LOG.summary("prompt-ok")
    assert timing.current_summary() is None


# --------------------------------------------------------------------------------------------------
# Scribble pad


def _input_dir(pack) -> Path:
    return Path(pack.nodes.live.folder_paths.get_input_directory())


def _write_scribble(pack, name: str, grey: np.ndarray) -> str:
    path = _input_dir(pack) / SCRIBBLE_PAD_UPLOAD_SUBFOLDER / name
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    return f"{SCRIBBLE_PAD_UPLOAD_SUBFOLDER}/{name}"


def test_empty_pad_gives_black_image_and_empty_mask(nodes):
    pad = nodes["SanaSprintScribblePad"]
    image, mask = pad.execute("", 128, 64).args
    assert image.shape == (1, 64, 128, 3) and mask.shape == (1, 64, 128)
    assert not image.any() and not mask.any()
    assert pad.fingerprint_inputs(scribble="", width=128, height=64, image=None) == ""
    assert pad.validate_inputs("") is True and pad.validate_inputs(None) is True


def test_uploaded_scribble_becomes_image_and_mask_twice_the_same(pack, nodes):
    grey = np.zeros((64, 96), dtype=np.uint8)
    grey[10:20, 5:90] = 255
    name = _write_scribble(pack, "strokes.png", grey)
    pad = nodes["SanaSprintScribblePad"]
    assert pad.validate_inputs(name) is True
    first, second = pad.execute(name, 96, 64), pad.execute(name, 96, 64)
    for a, b in zip(first.args, second.args):
        assert torch.equal(a, b)
    image, mask = first.args
    expected = torch.from_numpy(grey.astype(np.float32) / 255)
    assert torch.equal(mask[0], expected) and torch.equal(image[0, ..., 1], expected)
    assert first.ui is None  # no background picture connected


def test_fingerprint_changes_exactly_when_the_file_changes(pack, nodes):
    pad = nodes["SanaSprintScribblePad"]
    grey = np.zeros((64, 64), dtype=np.uint8)
    name = _write_scribble(pack, "edit.png", grey)
    # ComfyUI calls it with every input as a keyword, linked ones as None
    fp = pad.fingerprint_inputs(scribble=name, width=64, height=64, image=None)
    assert pad.fingerprint_inputs(scribble=name, width=64, height=64, image=None) == fp
    grey[30:34, :] = 255
    _write_scribble(pack, "edit.png", grey)  # same name, new strokes
    changed = pad.fingerprint_inputs(scribble=name, width=64, height=64, image=None)
    assert changed != fp
    assert pad.fingerprint_inputs(scribble=f"{SCRIBBLE_PAD_UPLOAD_SUBFOLDER}/gone.png", width=64, height=64,
                                  image=None) == f"missing:{SCRIBBLE_PAD_UPLOAD_SUBFOLDER}/gone.png"


def test_background_picture_is_sent_to_the_canvas_not_into_the_output(nodes):
    picture = torch.rand(2, 64, 64, 3)
    before = picture.clone()
    out = nodes["SanaSprintScribblePad"].execute("", 64, 64, image=picture)
    assert not out.args[0].any()  # the output is the scribble only
    (entry,) = out.ui["sana_background"]
    assert entry["type"] == "temp"
    (shown,) = stubs.STATE.previews
    assert torch.equal(shown, picture[:1]) and torch.equal(picture, before)


def test_pad_errors_name_the_file(pack, nodes):
    pad = nodes["SanaSprintScribblePad"]
    missing = f"{SCRIBBLE_PAD_UPLOAD_SUBFOLDER}/nope.png"
    message = pad.validate_inputs(missing)
    assert isinstance(message, str) and f"scribble file '{missing}' not found" in message
    with pytest.raises(FileNotFoundError, match=r"scribble file .*nope\.png does not exist"):
        pad.execute(missing, 64, 64)
    with pytest.raises(ValueError, match=r"scribble file '\.\./\.\./secret\.png' points outside ComfyUI's input"):
        pad.validate_inputs("../../secret.png")
    bad = _input_dir(pack) / SCRIBBLE_PAD_UPLOAD_SUBFOLDER / "bad.png"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"no png")
    with pytest.raises(ValueError, match=r"is not a readable image \(expected a PNG\)"):
        pad.execute(f"{SCRIBBLE_PAD_UPLOAD_SUBFOLDER}/bad.png", 64, 64)
    with pytest.raises(ValueError, match="scribble pad width must be a multiple of 32"):
        pad.execute("", 100, 64)


def test_pad_output_does_not_alias_between_runs(pack, nodes):
    name = _write_scribble(pack, "alias.png", np.full((64, 64), 255, dtype=np.uint8))
    pad = nodes["SanaSprintScribblePad"]
    image, mask = pad.execute(name, 64, 64).args
    kept = copy.deepcopy((image, mask))
    image.zero_()
    mask.zero_()
    again = pad.execute(name, 64, 64).args
    assert torch.equal(again[0], kept[0]) and torch.equal(again[1], kept[1])
