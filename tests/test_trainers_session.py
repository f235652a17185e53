"""In-process training API (trainers/session.py) and the helpers the ComfyUI nodes use from trainers/."""

import json

import pytest
import torch
from PIL import Image

from sana_sprint_core.checkpoint_io import read_state_dict_with_info
from sana_sprint_core.dit_loading import load_dit
from tests.fixtures.distill import one_thread  # noqa: F401 (fixture)
from tests.fixtures.distill import tiny_teacher, trainer_config
from trainers.config import config_from_dict
from trainers.data import bucket_counts, scan_folder
from trainers.discriminator import fit_head_blocks
from trainers.distill import LORA_FILE, train
from trainers.export import LoraFile, layer_classes, lora_base_dit, state_dict_sha256
from trainers.logs import draw_losses, read_rows
from trainers.precompute import CachedDataset, encode_captions, write_cache
from trainers.session import Hooks, SingleProcess, outcome_lora, outcome_student, train_in_process

pytestmark = pytest.mark.usefixtures("one_thread")
LOSSES = ("phase", "loss_scm", "loss_adv", "loss_d", "grad_norm")


def _cfg(workspace, name, **train):
    return config_from_dict(trainer_config(workspace, train={"output_dir": str(workspace / name), **train}))


def _teacher(workspace):
    return load_dit(workspace / "teacher.safetensors", dtype=torch.float32)


def _losses(rows):
    return [tuple(r[k] for k in LOSSES) for r in rows]


def test_stopped_then_resumed_run_equals_the_cli_run(workspace):
    """Stop after 1 of 4 iterations, resume: same losses and LoRA as the uninterrupted CLI run."""
    train(_cfg(workspace, "cli", max_steps=4))
    cli_rows = read_rows(workspace / "cli" / "loss.csv")
    first = train_in_process(_cfg(workspace, "node", max_steps=4, save_every=0), _teacher(workspace),
                             Hooks(should_stop=lambda: True))
    assert first.stopped and first.done == 1 and len(first.rows) == 1
    latest = json.loads((workspace / "node" / "checkpoints" / "latest.json").read_text())
    assert latest == {"checkpoint": "step_00000001", "step": 1}
    second = train_in_process(_cfg(workspace, "node", max_steps=4, save_every=0, resume="latest"),
                              _teacher(workspace), Hooks(should_stop=lambda: False))
    assert (second.start, second.done, second.stopped) == (1, 4, False)
    assert _losses(second.rows) == _losses(cli_rows)
    assert [r["step"] for r in read_rows(workspace / "node" / "loss.csv")] == ["0", "1", "2", "3"]
    lora = outcome_lora(second, "teacher.safetensors")
    cli, _ = read_state_dict_with_info(workspace / "cli" / LORA_FILE)
    assert set(lora.tensors) == set(cli)
    for key, value in cli.items():  # both fp32 (trainer_config exports fp32)
        torch.testing.assert_close(lora.tensors[key], value, rtol=0, atol=0)
    assert lora.metadata["sana_sprint.steps"] == "4" and lora.metadata["sana_sprint.lora_rank"] == "4"
    assert lora.metadata["sana_sprint.base_model_sha256"] == state_dict_sha256(_teacher(workspace))


def test_hooks_previews_and_an_untouched_teacher(workspace):
    teacher = _teacher(workspace)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    flags = [p.requires_grad for p in teacher.parameters()]
    steps, previews = [], []
    hooks = Hooks(on_step=lambda d, t, row: steps.append((d, t, row["phase"])),
                  on_preview=lambda d, x: previews.append((d, x)), preview_every=1)
    outcome = train_in_process(_cfg(workspace, "run", max_steps=3), teacher, hooks)
    assert steps == [(1, 3, "G"), (2, 3, "D"), (3, 3, "G")]
    assert [d for d, _ in previews] == [1, 2, 3]
    (_, after_g), (_, after_d), (_, after_g2) = previews
    assert after_g.shape == (1, 4, 4, 4) and torch.isfinite(after_g).all()  # first cache item: 4x4 latent
    assert torch.equal(after_g, after_d)  # a D step leaves the student alone; same noise each preview
    assert not torch.equal(after_d, after_g2)  # a G step moves it
    plain = train_in_process(_cfg(workspace, "plain", max_steps=3), teacher, Hooks())
    assert _losses(plain.rows) == _losses(outcome.rows)  # previews do not change training
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert [p.requires_grad for p in teacher.parameters()] == flags
    assert teacher.gradient_checkpointing is False
    assert not any(m._forward_hooks for m in teacher.modules())


