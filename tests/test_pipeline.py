"""End to end on a tiny model set: our generate path against diffusers' SanaSprintPipeline."""

import inspect

import numpy as np
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


def test_cli_stacks_loras_of_two_formats(model_set, tmp_path):
    """generate --lora A.safetensors --lora B.safetensors:-0.5 (a diffusers/PEFT and a kohya file) writes the
    image of the pipeline whose DiT has both merged (core lora_formats), which differs from no LoRA."""
    import json

    from safetensors.torch import save_file

    from sana_sprint_core import lora_formats
    from sana_sprint_core.pipeline import SprintPipeline, save_png

    models, paths = model_set
    pipe = SprintPipeline.from_files(paths["dit"], paths["text_encoder"], paths["vae"], dtype=torch.float32,
                                     device="cpu")
    shapes = {k: v.shape for k, v in pipe.dit.state_dict().items()}
    g = torch.Generator().manual_seed(4)
    out, inp = shapes["transformer_blocks.0.attn1.to_q.weight"]
    peft_keys = {"transformer.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.randn(2, inp, generator=g),
                 "transformer.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.randn(out, 2, generator=g)}
    save_file(peft_keys, str(tmp_path / "a.safetensors"),
              metadata={"lora_adapter_metadata": json.dumps({"transformer.lora_alpha": 4})})
    kohya = {"lora_unet_transformer_blocks_1_attn2_to_v.lora_down.weight": torch.randn(2, inp, generator=g),
             "lora_unet_transformer_blocks_1_attn2_to_v.lora_up.weight": torch.randn(out, 2, generator=g),
             "lora_unet_transformer_blocks_1_attn2_to_v.alpha": torch.tensor(2.0)}
    save_file(kohya, str(tmp_path / "b.safetensors"))
    args = ["generate", "--models-dir", str(models), "--prompt", PROMPT, "--width", "96", "--height", "64",
            "--steps", "1", "--device", "cpu", "--dtype", "fp32"]
    assert main([*args, "--out", str(tmp_path / "plain.png")]) == 0
    assert main([*args, "--out", str(tmp_path / "lora.png"), "--lora", str(tmp_path / "a.safetensors"),
                 "--lora", f"{tmp_path / 'b.safetensors'}:-0.5"]) == 0
    lora_formats.apply_lora_files(pipe.dit, [(str(tmp_path / "a.safetensors"), 1.0),
                                             (str(tmp_path / "b.safetensors"), -0.5)])
    save_png(pipe(PROMPT, width=96, height=64, steps=1, seed=0), tmp_path / "want.png")
    lora, plain = np.asarray(Image.open(tmp_path / "lora.png")), np.asarray(Image.open(tmp_path / "plain.png"))
    assert np.array_equal(lora, np.asarray(Image.open(tmp_path / "want.png")))
    assert not np.array_equal(lora, plain)


def test_our_lora_exported_for_diffusers_gives_the_same_image(model_set, tmp_path):
    """A LoRA in this pack's (ComfyUI) keys, written in PEFT form by lora_formats.to_peft and loaded with
    diffusers' SanaSprintPipeline.load_lora_weights, gives the image our pipeline makes with the original
    file merged (generate --lora's path)."""
    from safetensors.torch import save_file

    from sana_sprint_core import lora_formats

    models, paths = model_set
    ours = SprintPipeline.from_models_dir(models, dtype=torch.float32)
    state = ours.dit.state_dict()
    g = torch.Generator().manual_seed(6)
    comfy = {}
    for block in range(2):
        for module in ("attn1.to_q", "attn2.to_k", "ff.conv_point"):
            w = state[f"transformer_blocks.{block}.{module}.weight"]
            key = f"diffusion_model.transformer_blocks.{block}.{module}"
            tail = tuple(w.shape[2:])
            comfy[f"{key}.lora_down.weight"] = torch.randn(3, w.shape[1], *tail, generator=g)
            comfy[f"{key}.lora_up.weight"] = torch.randn(w.shape[0], 3, *tail, generator=g) * 0.2
            comfy[f"{key}.alpha"] = torch.tensor(6.0)
    save_file(comfy, str(tmp_path / "ours.safetensors"))
    tensors, meta = lora_formats.to_peft(lora_formats.read_lora(comfy, state.keys()))
    save_file(tensors, str(tmp_path / "for_diffusers.safetensors"), metadata=meta)

    ref = diffusers_pipeline(paths)
    ref.load_lora_weights(str(tmp_path / "for_diffusers.safetensors"), adapter_name="ours")
    kw = dict(height=64, width=96, num_inference_steps=2, guidance_scale=4.5, max_sequence_length=TOKENS,
              intermediate_timesteps=1.3, use_resolution_binning=False, complex_human_instruction=diffusers_chi(),
              return_dict=False)
    want = ref(PROMPT, generator=torch.Generator().manual_seed(3), output_type="pt", **kw)[0]
    lora_formats.apply_lora_files(ours.dit, [(str(tmp_path / "ours.safetensors"), 1.0)])
    opts = PromptOptions(max_tokens=TOKENS, quote_style="diffusers", lowercase=True)
    got = ours(PROMPT, width=96, height=64, steps=2, seed=3, prompt_options=opts)
    plain = diffusers_pipeline(paths)(PROMPT, generator=torch.Generator().manual_seed(3), output_type="pt", **kw)[0]
    assert (want - plain).abs().max() > 1e-3  # the LoRA changes the image
    assert (got - want).abs().max().item() <= 1e-4  # the bound of the plain pipeline parity test above


def test_cli_decodes_with_dc_ae_lite(model_set, tmp_path):
    """--vae a DC-AE-Lite folder: the PNG is the lite decoder's image of the pipeline's latents."""
    from sana_sprint_core.dcae import decode, load_vae
    from tests.fixtures.comfy_models import TINY_LITE_DCAE, write_tiny_dcae

    models, paths = model_set
    lite = write_tiny_dcae(tmp_path / "dc-ae-lite", seed=4, config=TINY_LITE_DCAE)
    out = tmp_path / "lite.png"
    args = ["--prompt", PROMPT, "--width", "96", "--height", "64", "--steps", "2", "--device", "cpu", "--dtype", "fp32"]
    assert main(["generate", "--models-dir", str(models), "--vae", str(lite), "--out", str(out), *args]) == 0
    pipe = SprintPipeline.from_files(paths["dit"], paths["text_encoder"], lite, dtype="fp32")
    assert pipe.vae.config == TINY_LITE_DCAE
    latents = pipe.generate_latents(PROMPT, width=96, height=64, steps=2, seed=0)
    want = decode(load_vae(lite), latents)[0].permute(1, 2, 0)
    got = torch.from_numpy(np.asarray(Image.open(out))).float() / 255
    assert got.shape == want.shape and want.std() > 0.01
    assert (got - want).abs().max() <= 1 / 255 + 1e-4
