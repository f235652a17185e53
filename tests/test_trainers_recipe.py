"""The training recipe: lr schedule, adaptive clipping, EMA of the weights, CAME (trainers/optim.py, ema.py)."""

import math

import pytest
import torch

from sana_sprint_core.checkpoint_io import read_state_dict
from tests.fixtures.distill import one_thread  # noqa: F401 (fixture)
from tests.fixtures.distill import trainer_config
from trainers.config import OptimConfig, config_from_dict
from trainers.distill import LORA_FILE, STUDENT_FILE, train
from trainers.ema import Ema, ema_decay
from trainers.logs import clipping_summary, read_rows
from trainers.optim import Clipper, apply_update, lr_factor

pytestmark = pytest.mark.usefixtures("one_thread")


def test_lr_factor_warms_up_then_decays_to_the_floor_at_the_last_update():
    cosine = OptimConfig(warmup_steps=2, lr_schedule="cosine", lr_min_ratio=0.1)
    values = [lr_factor(n, 12, cosine) for n in range(12)]
    assert values[:3] == [0.5, 1.0, 1.0]
    assert values[-1] == pytest.approx(0.1) and all(a >= b for a, b in zip(values[2:], values[3:]))
    assert values[7] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 5 / 9)))
    linear = OptimConfig(lr_schedule="linear", lr_min_ratio=0.0)
    assert [lr_factor(n, 5, linear) for n in range(5)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    assert lr_factor(99, 5, linear) == 0.0  # a run resumed with fewer steps stays at the floor
    assert {lr_factor(n, 5, OptimConfig(lr_schedule="constant")) for n in range(5)} == {1.0}


def test_adaptive_clipper_passes_typical_updates_and_cuts_spikes():
    clip = Clipper(None, 2.0)
    assert clip.threshold() == math.inf  # nothing to compare the first update with
    for norm in (1.0, 1.2, 0.8, 1.0):
        assert norm < clip.threshold()
        clip.observe(norm)
    assert clip.threshold() == pytest.approx(2.0 * 1.0, rel=0.02)  # debiased mean of the norms
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([30.0, 40.0])  # a spike: norm 50
    threshold = clip.threshold()
    norm, update = apply_update(torch.optim.SGD([p], lr=1.0), [p], clip)
    assert norm == pytest.approx(50.0) and update.clipped and update.threshold == threshold
    assert p.detach().norm().item() == pytest.approx(threshold, rel=1e-5)  # the step was cut to the threshold
    # the spike entered the average at the threshold: mean of (1, 1.2, 0.8, 1, 2) x 2, not of (..., 50) x 2
    assert clip.threshold() == pytest.approx(2.0 * (4.0 + threshold) / 5, rel=0.02)
    resumed = Clipper(None, 2.0)
    resumed.load_state(clip.state())
    assert resumed.threshold() == clip.threshold()
    assert Clipper(0.1, 2.0).threshold() == 0.1  # fixed (the NVlabs value)


def test_ema_decay_rule_and_swap():
    assert ema_decay(1, 0.999) == pytest.approx(2 / 11) and ema_decay(90, 0.999) == pytest.approx(91 / 100)
    assert ema_decay(10**6, 0.999) == 0.999
    p = torch.nn.Parameter(torch.zeros(3))
    ema = Ema({"w": p}, 0.999)
    with torch.no_grad():
        p.fill_(1.0)
    ema.update(1)
    torch.testing.assert_close(ema.shadow["w"], torch.full((3,), 9 / 11))
    with ema.swapped():
        torch.testing.assert_close(p.detach(), torch.full((3,), 9 / 11))
    assert torch.equal(p.detach(), torch.ones(3))
    with pytest.raises(ValueError, match="EMA tensors do not match"):
        ema.load_state_dict({"v": torch.zeros(3)})


def test_run_exports_the_ema_and_logs_clipping(workspace):
    """The exported student is the EMA of the checkpointed trained weights, not the last ones; the loss
    log holds the pre-clip norm, the threshold and whether it clipped."""
    cfg = trainer_config(workspace, model={"mode": "full"}, train={"max_steps": 4})
    out = train(config_from_dict(cfg))
    last = out / "checkpoints" / "step_00000004"
    raw, ema = read_state_dict(last / "student.safetensors"), read_state_dict(last / "ema.safetensors")
    student = read_state_dict(out / STUDENT_FILE)
    key = "transformer_blocks.1.ff.conv_point.weight"
    assert not torch.equal(raw[f"model.dit.{key}"], ema[f"model.dit.{key}"])
    torch.testing.assert_close(student[key], ema[f"model.dit.{key}"].to(student[key].dtype), rtol=0, atol=0)
    rows = read_rows(out / "loss.csv")
    g_rows = [r for r in rows if r["phase"] == "G"]
    assert g_rows[0]["clip_at"] == "inf" and g_rows[0]["clipped"] == "0"
    assert all(math.isfinite(float(r["clip_at"])) for r in g_rows[1:]) and {r["clipped"] for r in rows} <= {"0", "1"}
    clipped = sum(int(r["clipped"]) for r in g_rows)
    assert clipping_summary(rows).startswith(f"student updates clipped: {clipped} of 2 (")
    lrs = [float(r["lr"]) for r in g_rows]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-4)  # cosine to lr_min_ratio 0.1


