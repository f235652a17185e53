"""Image folder scan, buckets, precompute with tiny Gemma-2 / DC-AE, then a run with validation images."""

import shutil

import pytest
import torch
from PIL import Image

from sana_sprint_core.constants import DCAE_SCALE
from tests.fixtures.dcae import TINY, diffusers_dcae, write_diffusers_folder
from tests.fixtures.distill import one_thread  # noqa: F401 (fixture)
from tests.fixtures.distill import TINY_TEACHER, trainer_config, write_teacher
from tests.fixtures.text import tiny_gemma2, train_bpe_tokenizer
from trainers.config import config_from_dict
from trainers.data import load_image, make_buckets, nearest_bucket, scan_dataset
from trainers.distill import train
from trainers.precompute import CachedDataset, cache_is_current, precompute

pytestmark = pytest.mark.usefixtures("one_thread")


def write_image(path, size, color):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


@pytest.fixture()
def images(tmp_path):
    root = tmp_path / "images"
    write_image(root / "10_cat" / "a.png", (64, 64), (200, 30, 30))
    (root / "10_cat" / "a.txt").write_text("a red cat\n")
    write_image(root / "b.jpg", (128, 48), (20, 200, 90))
    (root / "b.txt").write_text("a wide green field")
    return root


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    import transformers

    tok_dir = train_bpe_tokenizer(tmp_path_factory.mktemp("tok"))
    gemma = tmp_path_factory.mktemp("te") / "gemma"
    shutil.copytree(tok_dir, gemma)
    tiny_gemma2(len(transformers.AutoTokenizer.from_pretrained(str(tok_dir)))).save_pretrained(str(gemma))
    vae_model = diffusers_dcae(TINY)
    vae = write_diffusers_folder(vae_model, tmp_path_factory.mktemp("vae") / "dcae")
    return gemma, vae, vae_model


def test_scan_repeats_captions_and_errors(images):
    items = {i.name: i for i in scan_dataset(images)}
    assert items["10_cat/a.png"].repeats == 10 and items["10_cat/a.png"].caption == "a red cat"
    assert items["b.jpg"].repeats == 1
    (images / "c.png").write_bytes(b"not an image")
    (images / "c.txt").write_text("broken")
    write_image(images / "d.png", (32, 32), (0, 0, 0))
    with pytest.raises(ValueError, match=r"1 image\(s\) without a .txt caption: d.png; 1 unreadable image\(s\): c.png"):
        scan_dataset(images)
    with pytest.raises(FileNotFoundError, match="is not a folder of images"):
        scan_dataset(images / "nope")


def test_buckets():
    buckets = make_buckets(1024)
    assert (1024, 1024) in buckets and all(h % 32 == 0 and w % 32 == 0 and h * w <= 1024**2 for h, w in buckets)
    h, w = nearest_bucket(768, 1536, buckets)
    assert abs(h / w - 0.5) < 0.03 and h * w > 0.95 * 1024**2
    img = load_image_from_color((300, 100))
    assert img.shape == (3, 64, 128) and img.min() >= 0 and img.max() <= 1


def load_image_from_color(size, tmp=None):
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "x.png"
    Image.new("RGB", size, (255, 0, 0)).save(path)
    return load_image(path, (64, 128))


