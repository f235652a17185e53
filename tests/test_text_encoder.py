"""Gemma-2 loading (every layout and error), encode_prompt against diffusers, and the prompt cache."""

import inspect
import json
import os
import shutil
import warnings

import pytest
import torch
from safetensors.torch import save_file

from sana_sprint_core import constants as C
from sana_sprint_core.text_cache import PromptCache
from sana_sprint_core.text_encoder import chi_text, encode_prompt, load_text_encoder
from tests.fixtures.text import (PROMPTS, save_single_file, tiny_gemma2, train_bpe_tokenizer,
                                 train_spm_model)

transformers = pytest.importorskip("transformers")
F32 = torch.float32


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return train_bpe_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tok(tok_dir):
    return transformers.AutoTokenizer.from_pretrained(str(tok_dir))


@pytest.fixture(scope="module")
def ref_model(tok):
    return tiny_gemma2(len(tok))


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory, tok_dir, ref_model):
    folder = tmp_path_factory.mktemp("hf") / "gemma"
    shutil.copytree(tok_dir, folder)
    ref_model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def encoder(hf_folder):
    return load_text_encoder(hf_folder, dtype=F32)


def assert_same_model(encoder, ref):
    """Same tensors under the same names, and the same last_hidden_state (catches config mistakes)."""
    ours, theirs = encoder.model.state_dict(), ref.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    ids = torch.tensor([[2, 7, 40, 99, 5, 0], [2, 11, 12, 0, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        assert torch.equal(encoder.model(input_ids=ids, attention_mask=mask).last_hidden_state,
                           ref(input_ids=ids, attention_mask=mask).last_hidden_state)


def assert_same_tokenizer(encoder, tok):
    for text in PROMPTS + (chi_text() + PROMPTS[1],):
        assert encoder.tokenizer.encode(text) == tok.encode(text)


# --- load layouts ---------------------------------------------------------------------------------


def test_load_hf_folder(encoder, ref_model, tok):
    assert_same_model(encoder, ref_model)
    assert_same_tokenizer(encoder, tok)
    assert encoder.dtype == F32 and encoder.device == torch.device("cpu") and encoder.hidden_size == 64
    assert encoder.tokenizer.padding_side == "right"
    assert not any(p.requires_grad for p in encoder.model.parameters())


def test_default_dtype_is_bf16(hf_folder):
    encoder = load_text_encoder(hf_folder)
    assert encoder.dtype == torch.bfloat16
    assert encoder.model.rotary_emb.inv_freq.dtype == F32  # buffers are not cast, as in from_pretrained
    embeds, mask = encode_prompt(encoder, "a cat", chi=False, max_tokens=8)
    assert embeds.dtype == torch.bfloat16 and mask.dtype == torch.int64


def test_load_sharded_folder(tmp_path, tok_dir, ref_model, tok):
    shutil.copytree(tok_dir, tmp_path / "g")
    ref_model.save_pretrained(str(tmp_path / "g"), max_shard_size="100KB")
    index = json.loads((tmp_path / "g" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    encoder = load_text_encoder(tmp_path / "g", dtype=F32)
    assert_same_model(encoder, ref_model)
    assert_same_tokenizer(encoder, tok)


def test_load_causal_lm_folder(tmp_path, tok_dir, tok):
    causal = tiny_gemma2(len(tok), seed=1, causal_lm=True)
    shutil.copytree(tok_dir, tmp_path / "g")
    causal.save_pretrained(str(tmp_path / "g"))
    from safetensors import safe_open
    with safe_open(str(tmp_path / "g" / "model.safetensors"), "pt") as st:
        assert all(k.startswith("model.") or k == "lm_head.weight" for k in st.keys())
    assert_same_model(load_text_encoder(tmp_path / "g", dtype=F32), causal.model)


def test_load_diffusers_pipeline_layout(tmp_path, tok_dir, ref_model, tok):
    shutil.copytree(tok_dir, tmp_path / "pipe" / "tokenizer")
    ref_model.save_pretrained(str(tmp_path / "pipe" / "text_encoder"))
    encoder = load_text_encoder(tmp_path / "pipe", dtype=F32)
    assert_same_model(encoder, ref_model)
    assert_same_tokenizer(encoder, tok)
    # text_encoder/ itself finds ../tokenizer: the same files, hence the same identity
    assert load_text_encoder(tmp_path / "pipe" / "text_encoder", dtype=F32).identity == encoder.identity


def test_single_file_with_prefix_and_lm_head_tokenizer_beside(tmp_path, tok_dir, ref_model, tok):
    shutil.copytree(tok_dir, tmp_path / "te")
    file = save_single_file(tmp_path / "te" / "gemma.safetensors", ref_model, lm_head=True)
    encoder = load_text_encoder(file, dtype=F32)
    assert_same_model(encoder, ref_model)
    assert_same_tokenizer(encoder, tok)
    cfg = encoder.model.config  # inferred from shapes: 2 heads x 256, 1 KV head, 2 layers
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.num_hidden_layers,
            cfg.intermediate_size, cfg.vocab_size) == (2, 1, 2, 128, len(tok))


def test_single_file_bare_keys_tokenizer_in_stem_folder(tmp_path, tok_dir, ref_model, tok):
    shutil.copytree(tok_dir, tmp_path / "gemma-2-2b-it")
    file = save_single_file(tmp_path / "gemma-2-2b-it.safetensors", ref_model, prefix="")
    encoder = load_text_encoder(file, dtype=F32)
    assert_same_model(encoder, ref_model)
    assert_same_tokenizer(encoder, tok)


def test_single_file_with_embedded_sentencepiece(tmp_path):
    import sentencepiece as spm

    data = train_spm_model()
    sp = spm.SentencePieceProcessor(model_proto=data)
    model = tiny_gemma2(sp.get_piece_size(), seed=2)
    file = save_single_file(tmp_path / "gemma_2_2b_fp16.safetensors", model, spiece=data)  # ComfyUI layout
    encoder = load_text_encoder(file, dtype=F32)
    assert_same_model(encoder, model)
    for text in ("a cat on the moon", "Héllo  wörld 123 ✓", chi_text() + PROMPTS[2]):
        assert encoder.tokenizer.encode(text) == [C.GEMMA_BOS_ID] + sp.encode(text)
    assert encoder.tokenizer.pad_token_id == C.GEMMA_PAD_ID
    embeds, mask = encode_prompt(encoder, ["a cat", "a red fox"], max_tokens=16)
    assert embeds.shape == (2, 16, 64) and mask[:, 0].tolist() == [1, 1]


def test_identity_follows_the_files(tmp_path, hf_folder, encoder, tok_dir, ref_model):
    assert load_text_encoder(hf_folder, dtype=F32).identity == encoder.identity
    shutil.copytree(tok_dir, tmp_path / "g")
    ref_model.save_pretrained(str(tmp_path / "g"))
    other = load_text_encoder(tmp_path / "g", dtype=F32)
    assert other.identity != encoder.identity
    weights = tmp_path / "g" / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert load_text_encoder(tmp_path / "g", dtype=F32).identity != other.identity


# --- load errors ----------------------------------------------------------------------------------


def test_error_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*gemma-2-2b-it"):
        load_text_encoder(tmp_path / "nope")


def test_error_not_safetensors(tmp_path):
    (tmp_path / "gemma.bin").write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match=r"gemma\.bin is not a \.safetensors file"):
        load_text_encoder(tmp_path / "gemma.bin")


def test_error_unreadable_safetensors(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"cannot read .*bad\.safetensors as a safetensors file"):
        load_text_encoder(tmp_path / "bad.safetensors")


def test_error_dit_file(tmp_path):
    save_file({"transformer_blocks.0.attn1.to_q.weight": torch.zeros(4, 4),
               "caption_projection.linear_1.weight": torch.zeros(4, 4)}, str(tmp_path / "dit.safetensors"))
    with pytest.raises(ValueError, match=r"dit\.safetensors is not a Gemma-2 text encoder.*"
                                         r"'caption_projection\.linear_1\.weight'.*Sana DiT.*gemma-2-2b-it"):
        load_text_encoder(tmp_path / "dit.safetensors")


def test_error_empty_folder(tmp_path):
    with pytest.raises(ValueError, match=r"no Gemma-2 weights in .*empty.*Efficient-Large-Model/gemma-2-2b-it"):
        load_text_encoder(tmp_path)


def test_error_folder_without_weights_names_contents(tmp_path, tok_dir):
    shutil.copytree(tok_dir, tmp_path / "g")
    with pytest.raises(ValueError, match=r"no Gemma-2 weights .*found .*tokenizer\.json.*model\.safetensors"):
        load_text_encoder(tmp_path / "g")


def test_error_folder_with_weights_but_no_tokenizer(tmp_path, ref_model):
    ref_model.save_pretrained(str(tmp_path / "g"))
    with pytest.raises(ValueError, match=r"no tokenizer for the Gemma-2 weights .*tokenizer\.json or "
                                         r"tokenizer\.model.*'spiece_model'.*gemma-2-2b-it"):
        load_text_encoder(tmp_path / "g")


def test_error_single_file_without_tokenizer_names_stem_folder(tmp_path, ref_model):
    file = save_single_file(tmp_path / "gem.safetensors", ref_model)
    with pytest.raises(ValueError, match=r"no tokenizer .* and .*gem\b"):
        load_text_encoder(file)


def test_error_missing_shard(tmp_path, tok_dir, ref_model):
    shutil.copytree(tok_dir, tmp_path / "g")
    ref_model.save_pretrained(str(tmp_path / "g"), max_shard_size="100KB")
    (tmp_path / "g" / "model-00002-of-00011.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"lists shards that are not in .*model-00002-of-00011"):
        load_text_encoder(tmp_path / "g")


def test_error_index_without_weight_map(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text('{"metadata": {}}')
    with pytest.raises(ValueError, match=r"has no 'weight_map'"):
        load_text_encoder(tmp_path)


def test_error_several_files_without_index(tmp_path, ref_model):
    save_single_file(tmp_path / "a.safetensors", ref_model)
    save_single_file(tmp_path / "b.safetensors", ref_model)
    with pytest.raises(ValueError, match=r"several \.safetensors files \(a\.safetensors, b\.safetensors\)"):
        load_text_encoder(tmp_path)


def _file_with(tmp_path, tok_dir, tensors):
    shutil.copytree(tok_dir, tmp_path / "te", dirs_exist_ok=True)
    save_file(tensors, str(tmp_path / "te" / "g.safetensors"))
    return tmp_path / "te" / "g.safetensors"


def test_error_missing_key(tmp_path, tok_dir, ref_model):
    sd = {k: v.clone() for k, v in ref_model.state_dict().items() if k != "layers.1.post_feedforward_layernorm.weight"}
    with pytest.raises(ValueError, match=r"missing \(1\): layers\.1\.post_feedforward_layernorm\.weight"):
        load_text_encoder(_file_with(tmp_path, tok_dir, sd))


def test_error_unexpected_key(tmp_path, tok_dir, ref_model):
    sd = {k: v.clone() for k, v in ref_model.state_dict().items()}
    sd["layers.0.self_attn.q_norm.weight"] = torch.ones(256)  # a Gemma-3 tensor
    with pytest.raises(ValueError, match=r"unexpected \(1\): layers\.0\.self_attn\.q_norm\.weight"):
        load_text_encoder(_file_with(tmp_path, tok_dir, sd))


def test_error_wrong_shape_against_config(tmp_path, tok_dir, ref_model):
    shutil.copytree(tok_dir, tmp_path / "g")
    ref_model.save_pretrained(str(tmp_path / "g"))
    cfg = json.loads((tmp_path / "g" / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (tmp_path / "g" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"wrong shape \(6\): layers\.0\.mlp\.down_proj\.weight \(64, 128\) "
                                         r"\(model: \(64, 96\)\)"):
        load_text_encoder(tmp_path / "g")


def test_error_config_of_another_model(tmp_path, tok_dir, ref_model):
    shutil.copytree(tok_dir, tmp_path / "g")
    ref_model.save_pretrained(str(tmp_path / "g"))
    (tmp_path / "g" / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ValueError, match=r"config\.json describes model_type 'llama'.*'gemma2'"):
        load_text_encoder(tmp_path / "g")


def test_error_head_dim_not_inferable(tmp_path, tok_dir, tok):
    model = tiny_gemma2(len(tok), head_dim=16)
    with pytest.raises(ValueError, match=r"q_proj has 32 rows and k_proj 16, not multiples of .* 256"):
        load_text_encoder(_file_with(tmp_path, tok_dir, dict(model.state_dict())))


def test_error_too_few_tensors_to_infer(tmp_path, tok_dir):
    tensors = {"embed_tokens.weight": torch.zeros(600, 64)}
    with pytest.raises(ValueError, match=r"cannot infer .*missing layers\.0\.self_attn\.q_proj\.weight"):
        load_text_encoder(_file_with(tmp_path, tok_dir, tensors))


def test_error_tokenizer_without_bos(tmp_path, ref_model):
    train_bpe_tokenizer(tmp_path / "g", bos=False)
    ref_model.save_pretrained(str(tmp_path / "g"))
    with pytest.raises(ValueError, match=r"does not start sequences with <bos>"):
        load_text_encoder(tmp_path / "g")


def test_error_tokenizer_without_pad(tmp_path, ref_model):
    train_bpe_tokenizer(tmp_path / "g", pad=False)
    ref_model.save_pretrained(str(tmp_path / "g"))
    with pytest.raises(ValueError, match=r"has no pad token"):
        load_text_encoder(tmp_path / "g")


def test_error_tokenizer_larger_than_embedding(tmp_path, tok_dir, tok):
    shutil.copytree(tok_dir, tmp_path / "g")
    tiny_gemma2(len(tok) - 10).save_pretrained(str(tmp_path / "g"))
    with pytest.raises(ValueError, match=rf"has {len(tok)} tokens but the model's embedding has {len(tok) - 10}"):
        load_text_encoder(tmp_path / "g")


def test_error_spiece_not_bytes(tmp_path, ref_model):
    sd = {"model." + k: v.clone() for k, v in ref_model.state_dict().items()}
    sd["spiece_model"] = torch.zeros(8)
    save_file(sd, str(tmp_path / "g.safetensors"))
    with pytest.raises(ValueError, match=r"'spiece_model' .* must be a 1-D uint8 tensor.*float32"):
        load_text_encoder(tmp_path / "g.safetensors")


@pytest.mark.parametrize("dtype", [torch.int8, "bf16"])
def test_error_bad_dtype(hf_folder, dtype):
    with pytest.raises(ValueError, match=r"dtype must be a floating torch\.dtype"):
        load_text_encoder(hf_folder, dtype=dtype)


# --- encode_prompt --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def diffusers_pipe(hf_folder):
    """A tiny SanaSprintPipeline whose tokenizer and Gemma2Model are loaded by transformers itself."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    transformer = diffusers.SanaTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
        num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=64,
        sample_size=8, guidance_embeds=True, qk_norm="rms_norm_across_heads")
    vae = diffusers.AutoencoderDC(
        in_channels=3, latent_channels=4, attention_head_dim=2, encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"), encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8), encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1),
        encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)), upsample_block_type="interpolate",
        downsample_block_type="Conv", decoder_norm_types="rms_norm", decoder_act_fns="silu")
    text_encoder = transformers.Gemma2Model.from_pretrained(str(hf_folder), dtype=F32,
                                                            attn_implementation="eager").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf_folder))
    return diffusers.SanaSprintPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                                        transformer=transformer, scheduler=diffusers.SCMScheduler())


def diffusers_chi():
    """diffusers' default complex_human_instruction (a default argument of SanaSprintPipeline.__call__)."""
    from diffusers import SanaSprintPipeline

    return inspect.signature(SanaSprintPipeline.__call__).parameters["complex_human_instruction"].default


@pytest.mark.parametrize("chi", [True, False])
def test_encode_prompt_equals_diffusers(encoder, diffusers_pipe, chi):
    prompts = [PROMPTS[2], PROMPTS[0]]  # 26 and 6 tokens: the first is truncated, the second padded
    with torch.no_grad():
        ref_embeds, ref_mask = diffusers_pipe.encode_prompt(
            prompts, device=torch.device("cpu"), max_sequence_length=16,
            complex_human_instruction=diffusers_chi() if chi else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the truncation warning has its own test
        embeds, mask = encode_prompt(encoder, prompts, chi=chi, max_tokens=16, quote_style="diffusers",
                                     lowercase=True)
    assert embeds.shape == (2, 16, 64) and embeds.dtype == F32
    assert torch.equal(embeds, ref_embeds)
    assert mask.dtype == ref_mask.dtype == torch.int64 and torch.equal(mask, ref_mask)
    assert 0 < mask[1].sum() < mask[0].sum()  # right padding, different lengths
    if chi:  # NVlabs' double quotes are other tokens, hence other embeddings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            nvlabs, _ = encode_prompt(encoder, prompts, max_tokens=16, lowercase=True)
        assert not torch.equal(nvlabs, embeds)


def test_chi_text_matches_both_codebases():
    assert chi_text() == "\n".join(C.CHI_LINES) and '"Enhanced prompt"' in chi_text()
    assert chi_text("diffusers") == "\n".join(diffusers_chi())
    assert chi_text().endswith("User Prompt: ")


def test_chi_selection_keeps_bos_and_tail(encoder, tok):
    """Independent of diffusers: row 0 is the <bos> state, rows 1.. the last max_tokens-1 positions."""
    text = chi_text() + PROMPTS[0]
    ids = tok(text, padding="max_length", max_length=len(tok.encode(chi_text())) + 14, return_tensors="pt")
    with torch.no_grad():
        full = encoder.model(**ids).last_hidden_state[0]
    embeds, mask = encode_prompt(encoder, PROMPTS[0], max_tokens=16)
    assert torch.equal(embeds[0, 0], full[0]) and torch.equal(embeds[0, 1:], full[-15:])
    assert torch.equal(mask[0], torch.cat([ids["attention_mask"][0, :1], ids["attention_mask"][0, -15:]]))


def test_strip_lowercase_and_str_input(encoder):
    base, _ = encode_prompt(encoder, ["a cat"], chi=False, max_tokens=8)
    assert torch.equal(encode_prompt(encoder, "  a cat \n", chi=False, max_tokens=8)[0], base)
    upper, _ = encode_prompt(encoder, "A Cat", chi=False, max_tokens=8)
    assert not torch.equal(upper, base)
    assert torch.equal(encode_prompt(encoder, "A Cat", chi=False, max_tokens=8, lowercase=True)[0], base)


def test_truncation_warning_counts_dropped_tokens(encoder, tok):
    prompt = PROMPTS[2].strip()
    dropped = len(tok.encode(prompt)) - 8
    with pytest.warns(UserWarning, match=rf"prompt 'Portrait of an old sailor with a whit\.\.\.' is too long "
                                         rf"for max_tokens=8: its last {dropped} tokens were dropped"):
        encode_prompt(encoder, ["a cat", prompt], chi=False, max_tokens=8)
    dropped_chi = len(tok.encode(chi_text() + prompt)) - (len(tok.encode(chi_text())) + 16 - 2)
    with pytest.warns(UserWarning, match=rf"prompt 'Portrait.*max_tokens=16: its last {dropped_chi} tokens"):
        encode_prompt(encoder, [prompt], max_tokens=16, cache=PromptCache(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encode_prompt(encoder, ["a cat"], max_tokens=16)


def test_encode_prompt_errors(encoder):
    with pytest.raises(ValueError, match=r"prompts is empty"):
        encode_prompt(encoder, [])
    with pytest.raises(TypeError, match=r"prompts\[1\] must be a str, got int"):
        encode_prompt(encoder, ["a", 3])
    with pytest.raises(ValueError, match=r"max_tokens must be an integer >= 2, got 1"):
        encode_prompt(encoder, "a", max_tokens=1)
    with pytest.raises(ValueError, match=r"quote_style must be one of \('nvlabs', 'diffusers'\), got 'hf'"):
        encode_prompt(encoder, "a", quote_style="hf")


# --- cache ----------------------------------------------------------------------------------------


@pytest.fixture()
def counted(hf_folder):
    """A fresh encoder whose Gemma forward calls are recorded as input_ids shapes."""
    encoder = load_text_encoder(hf_folder, dtype=F32)
    calls = []
    encoder.model.register_forward_hook(lambda m, a, kw, out: calls.append(tuple(kw["input_ids"].shape)),
                                        with_kwargs=True)
    return encoder, calls


def test_cache_hit_skips_the_model(counted):
    encoder, calls = counted
    cache = PromptCache(8)
    first = encode_prompt(encoder, PROMPTS[:2], max_tokens=16, cache=cache)
    plain = encode_prompt(encoder, PROMPTS[:2], max_tokens=16)
    assert len(calls) == 2 and all(torch.equal(a, b) for a, b in zip(first, plain))
    again = encode_prompt(encoder, [PROMPTS[1], PROMPTS[0]], max_tokens=16, cache=cache)
    assert len(calls) == 2 and cache.hits == 2
    assert torch.equal(again[0], first[0].flip(0)) and torch.equal(again[1], first[1].flip(0))
    encode_prompt(encoder, [PROMPTS[0], "a new prompt", "a new prompt"], max_tokens=16, cache=cache)
    assert calls[-1][0] == 1 and len(calls) == 3  # only the new prompt ran, once
    encode_prompt(encoder, PROMPTS[0], chi=False, max_tokens=16, cache=cache)
    encode_prompt(encoder, PROMPTS[0], max_tokens=24, cache=cache)
    assert len(calls) == 5  # other options are other entries


def test_cache_output_is_not_shared(counted):
    encoder, _ = counted
    cache = PromptCache(4)
    embeds, _ = encode_prompt(encoder, "a cat", max_tokens=16, cache=cache)
    keep = embeds.clone()
    embeds.zero_()
    assert torch.equal(encode_prompt(encoder, "a cat", max_tokens=16, cache=cache)[0], keep)


def test_cache_evicts_least_recently_used(counted):
    encoder, calls = counted
    cache = PromptCache(2)
    for prompt in ("a", "b", "a", "c"):  # "a" is used again before "c" arrives, so "b" goes
        encode_prompt(encoder, prompt, chi=False, max_tokens=8, cache=cache)
    assert len(calls) == 3 and len(cache) == 2
    encode_prompt(encoder, "a", chi=False, max_tokens=8, cache=cache)
    assert len(calls) == 3
    encode_prompt(encoder, "b", chi=False, max_tokens=8, cache=cache)
    assert len(calls) == 4


def test_cache_batch_larger_than_cache(counted):
    encoder, calls = counted
    cache = PromptCache(1)
    embeds, _ = encode_prompt(encoder, list(PROMPTS), chi=False, max_tokens=32, cache=cache)
    assert len(calls) == 1 and len(cache) == 1
    assert torch.equal(embeds, encode_prompt(encoder, list(PROMPTS), chi=False, max_tokens=32)[0])


def test_cache_key_includes_encoder_identity(counted, tmp_path, tok_dir, ref_model):
    encoder, calls = counted
    shutil.copytree(tok_dir, tmp_path / "g")
    ref_model.save_pretrained(str(tmp_path / "g"))
    other = load_text_encoder(tmp_path / "g", dtype=F32)
    cache = PromptCache(4)
    encode_prompt(encoder, "a cat", max_tokens=16, cache=cache)
    encode_prompt(other, "a cat", max_tokens=16, cache=cache)
    assert len(cache) == 2 and cache.hits == 0


@pytest.mark.parametrize("size", [0, -1, 2.5, True])
def test_cache_size_must_be_positive_int(size):
    with pytest.raises(ValueError, match=r"max_entries must be an integer >= 1"):
        PromptCache(size)