def test_ema_off_exports_the_last_weights_and_a_resume_must_match(workspace):
    cfg = trainer_config(workspace, model={"mode": "full"}, train={"max_steps": 2, "ema": False})
    out = train(config_from_dict(cfg))
    last = out / "checkpoints" / "step_00000002"
    assert not (last / "ema.safetensors").exists()
    raw, student = read_state_dict(last / "student.safetensors"), read_state_dict(out / STUDENT_FILE)
    key = "transformer_blocks.1.ff.conv_point.weight"
    torch.testing.assert_close(student[key], raw[f"model.dit.{key}"].to(student[key].dtype), rtol=0, atol=0)
    on = trainer_config(workspace, model={"mode": "full"}, train={"max_steps": 4, "resume": "latest"})
    with pytest.raises(ValueError, match="no ema.safetensors .* train.ema false"):
        train(config_from_dict(on))


@pytest.mark.parametrize("optimizer", ["came", "adamw"])
def test_resume_is_exact_with_ema_schedule_and_adaptive_clip(workspace, optimizer):
    """4 iterations straight = 2 + resume 2: losses, EMA, clipping thresholds and outputs identical."""
    def config(name, steps, resume=""):
        return config_from_dict(trainer_config(workspace, model={"mode": "lora"}, optim={"optimizer": optimizer},
                                               train={"max_steps": steps, "output_dir": str(workspace / name),
                                                      "resume": resume}))
    train(config("a", 4)), train(config("b", 2)), train(config("b", 4, "latest"))
    rows = {name: read_rows(workspace / name / "loss.csv") for name in "ab"}
    keys = ("loss_scm", "loss_adv", "loss_d", "grad_norm", "clip_at", "clipped", "lr")
    assert [[r[k] for k in keys] for r in rows["a"]] == [[r[k] for k in keys] for r in rows["b"]]
    for name in ("ema.safetensors", "student.safetensors"):
        a = read_state_dict(workspace / "a" / "checkpoints" / "step_00000004" / name)
        b = read_state_dict(workspace / "b" / "checkpoints" / "step_00000004" / name)
        assert all(torch.equal(a[k], b[k]) for k in a)
    a, b = read_state_dict(workspace / "a" / LORA_FILE), read_state_dict(workspace / "b" / LORA_FILE)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_recipe_config_errors(workspace, monkeypatch):
    with pytest.raises(ValueError, match="optim.lr_min_ratio must be in"):
        config_from_dict(trainer_config(workspace, optim={"lr_min_ratio": 1.5}))
    with pytest.raises(ValueError, match="train.ema_max_decay must be in"):
        config_from_dict(trainer_config(workspace, train={"ema_max_decay": 1.0}))
    with pytest.raises(ValueError, match="optim.clip_ratio must be positive"):
        config_from_dict(trainer_config(workspace, optim={"clip_ratio": 0}))
    with pytest.raises(ValueError, match="optim.lr_schedule must be one of"):
        config_from_dict(trainer_config(workspace, optim={"lr_schedule": "step"}))
    import builtins

    real_import = builtins.__import__

    def no_came(name, *args, **kwargs):
        if name == "came_pytorch":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_came)
    with pytest.raises(ValueError, match="'came' but the came-pytorch package is not installed; pip install"):
        train(config_from_dict(trainer_config(workspace, optim={"optimizer": "came"})))
