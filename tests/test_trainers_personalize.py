"""Personalisation (trainers/personalize.py): teacher LoRA, then a LoRA on the released Sprint model."""

import json

import pytest
import torch
from safetensors import safe_open

from sana_sprint_core.checkpoint_io import read_state_dict
from sana_sprint_core.dit import set_cross_attention
from sana_sprint_core.dit_loading import load_dit, save_dit
from sana_sprint_core.lora_formats import apply_lora_files
from sana_sprint_core.trigflow_model import TrigFlowModel
from tests.fixtures.distill import one_thread  # noqa: F401 (fixture)
from tests.fixtures.distill import tiny_teacher, trainer_config, write_synthetic_cache, write_teacher
from trainers.config import config_from_dict
from trainers.distill import LORA_FILE, STUDENT_FILE, train
from trainers.export import weights_sha256
from trainers.logs import read_rows
from trainers.modes import PERSONALIZE
from trainers.personalize import PRIOR_FILE, TEACHER_LORA_FOLDER, build_personal_pair, teacher_lora_path
from trainers.session import Hooks, personalize_in_process
from trainers.student import with_guidance_embedder

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_sprint(seed: int = 5):
    """A stand-in for the released Sprint model: the tiny teacher's architecture with a trained-looking
    (non-zero) guidance embedder and weights that differ from the teacher's."""
    dit = with_guidance_embedder(tiny_teacher(seed), torch.float32, copy=True)
    with torch.no_grad():
        for p in dit.time_embed.guidance_embedder.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return dit.eval().requires_grad_(False)


@pytest.fixture()
def workspace(tmp_path):
    write_teacher(tmp_path / "teacher.safetensors")
    save_dit(tiny_sprint(), tmp_path / "sprint.safetensors")
    write_synthetic_cache(tmp_path / "cache")
    return tmp_path


def personal_config(ws, **sections):
    p = {"enabled": True, "sprint": str(ws / "sprint.safetensors"), "teacher_steps": 3, "teacher_rank": 4,
         "teacher_lr": 1e-3, **sections.pop("personalize", {})}
    return trainer_config(ws, personalize=p, **sections)


def test_step_zero_is_exactly_the_released_sprint_model(workspace):
    cfg = config_from_dict(personal_config(workspace, personalize={"teacher_lora": "unused"}))
    sprint = tiny_sprint()
    pair = build_personal_pair(cfg, "cpu", {"teacher": tiny_teacher(), "sprint": tiny_sprint()})
    g = torch.Generator().manual_seed(0)
    x, s = torch.randn(2, 4, 4, 4, generator=g), torch.tensor([0.4, 1.3])
    text, mask = torch.randn(2, 6, 48, generator=g), torch.ones(2, 6, dtype=torch.int64)
    w = torch.tensor([4.5, 4.0])
    got = pair.student.velocity(x, s, text, mask, w)
    set_cross_attention(sprint, "math")  # the student's kernel (the JVP's); adapters add exactly zero
    want = TrigFlowModel(sprint)(x, s, text, mask, w)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    trainable = {n for n, p in pair.student.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.startswith("logvar_linear.") for n in trainable)


