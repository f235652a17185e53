"""The distillation loop on a tiny teacher and a synthetic cache: LoRA and full runs, resume, outputs."""

import json

import pytest
import torch
from safetensors import safe_open

from sana_sprint_core.checkpoint_io import read_state_dict, read_state_dict_with_info
from sana_sprint_core.dit_loading import load_dit
from tests.fixtures.distill import one_thread  # noqa: F401 (fixture)
from tests.fixtures.distill import trainer_config
from trainers.config import config_from_dict
from trainers.distill import LORA_FILE, STUDENT_FILE, main, train
from trainers.logs import read_rows

pytestmark = pytest.mark.usefixtures("one_thread")


def losses_of(out):
    return [(r["phase"], r["loss_scm"], r["loss_adv"], r["loss_d"]) for r in read_rows(out / "loss.csv")]


def test_lora_run_two_steps(workspace):
    out = train(config_from_dict(trainer_config(workspace)))
    rows = read_rows(out / "loss.csv")
    assert [r["phase"] for r in rows] == ["G", "D"]
    for key in ("loss_scm", "loss_adv"):
        assert torch.isfinite(torch.tensor(float(rows[0][key])))
    assert torch.isfinite(torch.tensor(float(rows[1]["loss_d"])))
    teacher = read_state_dict(workspace / "teacher.safetensors")
    student = load_dit(out / STUDENT_FILE)  # merged student, config from the metadata
    assert student.config.guidance_embeds and not student.config.time_input_scale != 1.0
    with safe_open(str(out / LORA_FILE), framework="pt") as f:
        keys, meta = set(f.keys()), f.metadata()
        lora_b = f.get_tensor("diffusion_model.transformer_blocks.0.attn1.to_q.lora_up.weight")
    assert "diffusion_model.transformer_blocks.2.attn2.to_out.0.lora_down.weight" in keys
    assert "diffusion_model.transformer_blocks.0.attn1.to_q.alpha" in keys
    assert "diffusion_model.time_embed.guidance_embedder.linear_1.diff" in keys
    assert lora_b.abs().max() > 0  # adapters were trained
    assert meta["sana_sprint.lora_rank"] == "4" and meta["sana_sprint.steps"] == "2"
    assert len(meta["sana_sprint.base_model_sha256"]) == 64
    assert json.loads(meta["sana_sprint.train_config"])["model"]["mode"] == "lora"
    # base weights unchanged: every weight not touched by an adapter equals the teacher's; adapted
    # ones differ from it by exactly the exported low-rank product
    state = student.state_dict()
    unchanged = [k for k in teacher if not any(f".{t}." in k for t in ("to_q", "to_k", "to_v", "to_out"))]
    for key in unchanged:
        torch.testing.assert_close(state[key], teacher[key], rtol=0, atol=0)
    with safe_open(str(out / LORA_FILE), framework="pt") as f:
        p = "diffusion_model.transformer_blocks.0.attn1.to_q"
        up, down, alpha = f.get_tensor(f"{p}.lora_up.weight"), f.get_tensor(f"{p}.lora_down.weight"), f.get_tensor(f"{p}.alpha")
    want = teacher["transformer_blocks.0.attn1.to_q.weight"] + alpha / down.shape[0] * up @ down
    torch.testing.assert_close(state["transformer_blocks.0.attn1.to_q.weight"], want)
    assert (out / "loss.png").is_file() and (out / "checkpoints" / "latest.json").is_file()


