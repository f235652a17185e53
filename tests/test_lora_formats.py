"""LoRA files of every format people have (sana_sprint_core/lora_formats.py) against diffusers.

One LoRA, made with peft on a tiny diffusers SanaTransformer2DModel and saved by diffusers'
SanaSprintPipeline.save_lora_weights (alpha 8 for rank 4 only in the metadata), is written again under
the key schemes of kohya, OneTrainer and ComfyUI. Each file, read and merged by us into our DiT,
gives diffusers' output with the file loaded by SanaSprintPipeline's own LoRA loading, at strength 1
and 0.5, within float32 rounding. A LoRA on NVlabs' fused qkv / kv projections equals the merge done
in the NVlabs layout and converted. Files for another base or with unknown keys are refused.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch

from sana_sprint_core import lora_formats
from sana_sprint_core.checkpoint_io import read_state_dict_with_info
from sana_sprint_core.dit import SanaSprintDiT
from sana_sprint_core.dit_keys import nvlabs_to_diffusers, split_tensor
from tests.test_dit import TINY, diffusers_model, inputs
from tests.tolerance import assert_fp32_close

diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv_inverted", "conv_point"]
RANK, ALPHA = 4, 8.0


def _forward(model, diffusers_api: bool):
    x, ctx, mask, tau = inputs()
    g = torch.tensor([4.5, 3.0])
    with torch.no_grad():
        if diffusers_api:
            return model(x, encoder_hidden_states=ctx, timestep=tau, encoder_attention_mask=mask, guidance=g * 0.1,
                         return_dict=False)[0]
        return model(x, tau, ctx, mask, g)


@pytest.fixture(scope="module")
def peft_file():
    """(path of diffusers' LoRA file, the peft LoRA state dict) for diffusers_model(TINY)."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    ref = diffusers_model(TINY)
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, init_lora_weights=False)
    torch.manual_seed(7)
    ref.add_adapter(config)
    state = get_peft_model_state_dict(ref)
    folder = Path(tempfile.mkdtemp())
    diffusers.SanaSprintPipeline.save_lora_weights(folder, transformer_lora_layers=state,
                                                   transformer_lora_adapter_metadata=config.to_dict())
    return folder / "pytorch_lora_weights.safetensors", state


def _diffusers_with(files_and_strengths):
    """diffusers_model(TINY) with each LoRA file loaded the way SanaSprintPipeline.load_lora_weights does."""
    ref = diffusers_model(TINY)
    names = []
    for i, (path, _) in enumerate(files_and_strengths):
        state, meta = diffusers.SanaSprintPipeline.lora_state_dict(str(path), return_lora_metadata=True)
        diffusers.SanaSprintPipeline.load_lora_into_transformer(state, transformer=ref, adapter_name=f"l{i}",
                                                                metadata=meta)
        names.append(f"l{i}")
    ref.set_adapters(names, weights=[s for _, s in files_and_strengths])
    return ref


def _ours_with(files_and_strengths, nvlabs: bool = False):
    """Our DiT with the same weights and each LoRA read (any format) and merged at its strength."""
    ref = diffusers_model(TINY)
    state = ref.state_dict()
    for path, strength in files_and_strengths:
        tensors, info = read_state_dict_with_info(path)
        lora = lora_formats.read_lora(tensors, state.keys(), info.metadata, source=str(path))
        lora_formats.check_against(lora, {k: v.shape for k, v in state.items()}, "tiny SANA")
        lora_formats.merge_into(state, lora, strength)
    ours = SanaSprintDiT(TINY)
    ours.load_state_dict(state, strict=True)
    return ours.eval()


