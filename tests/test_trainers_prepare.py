"""Teacher preparation: QK norm + dense time added to a plain SANA DiT, flow-matching fine-tune."""

import pytest
import torch

from sana_sprint_core.dit_loading import load_dit
from tests.fixtures.distill import one_thread  # noqa: F401 (fixture)
from tests.fixtures.distill import TINY_TEACHER, tiny_batch, tiny_teacher, trainer_config, write_synthetic_cache, write_teacher
from trainers.config import PrepareConfig, config_from_dict
from trainers.distill import train
from trainers.prepare import PREPARED_FILE, fm_step, to_sprint_teacher
from trainers.steps import Draws

pytestmark = pytest.mark.usefixtures("one_thread")
PLAIN = TINY_TEACHER.replace(qk_norm=False, time_input_scale=1000.0)


def test_to_sprint_teacher_adds_unit_norms_and_keeps_weights():
    plain = tiny_teacher(config=PLAIN)
    out = to_sprint_teacher(plain)
    assert out.config.qk_norm and out.config.time_input_scale == 1.0
    new = out.state_dict()
    old = plain.state_dict()
    added = sorted(set(new) - set(old))
    assert len(added) == 4 * PLAIN.num_layers and all(torch.equal(new[k], torch.ones_like(new[k])) for k in added)
    assert all(torch.equal(new[k], old[k]) for k in old)


def test_fm_step_learns_a_fixed_batch():
    dit = to_sprint_teacher(tiny_teacher(config=PLAIN)).requires_grad_(True)
    opt = torch.optim.AdamW(dit.parameters(), lr=3e-3)
    batch, cfg = tiny_batch(2), PrepareConfig(caption_dropout=0.0)
    first = last = None
    for i in range(30):
        loss = fm_step(dit, batch, cfg, Draws(torch.Generator().manual_seed(i % 3), "cpu"), torch.float32)
        opt.step()
        opt.zero_grad()
        first = loss if first is None else first
        last = loss if i >= 27 else last
    assert last < 0.8 * first


def test_plain_teacher_is_prepared_then_distilled(tmp_path):
    write_teacher(tmp_path / "teacher.safetensors", config=PLAIN)
    write_synthetic_cache(tmp_path / "cache")
    with pytest.raises(ValueError, match="plain SANA model"):
        train(config_from_dict(trainer_config(tmp_path)))
    out = train(config_from_dict(trainer_config(tmp_path, prepare={"enabled": True, "steps": 3})))
    prepared = load_dit(out / PREPARED_FILE)
    assert prepared.config.qk_norm and prepared.config.time_input_scale == 1.0
    assert (out / "sprint_lora.safetensors").is_file()
