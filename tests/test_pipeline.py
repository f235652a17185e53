"""End to end on a tiny model set: our generate path against diffusers' SanaSprintPipeline."""

import inspect

import pytest
import torch
from PIL import Image

from sana_sprint_core.__main__ import main
from sana_sprint_core.pipeline import PromptOptions, SprintPipeline
from tests.fixtures.sprint_set import diffusers_pipeline, write_model_set

pytest.importorskip("diffusers")
PROMPT = "a small red cube on a wooden table"
TOKENS = 24


@pytest.fixture(scope="module")
def model_set(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    return models, write_model_set(models)


@pytest.fixture(scope="module")
def pipes(model_set):
    models, paths = model_set
    return SprintPipeline.from_models_dir(models, dtype=torch.float32), diffusers_pipeline(paths)


def diffusers_chi():
    from diffusers import SanaSprintPipeline

    return inspect.signature(SanaSprintPipeline.__call__).parameters["complex_human_instruction"].default


@pytest.mark.parametrize("steps", [1, 2])
def test_latents_and_image_equal_diffusers(pipes, steps):
    ours, ref = pipes
    kw = dict(height=64, width=96, num_inference_steps=steps, guidance_scale=4.5, max_sequence_length=TOKENS,
              intermediate_timesteps=1.3 if steps == 2 else None, use_resolution_binning=False,
              complex_human_instruction=diffusers_chi(), return_dict=False)
    opts = PromptOptions(max_tokens=TOKENS, quote_style="diffusers", lowercase=True)
    want_lat = ref(PROMPT, generator=torch.Generator().manual_seed(3), output_type="latent", **kw)[0]
    want_img = ref(PROMPT, generator=torch.Generator().manual_seed(3), output_type="pt", **kw)[0]
    got_lat = ours.generate_latents(PROMPT, width=96, height=64, steps=steps, seed=3, prompt_options=opts)
    got_img = ours(PROMPT, width=96, height=64, steps=steps, seed=3, prompt_options=opts)
    assert got_lat.shape == (1, 32, 2, 3) and got_img.shape == (1, 3, 64, 96)
    assert (got_lat - want_lat).abs().max().item() <= 1e-4
    assert (got_img - want_img).abs().max().item() <= 1e-4
    assert want_img.std() > 0.01  # a real image, not a constant


def test_cli_writes_png(model_set, tmp_path):
    models, _ = model_set
    out = tmp_path / "img.png"
    code = main(["generate", "--models-dir", str(models), "--prompt", PROMPT, "--width", "96", "--height", "64",
                 "--steps", "1", "--out", str(out), "--device", "cpu", "--dtype", "fp32"])
    assert code == 0
    assert Image.open(out).size == (96, 64)


def test_cli_names_missing_files_and_sources(tmp_path, capsys):
    code = main(["generate", "--models-dir", str(tmp_path), "--prompt", "x", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    for needle in ("diffusion_models", "Sana_Sprint_1.6B_1024px", "Efficient-Large-Model/Sana_Sprint_1.6B_1024px",
                   "text_encoders", "gemma-2-2b-it", "Efficient-Large-Model/gemma-2-2b-it", "vae",
                   "mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers", str(tmp_path.resolve())):
        assert needle in err, needle


def test_only_missing_files_are_named(model_set, tmp_path, capsys):
    models, paths = model_set
    code = main(["generate", "--models-dir", str(tmp_path), "--dit", str(paths["dit"]), "--vae", str(paths["vae"]),
                 "--prompt", "x", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "gemma-2-2b-it" in err and "dc-ae" not in err and "Sana_Sprint" not in err


def test_incompatible_models_are_refused(pipes):
    ours, _ = pipes
    dit = ours.dit
    bad = type(dit)(dit.config.replace(caption_channels=32))
    with pytest.raises(ValueError, match="text encoder width 64 does not fit the DiT.*caption_channels=32"):
        SprintPipeline(bad, ours.text_encoder, ours.vae)


def test_prompt_cache_makes_second_encode_free(pipes):
    ours, _ = pipes
    ours.cache.clear()
    ours.encode(["a", "b"])
    misses = ours.cache.misses
    ours.encode(["b", "a"])
    assert ours.cache.misses == misses and ours.cache.hits >= 2
