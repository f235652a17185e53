"""The pack on the REAL ComfyUI modules in-process (opt-in: COMFYUI_DIR): native MODEL behaviour.

    COMFYUI_DIR=/path/to/ComfyUI /path/to/comfy-venv/bin/python -m pytest tests/e2e -v

Checks what the server test cannot see directly: core LoRA key mapping and patching apply to the
SANA-Sprint MODEL, and the patched weights reach our sampler through model management.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout to run")
REPO = Path(__file__).resolve().parents[2]
TARGET = "transformer_blocks.0.attn1.to_q"


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    """Real comfy modules (CPU), tiny models registered in folder_paths, the pack loaded like ComfyUI does."""
    sys.path.append(COMFYUI_DIR)  # appended: ComfyUI has its own top-level `tests` package
    from comfy.cli_args import args

    args.cpu = True  # before comfy.model_management is imported (no GPU here)
    import comfy.lora
    import comfy.sd
    import folder_paths

    from tests.fixtures.comfy_models import write_tiny_models

    models = tmp_path_factory.mktemp("models")
    write_tiny_models(models)
    for name in ("diffusion_models", "text_encoders", "vae"):
        folder_paths.add_model_folder_path(name, str(models / name), is_default=True)
    spec = importlib.util.spec_from_file_location("sanasprint_real_pack", REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = pack
    spec.loader.exec_module(pack)
    extension = asyncio.run(pack.comfy_entrypoint())
    nodes = {cls.define_schema().node_id: cls for cls in asyncio.run(extension.get_node_list())}
    return comfy, nodes


def _lora(dit_weight: torch.Tensor, rank: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)
    out_dim, in_dim = dit_weight.shape
    return {f"diffusion_model.{TARGET}.lora_up.weight": torch.randn(out_dim, rank, generator=g),
            f"diffusion_model.{TARGET}.lora_down.weight": torch.randn(rank, in_dim, generator=g),
            f"diffusion_model.{TARGET}.alpha": torch.tensor(float(rank))}


def test_core_lora_keys_map_and_patch_the_sana_model(comfy):
    comfy_mod, nodes = comfy
    from sana_sprint_core.constants import COMFY_DIT_NAME, COMFY_TEXT_ENCODER_NAME

    with torch.inference_mode():
        model = nodes["SanaSprintDiTLoader"].execute(COMFY_DIT_NAME, "fp32")[0]
        te = nodes["SanaSprintTextEncoderLoader"].execute(COMFY_TEXT_ENCODER_NAME, "fp32")[0]
        cond = nodes["SanaSprintTextEncode"].execute(te, "a cat", True)[0]
        keys = comfy_mod.lora.model_lora_keys_unet(model.model, {})
        assert keys[f"diffusion_model.{TARGET}"] == f"diffusion_model.{TARGET}.weight"
        assert keys["lora_unet_" + TARGET.replace(".", "_")] == f"diffusion_model.{TARGET}.weight"
        weight = model.model.diffusion_model.transformer_blocks[0].attn1.to_q.weight.detach().clone()
        lora = _lora(weight)
        patched, _ = comfy_mod.sd.load_lora_for_models(model, None, lora, 0.5, 0.0)
        latent = nodes["SanaSprintEmptyLatent"].execute(64, 64, 1, "custom")[0]
        args = dict(positive=cond, latent_image=latent, seed=1, steps=1, guidance=4.5, max_timestep=1.5708,
                    intermediate_timestep=1.3, denoise=1.0, timesteps="")
        base = nodes["SanaSprintSampler"].execute(model=model, **args)[0]["samples"]
        with_lora = nodes["SanaSprintSampler"].execute(model=patched, **args)[0]["samples"]
        now = model.model.diffusion_model.transformer_blocks[0].attn1.to_q.weight
        up = lora[f"diffusion_model.{TARGET}.lora_up.weight"]
        down = lora[f"diffusion_model.{TARGET}.lora_down.weight"]
        torch.testing.assert_close(now, weight + 0.5 * up @ down)  # alpha / rank = 1
        assert (with_lora - base).abs().max() > 1e-3
        again = nodes["SanaSprintSampler"].execute(model=model, **args)[0]["samples"]
        torch.testing.assert_close(again, base)  # loading the plain model unpatches the weights
