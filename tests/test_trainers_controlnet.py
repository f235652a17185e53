"""ControlNet modes of the trainer on tiny models: config, HED control maps in the cache, the controlled
student, 2-step distillation (sCM + LADD from a Sana ControlNet teacher) and training runs, outputs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from sana_sprint_core.controlnet import ControlInput, ControlledDiT, ControlNetConfig, SanaControlNet
from sana_sprint_core.controlnet_loading import load_controlnet
from sana_sprint_core.dit_loading import load_dit, save_dit
from sana_sprint_core.hed import HEDNetwork, hed_edges, load_hed, scribble_from_edges, to_control_image
from sana_sprint_core.trigflow_model import TrigFlowModel
from tests.fixtures.controlnet import randomize_, write_nvlabs_controlnet
from tests.fixtures.distill import one_thread  # noqa: F401 (fixture)
from tests.fixtures.distill import TINY_TEACHER, tiny_teacher, trainer_config
from trainers import controlnet as cn
from trainers.config import config_from_dict
from trainers.distill import main
from trainers.logs import read_rows
from trainers.precompute import CacheWriter, CachedDataset
from trainers.session import train_controlnet_in_process

pytestmark = pytest.mark.usefixtures("one_thread")

SANA_BASE = TINY_TEACHER.replace(qk_norm=False, time_input_scale=1000.0)  # as the HED ControlNet's Sana 1.6B
SPRINT = TINY_TEACHER.replace(guidance_embeds=True)
HEADS = {"num_heads": TINY_TEACHER.num_heads, "cross_heads": TINY_TEACHER.cross_heads}


@pytest.fixture()
def workspace(tmp_path):
    """Teacher ControlNet on its Sana base (one NVlabs file), the Sprint backbone, a cache with controls."""
    base = tiny_teacher(seed=1, config=SANA_BASE)
    teacher_cn = randomize_(SanaControlNet(ControlNetConfig(SANA_BASE, 2, "nvlabs")), 2, 0.05)
    write_nvlabs_controlnet(tmp_path / "cn" / "teacher_cn.pth", base, teacher_cn, (2, 4))
    save_dit(tiny_teacher(seed=3, config=SPRINT), tmp_path / "backbone.safetensors")
    write_control_cache(tmp_path / "cache")
    return tmp_path


def write_control_cache(folder, n: int = 4, length: int = 6, seed: int = 5, prompts=()):
    """A precompute-format cache of random latents, text and control latents (4 channels, 4 x 4)."""
    g = torch.Generator().manual_seed(seed)
    writer = CacheWriter(folder, {"synthetic": True})
    for i in range(n):
        mask = torch.ones(length, dtype=torch.int64)
        mask[length - 1 - i % 2:] = 0
        latent = torch.randn(4, 4, 4, generator=g)
        writer.add(f"img{i}.png", latent, torch.randn(length, 48, generator=g), mask, 1,
                   control=torch.randn(4, 4, 4, generator=g))
    null_mask = torch.zeros(length, dtype=torch.int64)
    null_mask[:2] = 1
    embeds = None
    if prompts:
        embeds = torch.randn(len(prompts), length, 48, generator=g), torch.ones(len(prompts), length, dtype=torch.int64)
    writer.finish(torch.randn(length, 48, generator=g), null_mask, list(prompts), embeds)
    return folder


def cn_config(ws, mode="distill", **sections):
    model = {"teacher": "", "teacher_overrides": HEADS}
    control = {"mode": mode, "backbone": str(ws / "backbone.safetensors"),
               "teacher_controlnet": str(ws / "cn" / "teacher_cn.pth") if mode == "distill" else ""}
    base = trainer_config(ws, model=model, controlnet=control)
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return base


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------------
# Config


@pytest.mark.parametrize("change, message", [
    ({"controlnet": {"mode": "sketch"}}, r"controlnet.mode must be one of \('off', 'distill', 'train'\)"),
    ({"controlnet": {"backbone": ""}}, "controlnet.backbone is empty"),
    ({"controlnet": {"teacher_controlnet": ""}}, "controlnet.teacher_controlnet is empty"),
    ({"controlnet": {"thickness_min": 5, "thickness_max": 2}}, "0 <= min <= max"),
    ({"controlnet": {"detect_resolution": 32}}, "controlnet.detect_resolution must be 0"),
    ({"controlnet": {"wiring": "sideways"}}, "controlnet.wiring must be one of"),
    ({"prepare": {"enabled": True}}, "prepare.enabled prepares a DiT teacher"),
])
def test_config_errors(workspace, change, message):
    with pytest.raises(ValueError, match=message):
        config_from_dict(cn_config(workspace, **change))


def test_train_mode_needs_the_teacher_losses_off(workspace):
    with pytest.raises(ValueError, match="controlnet.mode 'train' has no teacher .* set distill.scm and distill.ladd"):
        config_from_dict(cn_config(workspace, mode="train"))
    cfg = config_from_dict(cn_config(workspace, mode="train", distill={"scm": False, "ladd": False}))
    assert cfg.controlnet.mode == "train" and cfg.controlnet.thickness_max == 24


# --------------------------------------------------------------------------------------------------
# Models


def test_fresh_student_from_the_backbone_equals_the_backbone(workspace):
    """init backbone: zero projections, so the controlled student is the Sprint DiT until trained."""
    cfg = config_from_dict(cn_config(workspace, controlnet={"init": "backbone", "num_blocks": 2}))
    pair = cn.build_control_pair(cfg, "cpu")
    net = pair.student.dit.controlnet
    assert not any(p.requires_grad for p in pair.student.dit.dit.parameters())  # the Sprint backbone is frozen
    assert all(p.requires_grad for p in net.parameters()) and net.input_block.weight.abs().max() == 0
    assert net.config.dit.qk_norm and net.config.num_blocks == 2  # copies of the Sprint blocks
    g = torch.Generator().manual_seed(0)
    x, s = torch.randn(2, 4, 4, 4, generator=g), torch.tensor([0.4, 1.2])
    text, mask, w = torch.randn(2, 6, 48, generator=g), torch.ones(2, 6, dtype=torch.int64), torch.tensor([4.5, 4.0])
    control = {"control": ControlInput(torch.randn(2, 4, 4, 4, generator=g), 1.0)}
    with torch.no_grad():
        f, logvar = pair.student(x, s, text, mask, w, **control)
        plain = TrigFlowModel(load_dit(workspace / "backbone.safetensors"))(x, s, text, mask, w)
    torch.testing.assert_close(f, plain, rtol=1e-5, atol=1e-6)
    assert logvar.shape == (2, 1)
    teacher = pair.teacher.dit  # the Sana base from the NVlabs file, steered by the teacher ControlNet
    assert teacher.config.time_input_scale == 1000.0 and not teacher.config.qk_norm
    with torch.no_grad():
        steered = pair.teacher(x, s, text, mask, **control)
        unsteered = pair.teacher(x, s, text, mask)
    assert (steered - unsteered).abs().max() > 1e-3


def test_backbone_must_be_a_sprint_model(workspace):
    save_dit(tiny_teacher(seed=3), workspace / "flow.safetensors")
    cfg = config_from_dict(cn_config(workspace, controlnet={"backbone": str(workspace / "flow.safetensors")}))
    with pytest.raises(ValueError, match="has no guidance \\(CFG\\) embedder, so it is not a distilled"):
        cn.build_control_pair(cfg, "cpu")


def test_denoising_loss_is_zero_at_the_exact_target():
    from trainers.losses import denoising_loss

    g = torch.Generator().manual_seed(1)
    x0, z = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g) * 0.5
    t = torch.tensor([0.3, 1.0, 1.5708])
    f = (torch.cos(t)[:, None, None, None] * z - torch.sin(t)[:, None, None, None] * x0) / 0.5
    assert denoising_loss(f, x0, z, t) == 0
    x_t = torch.cos(t)[:, None, None, None] * x0 + torch.sin(t)[:, None, None, None] * z
    x0_hat = torch.cos(t)[:, None, None, None] * x_t - torch.sin(t)[:, None, None, None] * 0.5 * f
    torch.testing.assert_close(x0_hat, x0)  # the one-step estimate at zero loss is the data
    assert denoising_loss(f + 0.1, x0, z, t) == pytest.approx(0.01, rel=1e-5)


# --------------------------------------------------------------------------------------------------
# Control maps in the cache


def test_precompute_stores_hed_control_latents(tmp_path):
    """Images -> HED scribble (thickness drawn per image) -> control image at the bucket size -> DC-AE."""
    import shutil

    import transformers

    from sana_sprint_core.dcae import encode, load_vae
    from tests.fixtures.dcae import TINY, diffusers_dcae, write_diffusers_folder
    from tests.fixtures.text import tiny_gemma2, train_bpe_tokenizer
    from trainers.precompute import cache_is_current, fingerprint, precompute

    root = tmp_path / "images"
    root.mkdir()
    for name, size in (("a", (64, 64)), ("b", (128, 48))):
        pixels = torch.rand(size[1], size[0], 3, generator=torch.Generator().manual_seed(len(name) + size[0]))
        Image.fromarray((pixels * 255).byte().numpy()).save(root / f"{name}.png")
        (root / f"{name}.txt").write_text(f"picture {name}")
    tok = train_bpe_tokenizer(tmp_path / "tok", vocab_size=300)
    shutil.copytree(tok, tmp_path / "gemma")
    tiny_gemma2(len(transformers.AutoTokenizer.from_pretrained(str(tok)))).save_pretrained(str(tmp_path / "gemma"))
    vae_dir = write_diffusers_folder(diffusers_dcae(TINY), tmp_path / "vae")
    torch.manual_seed(0)
    torch.save(HEDNetwork().state_dict(), tmp_path / "ControlNetHED.pth")
    cfg = config_from_dict(cn_config(
        tmp_path, data={"image_dir": str(root), "cache_dir": str(tmp_path / "cache"), "resolution": 64,
                        "text_encoder": str(tmp_path / "gemma"), "vae": str(vae_dir), "max_tokens": 8},
        controlnet={"hed_model": str(tmp_path / "ControlNetHED.pth"), "detect_resolution": 64,
                    "thickness_min": 0, "thickness_max": 6}))
    precompute(cfg)
    assert cache_is_current(cfg) and fingerprint(cfg)["controlnet"]["thickness"] == [0, 6]
    data = CachedDataset(tmp_path / "cache")
    assert data.has_control and len(data) == 2
    vae, net = load_vae(vae_dir), load_hed(tmp_path / "ControlNetHED.pth")
    gen = torch.Generator().manual_seed(cfg.train.seed)  # the thickness draws, in item order
    from trainers.data import bucket_for, load_image, scan_dataset

    for i, item in enumerate(scan_dataset(root)):
        image = load_image(item.image, bucket_for(item.image, 64, True))[None]
        thickness = int(torch.randint(0, 7, (1,), generator=gen))
        scribble = scribble_from_edges(hed_edges(net, image, 64), thickness)
        want = encode(vae, to_control_image(scribble, image.shape[-1], image.shape[-2]))[0]
        got = data.get_control(i)
        assert got.shape == data.get(i)[0].shape
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    other = config_from_dict(cn_config(tmp_path, data=cfg.data.__dict__, controlnet={
        "hed_model": str(tmp_path / "ControlNetHED.pth"), "detect_resolution": 64, "thickness_max": 6,
        "thickness_min": 1}))
    assert not cache_is_current(other)  # other control maps: the cache is rebuilt


# --------------------------------------------------------------------------------------------------
# Runs through the CLI


def _run_cli(ws, cfg: dict):
    """`python -m trainers.distill --config <file>` in-process; returns train.output_dir."""
    path = ws / "config.json"
    path.write_text(json.dumps(cfg))
    assert main(["--config", str(path)]) == 0
    return Path(cfg["train"]["output_dir"])


def test_two_step_controlnet_distillation(workspace):
    """sCM + LADD from the Sana ControlNet teacher: a G and a D step with finite losses; only the
    ControlNet (and the logvar head) trained; the output reloads as a ControlNet for the backbone."""
    backbone_sha = _sha(workspace / "backbone.safetensors")
    out = _run_cli(workspace, cn_config(workspace))
    rows = read_rows(out / "loss.csv")
    assert [r["phase"] for r in rows] == ["G", "D"]
    for value in (rows[0]["loss_scm"], rows[0]["loss_adv"], rows[1]["loss_d"]):
        assert torch.isfinite(torch.tensor(float(value)))
    trained = load_controlnet(out / cn.CONTROLNET_FILE)
    teacher = load_controlnet(workspace / "cn" / "teacher_cn.pth")
    assert trained.config == teacher.config  # init "auto" with a teacher: a copy of it, same architecture
    moved = [k for k, v in trained.state_dict().items() if not torch.equal(v, teacher.state_dict()[k].float())]
    assert "input_block.weight" in moved and "controlnet_blocks.1.weight" in moved
    with safe_open(str(out / cn.CONTROLNET_FILE), framework="pt") as f:
        meta = f.metadata()
    assert meta["sana_sprint.kind"] == "controlnet" and meta["sana_sprint.base_model"] == "backbone.safetensors"
    assert meta["sana_sprint.base_model_sha256"] == backbone_sha == _sha(workspace / "backbone.safetensors")
    with safe_open(str(out / "checkpoints" / "step_00000002" / "student.safetensors"), framework="pt") as f:
        saved = list(f.keys())
    assert saved and all(k.startswith(("model.dit.controlnet.", "logvar_linear.")) for k in saved)  # base frozen
    x = cn_sample(load_dit(workspace / "backbone.safetensors"), trained, torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all() and x.abs().max() > 0


def cn_sample(backbone, net, g):
    """One 2-step controlled sample of the tiny 4-channel models (the core sampler is fixed to 32 channels)."""
    from trainers.validation import sample_latents

    model = TrigFlowModel(ControlledDiT(backbone, net))
    control = {"control": ControlInput(torch.randn(1, 4, 4, 4, generator=g), 1.0)}
    return sample_latents(model, torch.randn(1, 4, 4, 4, generator=g), torch.randn(1, 6, 48, generator=g), None,
                          4.5, 2, g, control)


def test_two_step_controlnet_training_from_the_backbone(workspace):
    """mode train: no teacher, the denoising loss; the ControlNet starts at zero projections and moves;
    validation images are sampled with the first cached control, at its size."""
    from tests.fixtures.dcae import TINY, diffusers_dcae, write_diffusers_folder

    write_control_cache(workspace / "cache_v", prompts=["a cat", "a dog"])
    vae = write_diffusers_folder(diffusers_dcae(TINY), workspace / "vae")
    cfg = cn_config(workspace, mode="train", distill={"scm": False, "ladd": False},
                    controlnet={"init": "backbone", "num_blocks": 2, "wiring": "diffusers"},
                    data={"cache_dir": str(workspace / "cache_v"), "vae": str(vae)},
                    train={"validate_every": 2, "validation_steps": [1]})
    out = _run_cli(workspace, cfg)
    pngs = sorted(p.name for p in (out / "validation").iterdir())
    assert pngs == ["step_00000002_p0_1step.png", "step_00000002_p1_1step.png"]
    assert Image.open(out / "validation" / pngs[0]).size == (16, 16)  # 4 x 4 latents of the f4 tiny DC-AE
    rows = read_rows(out / "loss.csv")
    assert [r["phase"] for r in rows] == ["G", "G"]
    assert all(torch.isfinite(torch.tensor(float(r["loss_denoise"]))) for r in rows)
    trained = load_controlnet(out / cn.CONTROLNET_FILE)
    assert (trained.config.num_blocks, trained.config.wiring, trained.config.dit.qk_norm) == (2, "diffusers", True)
    assert trained.controlnet_blocks[1].weight.abs().max() > 0  # left the zero init


def test_controlnet_run_resumes_exactly(workspace):
    """4 iterations straight equal 2, a stop, and 2 more from the checkpoint (G, D, G, D)."""
    straight = _run_cli(workspace, cn_config(workspace, train={"max_steps": 4, "output_dir": str(workspace / "a")}))
    first = cn_config(workspace, train={"max_steps": 2, "output_dir": str(workspace / "b")})
    resumed = _run_cli(workspace, first)
    second = cn_config(workspace, train={"max_steps": 4, "output_dir": str(workspace / "b"), "resume": "latest"})
    assert _run_cli(workspace, second) == resumed
    a = load_controlnet(straight / cn.CONTROLNET_FILE).state_dict()
    b = load_controlnet(resumed / cn.CONTROLNET_FILE).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss_d"] for r in read_rows(straight / "loss.csv")] == [r["loss_d"] for r in read_rows(resumed / "loss.csv")]


def test_in_process_distillation_leaves_the_callers_models_alone(workspace):
    """The node route: loaded backbone and teacher, hooks per step (loss rows, a controlled preview)."""
    from sana_sprint_core.controlnet_loading import load_controlnet_base
    from sana_sprint_core.dit import set_cross_attention
    from trainers.session import Hooks, outcome_metadata

    backbone = load_dit(workspace / "backbone.safetensors")
    set_cross_attention(backbone, "sdpa")
    path = workspace / "cn" / "teacher_cn.pth"
    with torch.inference_mode():  # as a host loads its models (ComfyUI runs nodes in inference mode)
        teacher = ControlledDiT(load_controlnet_base(path, overrides=HEADS), load_controlnet(path))
    assert teacher.controlnet.input_block.weight.is_inference()  # autograd cannot use these as they are
    frozen = {k: v.clone() for k, v in backbone.state_dict().items()}
    seen, previews = [], []
    hooks = Hooks(on_step=lambda done, total, row: seen.append((done, total, row["phase"])),
                  on_preview=lambda done, latents: previews.append(latents), preview_every=2)
    cfg = config_from_dict(cn_config(workspace, train={"output_dir": str(workspace / "inproc")}))
    outcome = train_controlnet_in_process(cfg, backbone, teacher, hooks)
    assert seen == [(1, 2, "G"), (2, 2, "D")] and not outcome.stopped
    assert previews[0].shape == (1, 4, 4, 4) and torch.isfinite(previews[0]).all()
    assert all(torch.equal(v, frozen[k]) for k, v in backbone.state_dict().items())
    assert backbone.transformer_blocks[0].attn2.impl == "sdpa" and not backbone.gradient_checkpointing
    net = cn.outcome_controlnet(outcome)
    assert not torch.equal(net.input_block.weight, teacher.controlnet.input_block.weight.float())
    assert outcome_metadata(outcome, "backbone")["sana_sprint.kind"] == "controlnet"
    with pytest.raises(ValueError, match="controlnet.mode 'distill' needs teacher"):
        train_controlnet_in_process(cfg, backbone, None)