def test_cli_run_trains_both_stages_and_the_lora_loads_on_the_sprint_model(workspace):
    out = train(config_from_dict(personal_config(workspace, train={"max_steps": 4})))
    stage1 = out / TEACHER_LORA_FOLDER
    assert [r["phase"] for r in read_rows(stage1 / "loss.csv")] == ["G"] * 3
    assert all(float(r["loss_fm"]) > 0 for r in read_rows(stage1 / "loss.csv"))
    assert [r["phase"] for r in read_rows(out / "loss.csv")] == ["G", "D", "G", "D"]
    with safe_open(str(teacher_lora_path(config_from_dict(personal_config(workspace)))), framework="pt") as f:
        teacher_keys, teacher_meta = set(f.keys()), f.metadata()
    assert teacher_meta["sana_sprint.kind"] == "teacher_lora" and teacher_meta["sana_sprint.lora_rank"] == "4"
    assert teacher_meta["sana_sprint.base_model_sha256"] == weights_sha256(workspace / "teacher.safetensors")
    assert not any(k.endswith((".diff", ".diff_b")) for k in teacher_keys)
    with safe_open(str(out / LORA_FILE), framework="pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert not any(k.endswith((".diff", ".diff_b")) for k in keys)  # adapters only: the Sprint embedder stays
    assert meta["sana_sprint.base_model_sha256"] == weights_sha256(workspace / "sprint.safetensors")
    config = json.loads(meta["sana_sprint.train_config"])
    assert config["personalize"]["teacher_lora"].endswith("teacher_lora.safetensors")
    # the LoRA on the released Sprint model through the core loader = the merged personalised student
    dit = load_dit(workspace / "sprint.safetensors")
    apply_lora_files(dit, [(str(out / LORA_FILE), 1.0)])
    merged = read_state_dict(out / STUDENT_FILE)
    for key, value in dit.state_dict().items():
        torch.testing.assert_close(value, merged[key], rtol=1e-6, atol=1e-6)
    released = load_dit(workspace / "sprint.safetensors").state_dict()
    moved = [k for k in merged if not torch.equal(merged[k], released[k])]
    assert moved and all(".attn" in k for k in moved)


def test_given_teacher_lora_skips_stage_one_and_a_finished_stage_one_is_a_run(workspace):
    first = train(config_from_dict(personal_config(workspace, train={"max_steps": 2})))
    lora = first / TEACHER_LORA_FOLDER / "teacher_lora.safetensors"
    given = personal_config(workspace, personalize={"teacher_lora": str(lora)},
                            train={"max_steps": 2, "output_dir": str(workspace / "given")})
    out = train(config_from_dict(given))
    assert not (out / TEACHER_LORA_FOLDER).exists() and (out / LORA_FILE).is_file()
    stage1_only = workspace / "stage1_only"
    (stage1_only / TEACHER_LORA_FOLDER).mkdir(parents=True)
    with pytest.raises(FileExistsError, match="already holds a run \\(teacher_lora\\)"):
        train(config_from_dict(personal_config(workspace, train={"output_dir": str(stage1_only)})))


def test_prior_preservation_generates_once_and_trains_on_it(workspace):
    g = torch.Generator().manual_seed(3)
    prior = (torch.randn(2, 5, 48, generator=g), torch.ones(2, 5, dtype=torch.int64))  # 5 tokens: padded to 6
    cfg = config_from_dict(personal_config(workspace, personalize={"prior_images": 2, "prior_weight": 0.5},
                                           train={"max_steps": 2}))
    outcome, lora = personalize_in_process(cfg, tiny_teacher(), tiny_sprint(), prior_text=prior)
    stage1 = outcome.out / TEACHER_LORA_FOLDER
    saved = read_state_dict(stage1 / PRIOR_FILE)
    assert saved["latents"].shape == (4, 4, 4, 4) and saved["text"].shape == (4, 6, 48)
    assert torch.equal(saved["mask"][:, 5], torch.zeros(4, dtype=torch.int64))
    assert torch.isfinite(saved["latents"]).all() and saved["latents"].std() > 0.1
    rows = read_rows(stage1 / "loss.csv")
    assert all(float(r["loss_prior"]) > 0 for r in rows) and lora.is_file()
    assert outcome.run.mode is PERSONALIZE and (outcome.out / "checkpoints" / "latest.json").is_file()
    assert type(outcome.run.stream).__name__ == "PriorMix" and outcome.run.stream.calls == 2  # stage 2 mixes it


def test_stop_in_either_stage_then_resume_equals_an_uninterrupted_run(workspace):
    """Stopped after 2 teacher-LoRA updates, resumed, stopped after 1 Sprint iteration, resumed: every
    loss row, the teacher LoRA and the Sprint LoRA equal those of a run that never stopped."""
    def config(name, resume=""):
        return config_from_dict(personal_config(workspace, train={"max_steps": 4, "output_dir": str(workspace / name),
                                                                  "save_every": 0, "resume": resume}))

    straight, _ = personalize_in_process(config("a"), tiny_teacher(), tiny_sprint())
    stops = iter([2, 1])
    stop_at = {"n": next(stops)}

    def stopper():
        state = {"done": 0}

        def on_step(done, total, row):
            state["done"] = done

        return Hooks(on_step=on_step, should_stop=lambda: state["done"] == stop_at["n"])

    outcome, _ = personalize_in_process(config("b"), tiny_teacher(), tiny_sprint(), stopper(), stopper())
    assert outcome.stopped and outcome.run.mode.name == "teacher_lora" and outcome.done == 2
    stop_at["n"] = next(stops)
    outcome, _ = personalize_in_process(config("b", "latest"), tiny_teacher(), tiny_sprint(), stopper(), None)
    assert outcome.stopped and outcome.run.mode is PERSONALIZE and outcome.done == 1
    outcome, _ = personalize_in_process(config("b", "latest"), tiny_teacher(), tiny_sprint())
    assert not outcome.stopped and outcome.done == 4
    for sub in (TEACHER_LORA_FOLDER, "."):
        a, b = (read_rows(workspace / n / sub / "loss.csv") for n in "ab")
        keys = ("phase", "loss_fm", "loss_scm", "loss_adv", "loss_d", "grad_norm", "clip_at", "lr")
        assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]
    a, b = (read_state_dict(workspace / n / TEACHER_LORA_FOLDER / "teacher_lora.safetensors") for n in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
    a = straight.run.nets.student_core.state_dict()
    b = outcome.run.nets.student_core.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("change, message", [
    ({"personalize": {"sprint": ""}}, "personalize.sprint is empty"),
    ({"model": {"mode": "full"}}, "set model.mode 'lora'"),
    ({"personalize": {"teacher_steps": 0}}, "personalize.teacher_steps must be positive"),
    ({"personalize": {"prior_prompts": [""]}}, "prior_prompts must hold non-empty strings"),
    ({"controlnet": {"mode": "distill", "backbone": "x", "teacher_controlnet": "y"}},
     "cannot be combined with controlnet"),
])
def test_config_errors(workspace, change, message):
    with pytest.raises(ValueError, match=message):
        config_from_dict(personal_config(workspace, **change))


def test_bad_models_are_named(workspace):
    plain = config_from_dict(personal_config(workspace, personalize={"sprint": str(workspace / "teacher.safetensors")}))
    with pytest.raises(ValueError, match="has no guidance \\(CFG\\) embedder, so it is not a distilled SANA-Sprint"):
        train(plain)
    with pytest.raises(ValueError, match="data.text_encoder is empty"):
        train(config_from_dict(personal_config(workspace, personalize={"prior_prompts": ["a dog"]},
                                               train={"output_dir": str(workspace / "p")})))


def test_stage_two_mixes_prior_batches_deterministically(workspace):
    """Iterations 2, 3, 6, 7, ... draw the prior set, the others the user's images; the call count is in
    the stream state, so a stream restored from it continues with the same batches."""
    from trainers.batches import BatchStream
    from trainers.personalize import PriorMix
    from trainers.precompute import CachedDataset

    g = torch.Generator().manual_seed(0)
    prior = (torch.randn(3, 4, 4, 4, generator=g) + 100.0, torch.randn(3, 6, 48, generator=g),
             torch.ones(3, 6, dtype=torch.int64))

    def mix():
        return PriorMix(BatchStream(CachedDataset(workspace / "cache"), 2, seed=1), prior, seed=1)

    stream = mix()
    batches = [stream.next("cpu") for _ in range(8)]
    from_prior = [bool(b.latents.mean() > 50) for b in batches]
    assert from_prior == [False, False, True, True, False, False, True, True]
    assert all(b.latents.shape[0] == 2 and b.text.shape == (2, 6, 48) for b in batches)
    resumed = mix()
    resumed.load_state(_first_calls(mix, 5).state())
    for want in batches[5:]:
        got = resumed.next("cpu")
        assert torch.equal(got.latents, want.latents) and torch.equal(got.text, want.text)


def _first_calls(make, n):
    stream = make()
    for _ in range(n):
        stream.next("cpu")
    return stream