def test_full_run_two_steps(workspace):
    cfg = trainer_config(workspace, model={"mode": "full"}, optim={"optimizer": "adafactor"},
                         train={"export_dtype": "bf16"})
    out = train(config_from_dict(cfg))
    assert all(torch.isfinite(torch.tensor(float(v))) for r in losses_of(out) for v in r[1:] if v)
    assert not (out / LORA_FILE).exists()
    student = load_dit(out / STUDENT_FILE)
    assert student.dtype == torch.bfloat16
    teacher = read_state_dict(workspace / "teacher.safetensors")
    moved = student.state_dict()["transformer_blocks.1.ff.conv_point.weight"].float()
    assert (moved - teacher["transformer_blocks.1.ff.conv_point.weight"]).abs().max() > 1e-4


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_resume_continues_exactly(workspace, mode):
    straight = trainer_config(workspace, model={"mode": mode}, train={"max_steps": 4, "output_dir": str(workspace / "a")})
    first = trainer_config(workspace, model={"mode": mode}, train={"max_steps": 2, "output_dir": str(workspace / "b")})
    train(config_from_dict(straight))
    train(config_from_dict(first))
    second = trainer_config(workspace, model={"mode": mode},
                            train={"max_steps": 4, "output_dir": str(workspace / "b"), "resume": "latest"})
    train(config_from_dict(second))
    assert len(losses_of(workspace / "a")) == 4
    assert losses_of(workspace / "b") == losses_of(workspace / "a")
    a = read_state_dict(workspace / "a" / STUDENT_FILE)
    b = read_state_dict(workspace / "b" / STUDENT_FILE)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_dry_run_and_errors(workspace, tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(trainer_config(workspace)))
    assert main(["--config", str(path), "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["optim"]["lr"] == 1e-3
    with pytest.raises(FileNotFoundError, match="resume is 'latest' but .* does not exist"):
        train(config_from_dict(trainer_config(workspace, train={"resume": "latest", "output_dir": str(tmp_path / "new")})))
    with pytest.raises(ValueError, match="outside the teacher's 3 blocks"):
        train(config_from_dict(trainer_config(workspace, distill={"head_blocks": [2, 8]})))
    with pytest.raises(ValueError, match="model.teacher is empty"):
        train(config_from_dict(trainer_config(workspace, model={"teacher": ""})))


def test_g_and_d_iterations_update_only_their_own_networks(workspace):
    """A G iteration moves the student and leaves the heads (weights and spectral-norm buffers) as they
    were; a D iteration moves the heads and leaves the student."""
    from trainers.distill import iteration, make_accelerator, setup

    cfg = config_from_dict(trainer_config(workspace, model={"mode": "full"}))
    run = setup(cfg, make_accelerator(cfg), cfg.model.teacher, "")
    student, disc = run.nets.student_core, run.nets.disc_core

    def snapshot():
        return ({k: v.detach().clone() for k, v in student.state_dict().items()},
                {k: v.detach().clone() for k, v in disc.state_dict().items()})

    def changed(a, b):
        return {k for k in a if not torch.equal(a[k], b[k])}

    s0, d0 = snapshot()
    assert iteration(run, 0)["phase"] == "G"
    s1, d1 = snapshot()
    assert changed(s0, s1) and not changed(d0, d1)
    assert iteration(run, 1)["phase"] == "D"
    s2, d2 = snapshot()
    assert not changed(s1, s2) and changed(d1, d2)
    assert any(k.endswith("original") for k in changed(d1, d2))  # a trained weight, not only a buffer


def test_lora_run_also_writes_the_diffusers_form(workspace):
    """train.export_diffusers_lora: sprint_lora_diffusers.safetensors (PEFT keys) beside the ComfyUI file;
    both, merged into the teacher with a zero guidance embedder, give the exported merged student."""
    from sana_sprint_core import lora_formats
    from trainers.distill import DIFFUSERS_LORA_FILE
    from trainers.export import lora_base_dit

    out = train(config_from_dict(trainer_config(workspace, train={"export_diffusers_lora": True})))
    student = load_dit(out / STUDENT_FILE).state_dict()
    base = lora_base_dit(load_dit(workspace / "teacher.safetensors")).state_dict()
    for name in (LORA_FILE, DIFFUSERS_LORA_FILE):
        tensors, info = read_state_dict_with_info(out / name)
        lora = lora_formats.read_lora(tensors, base.keys(), info.metadata)
        merged = dict(base)
        lora_formats.merge_into(merged, lora, 1.0)
        for key, value in student.items():
            torch.testing.assert_close(merged[key], value, rtol=1e-5, atol=1e-6, msg=f"{name}: {key}")
    assert lora.format == "peft"
