"""Low-VRAM offload modes: same images as the plain pipeline, and the moves each mode promises.

This machine has no GPU, so the moves are recorded rather than made: the pipeline computes on the
CPU while a recording mover notes every module sent to the execution device ("cpu") or home (the
stand-in offload device "meta"). One test also runs the real `module.to` mover end to end.
"""

import pytest
import torch
from PIL import Image

from sana_sprint_core import offload
from sana_sprint_core.__main__ import main
from sana_sprint_core.offload import Offloader, streamed_parts
from sana_sprint_core.pipeline import SprintPipeline
from tests.fixtures.sprint_set import write_model_set

PROMPT = "a small red cube on a wooden table"
KW = dict(width=96, height=64, steps=2, seed=3)


@pytest.fixture(scope="module")
def model_set(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    write_model_set(models)
    return models


@pytest.fixture(scope="module")
def plain(model_set):
    pipe = SprintPipeline.from_models_dir(model_set, dtype=torch.float32)
    return pipe, pipe(PROMPT, **KW)


def _recorded(plain_pipe, mode: str, monkeypatch):
    """A pipeline over the same models whose offloader records (name, device type) instead of moving."""
    names = {id(m): n for n, m in [("text", plain_pipe.text_encoder.model), ("dit", plain_pipe.dit),
                                     ("vae", plain_pipe.vae)]}
    names.update({id(m): f"dit.{i}" for i, m in enumerate(streamed_parts(plain_pipe.dit))})
    log = []
    monkeypatch.setattr(offload, "move", lambda m, device: log.append((names.get(id(m), "?"), device.type)))
    pipe = SprintPipeline(plain_pipe.dit, plain_pipe.text_encoder, plain_pipe.vae, offload=mode, device="cpu",
                          offload_device="meta")
    return pipe, log


@pytest.mark.parametrize("mode", ["text_encoder", "sequential"])
def test_offload_modes_give_the_plain_image(plain, mode, monkeypatch):
    pipe, want = plain
    ours, log = _recorded(pipe, mode, monkeypatch)
    try:
        got = ours(PROMPT, **KW)
    finally:
        ours.offloader.remove_hooks()
    assert log and torch.equal(got, want)


def test_text_encoder_mode_never_shares_the_device(plain, monkeypatch):
    pipe, _ = plain
    ours, log = _recorded(pipe, "text_encoder", monkeypatch)
    try:
        assert log == [("text", "meta"), ("dit", "meta"), ("vae", "meta")]  # everything starts home
        log.clear()
        ours(PROMPT, **KW)
        # encode: DiT and DC-AE home first, then Gemma; Gemma home right after; then DiT + DC-AE come
        assert log[:4] == [("dit", "meta"), ("vae", "meta"), ("text", "cpu"), ("text", "meta")]
        assert ("dit", "cpu") in log[4:] and ("vae", "cpu") in log[4:] and ("text", "cpu") not in log[4:]
        log.clear()
        ours(PROMPT, **KW)  # prompt-cache hit: Gemma does not move
        assert all(name != "text" for name, _ in log)
    finally:
        ours.offloader.remove_hooks()


def test_sequential_mode_streams_each_block_per_step(plain, monkeypatch):
    pipe, _ = plain
    ours, log = _recorded(pipe, "sequential", monkeypatch)
    parts = len(streamed_parts(pipe.dit))
    try:
        log.clear()
        ours(PROMPT, **KW)
    finally:
        ours.offloader.remove_hooks()
    dit_moves = [(n, d) for n, d in log if n.startswith("dit.")]
    assert len(dit_moves) == 2 * parts * KW["steps"]  # each part: to the device, then home, every step
    assert all(a[0] == b[0] and (a[1], b[1]) == ("cpu", "meta") for a, b in zip(dit_moves[::2], dit_moves[1::2]))
    assert ("dit", "cpu") not in log  # the DiT as a whole never comes
    vae = [d for n, d in log if n == "vae"]
    assert vae == ["cpu", "meta"]  # the DC-AE visits for the decode only


def test_streamed_parts_hold_every_dit_weight_but_the_final_table(plain):
    dit = plain[0].dit
    streamed = {id(p) for part in streamed_parts(dit) for p in part.parameters()}
    left = [n for n, p in dit.named_parameters() if id(p) not in streamed]
    assert left == ["scale_shift_table"]


def test_real_moves_round_trip_on_cpu(plain):
    pipe, want = plain
    ours = SprintPipeline(pipe.dit, pipe.text_encoder, pipe.vae, offload="sequential", device="cpu")
    try:
        got = ours(PROMPT, **KW)
    finally:
        ours.offloader.remove_hooks()
    assert torch.equal(got, want)
    assert {p.device.type for p in pipe.dit.parameters()} == {"cpu"}


def test_bad_offload_mode_is_named():
    modes = "\\('none', 'text_encoder', 'sequential'\\)"
    with pytest.raises(ValueError, match=f"offload must be one of {modes}, got 'gpu'"):
        Offloader("gpu", "cpu")
    with pytest.raises(ValueError, match="offload must be one of"):
        SprintPipeline.from_files("dit", "te", "vae", offload="all")


def test_cli_offload_and_tiled_decode(model_set, tmp_path):
    out = tmp_path / "img.png"
    code = main(["generate", "--models-dir", str(model_set), "--prompt", PROMPT, "--width", "96", "--height", "64",
                 "--steps", "1", "--out", str(out), "--device", "cpu", "--dtype", "fp32", "--offload", "sequential",
                 "--tiled-decode", "on"])
    assert code == 0 and Image.open(out).size == (96, 64)