def _rewrite(state: dict, path: Path, style: str) -> Path:
    """The peft LoRA under another tool's key scheme, alpha written as a tensor."""
    from safetensors.torch import save_file

    out = {}
    for key, value in state.items():
        module, kind = key.rsplit(".lora_", 1)
        role = "lora_down.weight" if kind.startswith("A") else "lora_up.weight"
        name = {"comfy": f"diffusion_model.{module}", "kohya": "lora_unet_" + module.replace(".", "_"),
                "onetrainer": "lora_transformer_" + module.replace(".", "_")}[style]
        out[f"{name}.{role}"] = value.contiguous()
        out[f"{name}.alpha"] = torch.tensor(ALPHA)
    save_file(out, str(path))
    return path


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_diffusers_peft_file_equals_diffusers_load_lora_weights(peft_file, strength):
    path, _ = peft_file
    want = _forward(_diffusers_with([(path, strength)]), True)
    plain = _forward(diffusers_model(TINY), True)
    assert (want - plain).abs().max() > 1e-2  # the LoRA changes the output
    assert_fp32_close(_forward(_ours_with([(path, strength)]), False), want, f"peft file, strength {strength}")


def test_peft_alpha_comes_from_the_metadata(peft_file, tmp_path):
    """Without the metadata the alpha would be the rank: half the effect for alpha 8, rank 4."""
    path, _ = peft_file
    tensors, info = read_state_dict_with_info(path)
    state = diffusers_model(TINY).state_dict()
    lora = lora_formats.read_lora(tensors, state.keys(), info.metadata)
    assert lora.format == "peft" and {a.scale for a in lora.adapters.values()} == {ALPHA / RANK}
    bare = lora_formats.read_lora(tensors, state.keys(), None)
    assert {a.scale for a in bare.adapters.values()} == {1.0}
    config = {"lora_alpha": 8, "alpha_pattern": {"to_q": 2}, "use_rslora": True}  # a peft adapter_config.json
    patterned = lora_formats.read_lora(tensors, state.keys(), None, peft_config=config)
    scales = {k.rsplit(".", 2)[-2]: a.scale for k, a in patterned.adapters.items()}
    assert scales["to_q"] == 2 / RANK**0.5 and scales["to_k"] == 8 / RANK**0.5


@pytest.mark.parametrize("style", ["comfy", "kohya", "onetrainer"])
def test_every_key_scheme_gives_the_same_model(peft_file, tmp_path, style):
    path, state = peft_file
    other = _rewrite(state, tmp_path / f"{style}.safetensors", style)
    tensors, _ = read_state_dict_with_info(other)
    assert lora_formats.read_lora(tensors, diffusers_model(TINY).state_dict().keys()).format == style
    want = _forward(_diffusers_with([(path, 0.5)]), True)
    assert_fp32_close(_forward(_ours_with([(other, 0.5)]), False), want, style)


def test_two_loras_of_two_formats_stack(peft_file, tmp_path):
    path, state = peft_file
    torch.manual_seed(3)
    second = {k: torch.randn_like(v) * 0.2 for k, v in state.items()}
    kohya = _rewrite(second, tmp_path / "second.safetensors", "kohya")
    as_peft = tmp_path / "second_peft"
    config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS)
    diffusers.SanaSprintPipeline.save_lora_weights(as_peft, transformer_lora_layers=second,
                                                   transformer_lora_adapter_metadata=config.to_dict())
    want = _forward(_diffusers_with([(path, 1.0), (as_peft / "pytorch_lora_weights.safetensors", -0.5)]), True)
    assert_fp32_close(_forward(_ours_with([(path, 1.0), (kohya, -0.5)]), False), want, "two stacked LoRAs")