def test_full_mode_student_keeps_the_teacher_layers_and_dtype(workspace):
    teacher = tiny_teacher(dtype=torch.bfloat16)
    cfg = config_from_dict(trainer_config(workspace, model={"mode": "full", "weights_dtype": "bf16"},
                                          train={"output_dir": str(workspace / "full"), "max_steps": 2,
                                                 "mixed_precision": "bf16"}))
    outcome = train_in_process(cfg, teacher)
    student = outcome_student(outcome, teacher, "cpu")
    assert student.dtype == torch.bfloat16 and student.config.guidance_embeds
    assert type(student.proj_out) is type(teacher.proj_out)
    moved = student.state_dict()["transformer_blocks.1.ff.conv_point.weight"].float()
    assert (moved - teacher.state_dict()["transformer_blocks.1.ff.conv_point.weight"].float()).abs().max() > 0


def test_run_folder_is_never_started_over_and_resumes_only_its_teacher(workspace):
    train_in_process(_cfg(workspace, "run", max_steps=2), _teacher(workspace))
    with pytest.raises(FileExistsError, match=r"already holds a run \(checkpoints, loss.csv\); nothing was changed. "
                                              r"Continue it with resume on, or choose another output name"):
        train_in_process(_cfg(workspace, "run", max_steps=4), _teacher(workspace))
    other = tiny_teacher(seed=5)
    with pytest.raises(ValueError, match="was trained from another teacher"):
        train_in_process(_cfg(workspace, "run", max_steps=4, resume="latest"), other)
    with pytest.raises(FileNotFoundError, match="resume is 'latest' but"):
        train_in_process(_cfg(workspace, "new", max_steps=4, resume="latest"), _teacher(workspace))
    with pytest.raises(ValueError, match="max_steps is 1 but the run in .* is already at step 2; set at least 2"):
        train_in_process(_cfg(workspace, "run", max_steps=1, resume="latest"), _teacher(workspace))
    with pytest.raises(ValueError, match="must be '' or 'latest' in-process"):
        train_in_process(_cfg(workspace, "run", resume=str(workspace / "run")), _teacher(workspace))


def test_single_process_refuses_fp16_and_autocasts_bf16():
    with pytest.raises(ValueError, match="fp16 needs a gradient scaler"):
        SingleProcess("cpu", "fp16")
    x = torch.ones(2, 2)
    with SingleProcess("cpu", "bf16").autocast():
        assert (x @ x).dtype == torch.bfloat16
    with SingleProcess("cpu", "no").autocast():
        assert (x @ x).dtype == torch.float32


def test_fit_head_blocks():
    assert fit_head_blocks(20) == fit_head_blocks(28) == [2, 8, 14, 19]
    assert fit_head_blocks(3) == [0, 1, 2] and fit_head_blocks(2) == [0, 1] and fit_head_blocks(10) == [1, 4, 7, 9]


# --------------------------------------------------------------------------------------------------
# Dataset scan report, cache from callables, LoRA base, files