def test_precompute_then_train_with_validation_images(tmp_path, images, encoders):
    gemma, vae, vae_model = encoders
    teacher_cfg = TINY_TEACHER.replace(caption_channels=64)
    write_teacher(tmp_path / "teacher.safetensors", config=teacher_cfg)
    cfg = config_from_dict(trainer_config(
        tmp_path, data={"image_dir": str(images), "cache_dir": str(tmp_path / "cache"), "resolution": 64,
                        "text_encoder": str(gemma), "vae": str(vae), "max_tokens": 8},
        train={"batch_size": 1, "validate_every": 2, "validation_prompts": ["a red cat"], "validation_steps": [1, 2],
               "validation_size": [32, 32], "validation_guidance": 4.5}))
    out = train(cfg)
    assert cache_is_current(cfg)
    data = CachedDataset(tmp_path / "cache")
    assert len(data) == 11  # 10 repeats + 1
    sizes = sorted({e.size for e in data.entries})
    assert sizes == [(8, 32), (16, 16)]  # buckets 32x128 and 64x64 px, in latent pixels of the f4 tiny DC-AE
    cat = next(i for i, e in enumerate(data.entries) if e.size == (16, 16))
    latent, text, mask = data.get(cat)
    assert text.shape == (8, 64) and mask.shape == (8,) and data.null_text.shape == (8, 64)
    with torch.no_grad():
        ref = vae_model.encode(load_image(images / "10_cat" / "a.png", (64, 64))[None] * 2 - 1).latent * DCAE_SCALE
    torch.testing.assert_close(latent, ref[0], rtol=1e-4, atol=1e-4)
    pngs = sorted(p.name for p in (out / "validation").iterdir())
    assert pngs == ["step_00000002_p0_1step.png", "step_00000002_p0_2step.png"]
    assert Image.open(out / "validation" / pngs[0]).size == (32, 32)


def test_precompute_needs_encoders(tmp_path, images):
    cfg = config_from_dict(trainer_config(tmp_path, data={"image_dir": str(images), "cache_dir": str(tmp_path / "c")}))
    with pytest.raises(ValueError, match="data.text_encoder is empty"):
        precompute(cfg)


def test_personalize_from_images_with_prior_prompts(tmp_path, images, encoders):
    """The command-line route from an image folder: the prior prompts are encoded with data.text_encoder as
    the captions are, the base teacher draws their latents at the first bucket's size, stage 1 trains on
    them, stage 2 writes the Sprint LoRA and validation images at 1 and 2 steps."""
    from sana_sprint_core.checkpoint_io import read_state_dict
    from sana_sprint_core.dit_loading import save_dit
    from sana_sprint_core.text_encoder import encode_prompt, load_text_encoder
    from tests.fixtures.distill import tiny_teacher
    from trainers.distill import LORA_FILE
    from trainers.logs import read_rows
    from trainers.student import with_guidance_embedder

    gemma, vae, _ = encoders
    teacher_cfg = TINY_TEACHER.replace(caption_channels=64)
    write_teacher(tmp_path / "teacher.safetensors", config=teacher_cfg)
    sprint = with_guidance_embedder(tiny_teacher(4, config=teacher_cfg), torch.float32, copy=True)
    save_dit(sprint, tmp_path / "sprint.safetensors")
    cfg = config_from_dict(trainer_config(
        tmp_path, data={"image_dir": str(images), "cache_dir": str(tmp_path / "cache"), "resolution": 64,
                        "text_encoder": str(gemma), "vae": str(vae), "max_tokens": 8},
        personalize={"enabled": True, "sprint": str(tmp_path / "sprint.safetensors"), "teacher_steps": 2,
                     "teacher_rank": 4, "prior_prompts": ["a cat", "a field"], "prior_images": 2,
                     "prior_sample_steps": 4},
        train={"batch_size": 1, "validate_every": 2, "validation_prompts": ["a red cat"], "validation_steps": [1, 2],
               "validation_size": [32, 32]}))
    out = train(cfg)
    prior = read_state_dict(out / "teacher_lora" / "prior.safetensors")
    text, mask = encode_prompt(load_text_encoder(gemma), ["a cat", "a field"], max_tokens=8)  # as precompute: bf16
    torch.testing.assert_close(prior["text"], text.float().repeat_interleave(2, 0))
    assert torch.equal(prior["mask"], mask.repeat_interleave(2, 0))
    first = CachedDataset(tmp_path / "cache").entries[0].size
    assert prior["latents"].shape == (4, teacher_cfg.in_channels, *first)
    assert all(float(r["loss_prior"]) > 0 for r in read_rows(out / "teacher_lora" / "loss.csv"))
    assert (out / LORA_FILE).is_file()
    assert sorted(p.name for p in (out / "validation").iterdir()) == ["step_00000002_p0_1step.png",
                                                                     "step_00000002_p0_2step.png"]