def test_nvlabs_fused_projection_lora_equals_the_merge_in_nvlabs_layout(tmp_path):
    """A LoRA on blocks.N.attn.qkv and cross_attn.kv_linear (NVlabs names, kohya-style keys): split
    into q/k/v and k/v, it changes our model exactly as merging it into the fused NVlabs weights does."""
    from safetensors.torch import save_file

    from tests.fixtures.dit import to_nvlabs_state_dict

    ref_state = diffusers_model(TINY).state_dict()
    nv = to_nvlabs_state_dict(ref_state)
    g = torch.Generator().manual_seed(5)
    lora, merged = {}, dict(nv)
    for block in range(TINY.num_layers):
        for module in ("attn.qkv", "cross_attn.kv_linear"):
            w = nv[f"blocks.{block}.{module}.weight"]
            down, up = torch.randn(RANK, w.shape[1], generator=g), torch.randn(w.shape[0], RANK, generator=g) * 0.1
            name = f"lora_unet_blocks_{block}_{module.replace('.', '_')}"
            lora.update({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                         f"{name}.alpha": torch.tensor(ALPHA)})
            merged[f"blocks.{block}.{module}.weight"] = w + 0.7 * (ALPHA / RANK) * up @ down
    save_file(lora, str(tmp_path / "nvlabs.safetensors"))
    want = nvlabs_to_diffusers(merged, split_tensor)
    read = lora_formats.read_lora(lora, ref_state.keys())
    assert len(read.adapters) == TINY.num_layers * 5  # q, k, v + k, v per block
    got = dict(ref_state)
    lora_formats.merge_into(got, read, 0.7)
    assert set(read.adapters) <= set(want) and set(got) <= set(want)
    for key in got:
        assert_fp32_close(got[key], want[key], key)