def test_scan_folder_reports_skipped_files_and_buckets(tmp_path):
    Image.new("RGB", (64, 64), (9, 9, 9)).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("square")
    Image.new("RGB", (128, 32), (9, 9, 9)).save(tmp_path / "b.png")
    (tmp_path / "b.txt").write_text("wide")
    Image.new("RGB", (8, 8)).save(tmp_path / "c.png")
    (tmp_path / "d.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (tmp_path / "d.txt").write_text("broken")
    scan = scan_folder(tmp_path)
    assert [i.name for i in scan.items] == ["a.png", "b.png"]
    assert scan.missing_caption == ["c.png"] and scan.unreadable[0].startswith("d.jpg (")
    assert bucket_counts(scan.items, 64, True) == {(32, 128): 1, (64, 64): 1}
    assert bucket_counts(scan.items, 64, False) == {(64, 64): 2}


def test_cache_from_callables_reads_back(tmp_path):
    for name, color in (("a", 10), ("b", 200)):
        Image.new("RGB", (64, 64), (color, 0, 0)).save(tmp_path / f"{name}.png")
        (tmp_path / f"{name}.txt").write_text(f"caption {name}")
    items = scan_folder(tmp_path).items
    seen, progress = [], []

    def encode_text(text):
        texts = [text] if isinstance(text, str) else text
        seen.extend(texts)
        return torch.full((len(texts), 3, 5), float(len(texts[0]))), torch.ones(len(texts), 3, dtype=torch.int64)

    captions = encode_captions(items, encode_text, ["preview"], progress.append)
    assert seen == ["", "preview", "caption a", "caption b"] and progress == [1, 2]
    write_cache(tmp_path / "cache", {"k": 1}, items, captions, lambda img: img[:, :, ::16, ::16] * 2, 64, True,
                progress.append)
    data = CachedDataset(tmp_path / "cache")
    latent, text, mask = data.get(1)
    assert latent.shape == (3, 4, 4) and torch.allclose(latent[0], torch.full((4, 4), 2 * 200 / 255))
    assert torch.equal(text, torch.full((3, 5), 9.0)) and data.null_text[0, 0] == 0
    assert data.validation_prompts()[0] == ["preview"] and progress == [1, 2, 1, 2]


def test_lora_base_dit_adds_a_zero_embedder_over_shared_weights():
    teacher = tiny_teacher()
    base = lora_base_dit(teacher)
    assert base.config.guidance_embeds and not teacher.config.guidance_embeds
    assert base.transformer_blocks[0].attn1.to_q.weight.data_ptr() == teacher.transformer_blocks[0].attn1.to_q.weight.data_ptr()
    assert all(float(p.detach().abs().max()) == 0 for p in base.time_embed.guidance_embedder.parameters())
    assert vars(layer_classes(base)) == vars(layer_classes(teacher))
    x, tau = torch.randn(1, 4, 4, 4), torch.tensor([0.7])
    text, mask = torch.randn(1, 6, 48), torch.ones(1, 6, dtype=torch.int64)
    with torch.no_grad():
        torch.testing.assert_close(base(x, tau, text, mask, torch.tensor([4.5])), teacher(x, tau, text, mask),
                                   rtol=0, atol=0)
    with pytest.raises(ValueError, match="already has a guidance"):
        lora_base_dit(base)


def test_lora_file_save_casts_weights_not_alphas(tmp_path):
    lora = LoraFile({"m.lora_up.weight": torch.randn(3, 2), "m.alpha": torch.tensor(2.0)}, {"sana_sprint.steps": "3"})
    tensors, info = read_state_dict_with_info(lora.save(tmp_path / "l.safetensors", torch.bfloat16))
    assert tensors["m.lora_up.weight"].dtype == torch.bfloat16 and tensors["m.alpha"].dtype == torch.float32
    assert info.metadata["sana_sprint.steps"] == "3"


def test_state_dict_sha256_sees_every_byte():
    teacher = tiny_teacher()
    digest = state_dict_sha256(teacher)
    assert digest == state_dict_sha256(tiny_teacher()) and len(digest) == 64
    with torch.no_grad():
        teacher.caption_norm.weight[3] += 1e-3
    assert state_dict_sha256(teacher) != digest
    assert state_dict_sha256(tiny_teacher(dtype=torch.bfloat16)) != digest


def test_draw_losses_has_a_panel_per_loss():
    rows = [{"step": i, "loss_scm": 1.0 / (i + 1), "loss_d": 0.5} for i in range(5)]
    assert draw_losses(rows, (300, 200)).size == (300, 200)  # two panels of 100 px
    assert draw_losses([{"step": 0, "loss_scm": 2.0}], (300, 200)).size == (300, 100)