def test_a_lora_for_another_base_is_refused_naming_it():
    state = diffusers_model(TINY).state_dict()
    shapes = {k: v.shape for k, v in state.items()}
    wide = {"transformer.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 1152),
            "transformer.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(1152, 4)}
    lora = lora_formats.read_lora(wide, state.keys())
    with pytest.raises(ValueError, match=r"was made for SANA / SANA-Sprint 0.6B \(width 1152\), not for this tiny "
                                         r"SANA: 1 update\(s\) do not fit \(transformer_blocks.0.attn1.to_q 1152x1152 "
                                         r"vs 64x64\); nothing was applied"):
        lora_formats.check_against(lora, shapes, "tiny SANA")


@pytest.mark.parametrize("keys, words", [
    ({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(4, 64),
      "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(192, 4)},
     r"\(kohya format\): 1 LoRA module\(s\) name no weight of this SANA model: double_blocks_0_img_attn_qkv"),
    ({"diffusion_model.transformer_blocks.0.attn1.to_q.lora_up.weight": torch.zeros(64, 4)},
     r"transformer_blocks.0.attn1.to_q has \['up'\] but needs both down"),
    ({"transformer.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 64),
      "transformer.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(64, 4),
      "transformer.transformer_blocks.0.attn1.to_q.lora_magnitude_vector": torch.zeros(64)},
     r"1 key\(s\) are no LoRA weight this loader knows: transformer.transformer_blocks.0.attn1.to_q.lora_magnitude"),
    ({}, "holds no LoRA weights"),
], ids=["flux-lora", "half-a-pair", "dora-key", "empty"])
def test_unknown_or_partial_files_are_refused_whole(keys, words):
    state = diffusers_model(TINY).state_dict()
    with pytest.raises(ValueError, match=words):
        lora_formats.read_lora(keys, state.keys(), source="the file")


def test_dora_metadata_is_refused():
    meta = {"lora_adapter_metadata": json.dumps({"transformer.lora_alpha": 8, "transformer.use_dora": True})}
    keys = {"transformer.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 64),
            "transformer.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(64, 4)}
    with pytest.raises(ValueError, match="is a DoRA"):
        lora_formats.read_lora(keys, diffusers_model(TINY).state_dict().keys(), meta)


def _lycoris_file(state: dict, tmp_path: Path) -> tuple[Path, dict]:
    """A SimpleTuner-style LyCORIS file (lycoris_<path> keys): LoKr on to_q (decomposed w2) and to_out.0
    (full factors), LoHa on to_k and on the 1x1 conv_inverted; and the merge expected at strength 1,
    computed here from LyCORIS' definitions (not with lycoris.py)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(9)
    keys, want = {}, {}

    def r(*shape, s=0.3):
        return torch.randn(*shape, generator=g) * s

    for module, kind in (("attn1.to_q", "lokr_lowrank"), ("attn1.to_out.0", "lokr_full"), ("attn1.to_k", "loha"),
                         ("ff.conv_inverted", "loha")):
        weight = f"transformer_blocks.0.{module}.weight"
        w = state[weight]
        out, inp = w.shape[0], w.flatten(1).shape[1]
        name = "lycoris_" + f"transformer_blocks.0.{module}".replace(".", "_")
        if kind.startswith("lokr"):
            w1 = r(4, 8)
            keys[f"{name}.lokr_w1"] = w1
            if kind == "lokr_lowrank":
                a, b = r(out // 4, 2), r(2, inp // 8)
                keys.update({f"{name}.lokr_w2_a": a, f"{name}.lokr_w2_b": b, f"{name}.alpha": torch.tensor(4.0)})
                delta = torch.kron(w1, a @ b) * (4.0 / 2)
            else:
                w2 = r(out // 4, inp // 8)
                keys[f"{name}.lokr_w2"] = w2
                delta = torch.kron(w1, w2)  # both factors full: no alpha scaling
        else:
            f = {n: r(*shape) for n, shape in (("hada_w1_a", (out, 3)), ("hada_w1_b", (3, inp)),
                                                 ("hada_w2_a", (out, 3)), ("hada_w2_b", (3, inp)))}
            keys.update({f"{name}.{n}": v for n, v in f.items()})
            keys[f"{name}.alpha"] = torch.tensor(6.0)
            delta = (f["hada_w1_a"] @ f["hada_w1_b"]) * (f["hada_w2_a"] @ f["hada_w2_b"]) * (6.0 / 3)
        want[weight] = w + delta.reshape(w.shape)
    path = tmp_path / "lycoris.safetensors"
    save_file(keys, str(path))
    return path, want


def test_lycoris_lokr_and_loha_equal_their_definitions(tmp_path):
    state = diffusers_model(TINY).state_dict()
    path, want = _lycoris_file(state, tmp_path)
    tensors, info = read_state_dict_with_info(path)
    lora = lora_formats.read_lora(tensors, state.keys(), info.metadata)
    assert lora.format == "lycoris" and len(lora.adapters) == 4
    lora_formats.check_against(lora, {k: v.shape for k, v in state.items()}, "tiny SANA")
    got = dict(state)
    lora_formats.merge_into(got, lora, 1.0)
    for key, value in want.items():
        assert_fp32_close(got[key], value, key)
    assert {k for k in got if not torch.equal(got[k], state[k])} == set(want)


def test_lokr_on_a_fused_nvlabs_projection_becomes_exact_differences():
    """A LoKr on blocks.0.attn.qkv: its full change, cut into the q, k and v rows."""
    from tests.fixtures.dit import to_nvlabs_state_dict

    state = diffusers_model(TINY).state_dict()
    nv = to_nvlabs_state_dict(state)
    g = torch.Generator().manual_seed(2)
    w1, w2 = torch.randn(3, 2, generator=g), torch.randn(64, 32, generator=g) * 0.1
    keys = {"diffusion_model.blocks.0.attn.qkv.lokr_w1": w1, "diffusion_model.blocks.0.attn.qkv.lokr_w2": w2}
    merged = dict(nv)
    merged["blocks.0.attn.qkv.weight"] = nv["blocks.0.attn.qkv.weight"] + 0.5 * torch.kron(w1, w2)
    want = nvlabs_to_diffusers(merged, split_tensor)
    lora = lora_formats.read_lora(keys, state.keys())
    assert sorted(lora.adapters) == [f"transformer_blocks.0.attn1.to_{c}.weight" for c in "kqv"]
    got = dict(state)
    lora_formats.merge_into(got, lora, 0.5)
    for key in got:
        assert_fp32_close(got[key], want[key], key)


def test_lycoris_tucker_and_incomplete_lokr_are_refused():
    keys = diffusers_model(TINY).state_dict().keys()
    tucker = {"lycoris_transformer_blocks_0_attn1_to_q.hada_t1": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"Tucker form \(hada_t1\) of LyCORIS is not supported"):
        lora_formats.read_lora(tucker, keys)
    half = {"lycoris_transformer_blocks_0_attn1_to_q.lokr_w1": torch.zeros(2, 2)}
    with pytest.raises(ValueError, match=r"LoKr needs lokr_w2 or lokr_w2_a and lokr_w2_b"):
        lora_formats.read_lora(half, keys)


# --------------------------------------------------------------------------------------------------
# Ours -> diffusers: the PEFT form of this pack's LoRAs


def _distilled_like_lora(state: dict) -> lora_formats.LoraFile:
    """A LoRA shaped like the trainer's (low rank on the attention projections, the guidance embedder as
    `.diff` / `.diff_b` over a zero base), in ComfyUI keys, with random values."""
    g = torch.Generator().manual_seed(12)
    tensors = {}
    for block in range(TINY.num_layers):
        for module in ("attn1.to_q", "attn1.to_v", "attn2.to_out.0"):
            out, inp = state[f"transformer_blocks.{block}.{module}.weight"].shape
            key = f"diffusion_model.transformer_blocks.{block}.{module}"
            tensors.update({f"{key}.lora_down.weight": torch.randn(4, inp, generator=g),
                            f"{key}.lora_up.weight": torch.randn(out, 4, generator=g) * 0.1,
                            f"{key}.alpha": torch.tensor(4.0 if block else 2.0)})
    for linear in ("linear_1", "linear_2"):
        w = state[f"time_embed.guidance_embedder.{linear}.weight"]
        base = f"diffusion_model.time_embed.guidance_embedder.{linear}"
        tensors[f"{base}.diff"] = torch.randn(w.shape, generator=g) * 0.05
        tensors[f"{base}.diff_b"] = torch.randn(w.shape[0], generator=g) * 0.05
    return lora_formats.read_lora(tensors, state.keys())


def test_peft_export_loads_in_diffusers_with_the_same_output(tmp_path):
    """Our LoRA (low-rank parts, alphas differing per module, and the full guidance-embedder difference)
    written in PEFT form: diffusers' own LoRA loading on the base with a zero guidance embedder gives our
    merged model's output."""
    from safetensors.torch import save_file

    zero_embedder = diffusers_model(TINY)
    with torch.no_grad():
        for p in zero_embedder.time_embed.guidance_embedder.parameters():
            p.zero_()
    state = zero_embedder.state_dict()
    lora = _distilled_like_lora(state)
    tensors, meta = lora_formats.to_peft(lora)
    path = tmp_path / "peft.safetensors"
    save_file(tensors, str(path), metadata=meta)
    state_dict, metadata = diffusers.SanaSprintPipeline.lora_state_dict(str(path), return_lora_metadata=True)
    diffusers.SanaSprintPipeline.load_lora_into_transformer(state_dict, transformer=zero_embedder, adapter_name="ours",
                                                            metadata=metadata)
    want = _forward(zero_embedder, True)
    merged = dict(state)
    lora_formats.merge_into(merged, lora, 1.0)
    ours = SanaSprintDiT(TINY)
    ours.load_state_dict(merged, strict=True)
    assert_fp32_close(_forward(ours.eval(), False), want, "PEFT export in diffusers")
    # and our own loader reads the export back to the same merge
    again = lora_formats.read_lora(tensors, state.keys(), meta)
    back = dict(state)
    lora_formats.merge_into(back, again, 1.0)
    for key in merged:
        assert_fp32_close(back[key], merged[key], key)


def test_peft_export_refuses_what_peft_cannot_hold():
    state = diffusers_model(TINY).state_dict()
    keys = {"lycoris_transformer_blocks_0_attn1_to_q.lokr_w1": torch.randn(4, 8),
            "lycoris_transformer_blocks_0_attn1_to_q.lokr_w2": torch.randn(16, 8)}
    with pytest.raises(ValueError, match="only plain low-rank LoRA updates have a PEFT form .*Kron"):
        lora_formats.to_peft(lora_formats.read_lora(keys, state.keys()))
