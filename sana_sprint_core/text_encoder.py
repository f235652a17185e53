"""Gemma-2 text encoder of SANA-Sprint: loading, prompt encoding (CHI + token selection), caching.

`load_text_encoder(path)` accepts
  * a Hugging Face folder: config.json, tokenizer files, and model.safetensors or the shards listed in
    model.safetensors.index.json (Gemma2Model keys, or Gemma2ForCausalLM keys with the `model.` prefix);
  * a diffusers pipeline folder (weights in text_encoder/, tokenizer in tokenizer/);
  * one .safetensors file, keys with or without `model.`, such as ComfyUI's packaged gemma_2_2b files,
    which carry the SentencePiece model as a uint8 tensor under `spiece_model`.
Tokenizer rule: the `spiece_model` tensor in the weights if there is one; otherwise the first folder
holding tokenizer.json or tokenizer.model among
  * folder input: the weights folder itself, then its sibling `tokenizer/` (diffusers layout);
  * file input: the file's own folder, then a sibling folder named like the file's stem
    (models/te/gemma-2-2b-it.safetensors -> models/te/gemma-2-2b-it/).
Config rule: config.json beside the weights when present; otherwise it is inferred from the tensor
shapes, with gemma-2-2b's other hyperparameters (constants.GEMMA2_2B_*).
`lm_head.weight` (Gemma2ForCausalLM's output head, tied to the embedding) is ignored; every other key
must match transformers' Gemma2Model exactly, in name and shape.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from . import constants as C
from .precision import compute_dtype as precision_compute_dtype
from .precision import is_fp8
from .text_cache import PromptCache

QUOTE_STYLES = ("nvlabs", "diffusers")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
_TOKENIZER_EXTRA = ("tokenizer_config.json", "special_tokens_map.json")
_INDEX_FILE = "model.safetensors.index.json"
_PREFIX = "model."
_IGNORED_KEYS = ("lm_head.weight",)
_DIT_PREFIXES = ("transformer_blocks.", "caption_projection.", "blocks.", "y_embedder.", "x_embedder.")
_SHAPE_KEYS = ("embed_tokens.weight", "layers.0.self_attn.q_proj.weight", "layers.0.self_attn.k_proj.weight",
               "layers.0.mlp.gate_proj.weight")


class TextEncoder:
    """A Gemma tokenizer plus a transformers Gemma2Model, and an `identity` string for cache keys."""

    def __init__(self, tokenizer, model, identity: str):
        self.tokenizer = tokenizer
        self.model = model
        self.identity = identity

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the model runs in (of the embeddings encode_prompt returns): the embedding weights'
        dtype, or the compute dtype they are cast to (`store_weights`)."""
        embed = self.model.embed_tokens
        return getattr(embed, "compute_dtype", None) or embed.weight.dtype

    @property
    def storage_dtype(self) -> torch.dtype:
        """The dtype the Linear weights are stored in."""
        return self.model.layers[0].mlp.gate_proj.weight.dtype

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return self.model.embed_tokens.weight.device

    @property
    def hidden_size(self) -> int:
        """Width of the embeddings (2304 for gemma-2-2b)."""
        return self.model.config.hidden_size

    def __repr__(self) -> str:
        return f"TextEncoder({self.identity}, hidden={self.hidden_size}, {self.dtype}, {self.device})"


@dataclass(frozen=True)
class _Source:
    """Where the pieces of one text encoder live on disk."""

    where: Path
    weight_files: tuple[Path, ...]
    config_file: Path | None
    tokenizer_dirs: tuple[Path, ...]


# --- loading -------------------------------------------------------------------------------------


def load_text_encoder(path: str | Path, dtype: torch.dtype | None = None,
                      device: str | torch.device = "cpu", compute_dtype: torch.dtype | None = None) -> TextEncoder:
    """Load Gemma-2 (tokenizer + Gemma2Model) from a folder or a .safetensors file; dtype None = bf16.

    dtype is the storage dtype of the weights. compute_dtype (None: the storage dtype; for fp8 the
    device's, precision.compute_dtype) is what the model runs in: then the Linear and embedding
    weights stay in storage and are cast at use (`store_weights`). See the module docstring for the
    accepted layouts and the tokenizer / config rules.
    """
    storage = _check_dtype(dtype)
    if compute_dtype is None and is_fp8(storage):
        compute_dtype = precision_compute_dtype(storage, device)
    dtype = torch.bfloat16 if is_fp8(storage) else storage  # read dtype; fp8 is applied after
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"text encoder path {path} does not exist; expected a Gemma-2 folder "
                                f"or a .safetensors file (e.g. a download of {C.HF_GEMMA})")
    source = _resolve_source(path)
    index = _key_index(source.weight_files)
    key_map = _gemma_key_map(index, path)
    shapes = {ours: index[theirs][1] for ours, theirs in key_map.items()}
    config = _config_from_json(source.config_file) if source.config_file else _infer_config(shapes, path)
    model = _empty_model(config)
    _check_keys(model, shapes, path)
    spiece = index[C.COMFY_SPIECE_KEY][0] if C.COMFY_SPIECE_KEY in index else None
    tokenizer, tokenizer_files = _load_tokenizer(source, spiece)
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"the tokenizer for {path} ({tokenizer_files[0]}) has {len(tokenizer)} tokens but the "
                         f"model's embedding has {config.vocab_size} rows; tokenizer and weights do not match")
    model.load_state_dict(_read_state_dict(key_map, index, dtype), strict=True, assign=True)
    if compute_dtype is not None and compute_dtype != storage:
        store_weights(model, storage, compute_dtype)
    model = model.eval().requires_grad_(False).to(device)
    extra = (source.config_file,) if source.config_file else ()
    return TextEncoder(tokenizer, model, _identity([*source.weight_files, *extra, *tokenizer_files]))


def store_weights(model: torch.nn.Module, storage: torch.dtype, compute: torch.dtype) -> None:
    """Keep the Linear and embedding weights of Gemma-2 in `storage` (fp8: half of bf16's memory) and
    run the model in `compute`: the Linears cast their weight to the input's dtype at use (ops.Linear),
    the embedding returns its rows in `compute`; the norms (small) keep their dtype and compute in
    fp32 as Gemma-2's own do."""
    from . import ops

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.__class__ = ops.Linear
                module.weight = torch.nn.Parameter(module.weight.to(storage), requires_grad=False)
                if module.bias is not None:
                    module.bias = torch.nn.Parameter(module.bias.to(compute), requires_grad=False)
        embed = model.embed_tokens
        model.embed_tokens = _StoredEmbedding(embed.weight.to(storage), embed.padding_idx,
                                              getattr(embed, "scalar_embed_scale", 1.0), compute)


class _StoredEmbedding(torch.nn.Module):
    """Gemma-2's scaled word embedding (rows x sqrt(hidden), transformers' Gemma2TextScaledWordEmbedding)
    over a weight stored in another dtype: rows are read in storage, scaled in `compute`. Same key."""

    def __init__(self, weight: torch.Tensor, padding_idx: int | None, scale: float, compute: torch.dtype):
        super().__init__()
        self.weight = torch.nn.Parameter(weight, requires_grad=False)
        self.padding_idx, self.scale, self.compute_dtype = padding_idx, scale, compute

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = torch.nn.functional.embedding(ids, self.weight, self.padding_idx).to(self.compute_dtype)
        return rows * torch.tensor(self.scale, dtype=self.compute_dtype)


def _check_dtype(dtype: torch.dtype | None) -> torch.dtype:
    """bf16 by default (as NVlabs and diffusers run Gemma); any floating torch.dtype on request."""
    if dtype is None:
        return torch.bfloat16
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype such as torch.bfloat16 or torch.float32, "
                         f"got {dtype!r}")
    return dtype


def _resolve_source(path: Path) -> _Source:
    """Find weights, config and tokenizer candidates for a folder or single-file input."""
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"{path} is not a .safetensors file; the text encoder loads a Gemma-2 folder "
                             f"or a single .safetensors file (e.g. from {C.HF_GEMMA})")
        return _Source(path, (path,), None, (path.parent, path.parent / path.stem))
    weights_dir = path
    if not _weight_files(path) and (path / "text_encoder").is_dir():
        weights_dir = path / "text_encoder"  # diffusers pipeline: text_encoder/ + tokenizer/
    files = _weight_files(weights_dir)
    if not files:
        raise ValueError(f"no Gemma-2 weights in {path}: found {_describe_dir(path)}; needed config.json, "
                         f"tokenizer files and model.safetensors (or shards listed in {_INDEX_FILE}), "
                         f"e.g. a download of {C.HF_GEMMA}")
    config = weights_dir / "config.json"
    return _Source(path, tuple(files), config if config.is_file() else None,
                   (weights_dir, weights_dir.parent / "tokenizer"))


def _weight_files(folder: Path) -> list[Path]:
    """Safetensors weight files of a folder: the shards of the index json, model.safetensors, or the only one."""
    index = folder / _INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index} has no 'weight_map'; expected {{tensor name: shard file}}")
        files = [folder / name for name in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{index} lists shards that are not in {folder}: {', '.join(missing)}")
        return files
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    found = sorted(folder.glob("*.safetensors"))
    if len(found) > 1:
        raise ValueError(f"{folder} holds several .safetensors files ({', '.join(f.name for f in found)}) but "
                         f"no {_INDEX_FILE}; keep one Gemma-2 weights file there or add the index")
    return found


def _describe_dir(folder: Path) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if not names:
        return "nothing (the folder is empty)"
    return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")


def _open(file: Path):
    try:
        return safe_open(str(file), framework="pt")
    except (SafetensorError, OSError) as err:
        raise ValueError(f"cannot read {file} as a safetensors file: {err}") from err


def _key_index(files: Iterable[Path]) -> dict[str, tuple[Path, tuple[int, ...]]]:
    """{key in file: (file, shape)} from the safetensors headers only (no tensor data is read)."""
    index = {}
    for file in files:
        with _open(file) as st:
            for key in st.keys():
                index[key] = (file, tuple(st.get_slice(key).get_shape()))
    return index


def _gemma_key_map(keys: Iterable[str], where: Path) -> dict[str, str]:
    """{Gemma2Model key: key in the file}, without lm_head and the embedded tokenizer."""
    keys = [k for k in keys if k not in _IGNORED_KEYS and k != C.COMFY_SPIECE_KEY]
    if _PREFIX + "embed_tokens.weight" in keys:
        strip = len(_PREFIX)  # Gemma2ForCausalLM / ComfyUI layout: every key starts with `model.`
        return {(k[strip:] if k.startswith(_PREFIX) else k): k for k in keys}
    if "embed_tokens.weight" in keys:
        return {k: k for k in keys}
    sample = ", ".join(repr(k) for k in sorted(keys)[:4]) or "no tensors"
    hint = ("; it looks like a Sana DiT checkpoint, which the DiT loader reads"
            if any(k.startswith(_DIT_PREFIXES) for k in keys) else "")
    raise ValueError(f"{where} is not a Gemma-2 text encoder: none of its {len(keys)} tensors ({sample}, ...) "
                     f"is 'embed_tokens.weight' or 'model.embed_tokens.weight'{hint}. Needed: the "
                     f"Gemma-2-2b weights, e.g. {C.HF_GEMMA}")


def _config_from_json(path: Path):
    from transformers import Gemma2Config

    raw = json.loads(path.read_text(encoding="utf-8"))
    if raw.get("model_type") != "gemma2":
        raise ValueError(f"{path} describes model_type {raw.get('model_type')!r}; the text encoder must be "
                         f"Gemma-2 (model_type 'gemma2'), e.g. {C.HF_GEMMA}")
    return Gemma2Config.from_dict(raw, attn_implementation="eager")


def _infer_config(shapes: dict[str, tuple[int, ...]], where: Path):
    """Gemma2Config from tensor shapes; head_dim and the rest are gemma-2-2b's (not visible in shapes)."""
    from transformers import Gemma2Config

    missing = [k for k in _SHAPE_KEYS if k not in shapes]
    if missing:
        raise ValueError(f"cannot infer the Gemma-2 config of {where}: missing {', '.join(missing)}")
    vocab, hidden = shapes["embed_tokens.weight"]
    layer_ids = {int(k.split(".")[1]) for k in shapes if k.startswith("layers.") and k.split(".")[1].isdigit()}
    q_rows = shapes["layers.0.self_attn.q_proj.weight"][0]  # num_heads * head_dim
    kv_rows = shapes["layers.0.self_attn.k_proj.weight"][0]  # num_kv_heads * head_dim
    head_dim = C.GEMMA2_2B_HEAD_DIM
    if q_rows % head_dim or kv_rows % head_dim:
        raise ValueError(f"cannot infer the Gemma-2 config of {where}: q_proj has {q_rows} rows and k_proj "
                         f"{kv_rows}, not multiples of gemma-2-2b's head_dim {head_dim}; add a config.json")
    return Gemma2Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=shapes["layers.0.mlp.gate_proj.weight"][0],
        num_hidden_layers=max(layer_ids) + 1, num_attention_heads=q_rows // head_dim,
        num_key_value_heads=kv_rows // head_dim, head_dim=head_dim,
        query_pre_attn_scalar=C.GEMMA2_2B_QUERY_PRE_ATTN_SCALAR, rms_norm_eps=C.GEMMA2_2B_RMS_NORM_EPS,
        attn_logit_softcapping=C.GEMMA2_2B_ATTN_SOFTCAP, final_logit_softcapping=C.GEMMA2_2B_FINAL_SOFTCAP,
        sliding_window=C.GEMMA2_2B_SLIDING_WINDOW, rope_theta=C.GEMMA2_2B_ROPE_THETA,
        max_position_embeddings=C.GEMMA2_2B_MAX_POSITIONS, hidden_activation=C.GEMMA2_2B_ACTIVATION,
        pad_token_id=C.GEMMA_PAD_ID, eos_token_id=C.GEMMA_EOS_ID, bos_token_id=C.GEMMA_BOS_ID,
        attn_implementation="eager")


def _empty_model(config):
    """Gemma2Model with parameters on the meta device; buffers (rotary inv_freq, embed scale) are real."""
    from accelerate import init_empty_weights
    from transformers import Gemma2Model

    with init_empty_weights(include_buffers=False):
        return Gemma2Model(config)


def _check_keys(model, shapes: dict[str, tuple[int, ...]], where: Path) -> None:
    """Raise naming every missing, unexpected or wrongly shaped tensor (strict loading)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(expected.keys() - shapes.keys())
    unexpected = sorted(shapes.keys() - expected.keys())
    wrong = sorted(f"{k} {shapes[k]} (model: {expected[k]})" for k in expected.keys() & shapes.keys()
                   if shapes[k] != expected[k])
    problems = [f"{label} ({len(items)}): {', '.join(items[:8])}{' ...' if len(items) > 8 else ''}"
                for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                if items]
    if problems:
        raise ValueError(f"the Gemma-2 weights in {where} do not match Gemma2Model: " + "; ".join(problems))


def _read_state_dict(key_map: dict[str, str], index, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Read the mapped tensors file by file, casting floating ones to `dtype`."""
    by_file: dict[Path, list[tuple[str, str]]] = {}
    for ours, theirs in key_map.items():
        by_file.setdefault(index[theirs][0], []).append((ours, theirs))
    state_dict = {}
    for file, pairs in by_file.items():
        with _open(file) as st:
            for ours, theirs in pairs:
                tensor = st.get_tensor(theirs)
                state_dict[ours] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    return state_dict


def _load_tokenizer(source: _Source, spiece_file: Path | None):
    """(tokenizer, files it came from), by the tokenizer rule of the module docstring."""
    if spiece_file is not None:
        return _tokenizer_from_spiece(spiece_file), [spiece_file]
    for folder in source.tokenizer_dirs:
        if any((folder / name).is_file() for name in _TOKENIZER_FILES):
            files = [folder / n for n in _TOKENIZER_FILES + _TOKENIZER_EXTRA if (folder / n).is_file()]
            return _tokenizer_from_folder(folder), files
    looked = " and ".join(str(d) for d in source.tokenizer_dirs)
    raise ValueError(f"no tokenizer for the Gemma-2 weights in {source.where}: looked for "
                     f"{' or '.join(_TOKENIZER_FILES)} in {looked} and for an embedded "
                     f"'{C.COMFY_SPIECE_KEY}' tensor; copy the tokenizer files of {C.HF_GEMMA} into "
                     f"{source.tokenizer_dirs[0]}")


def _tokenizer_from_folder(folder: Path):
    from transformers import AutoTokenizer, GemmaTokenizer

    if (folder / "tokenizer_config.json").is_file():  # the folder names its tokenizer class
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, padding_side="right")
    else:
        tok = GemmaTokenizer.from_pretrained(str(folder), local_files_only=True, add_bos_token=True,
                                             padding_side="right")
    return _checked_tokenizer(tok, folder)


def _tokenizer_from_spiece(file: Path):
    """GemmaTokenizer from the SentencePiece bytes stored under `spiece_model` (ComfyUI packaging)."""
    from transformers import GemmaTokenizer

    with _open(file) as st:
        data = st.get_tensor(C.COMFY_SPIECE_KEY)
    if data.dtype != torch.uint8 or data.dim() != 1:
        raise ValueError(f"'{C.COMFY_SPIECE_KEY}' in {file} must be a 1-D uint8 tensor of SentencePiece model "
                         f"bytes, got {data.dtype} {tuple(data.shape)}")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.model").write_bytes(data.numpy().tobytes())
        tok = GemmaTokenizer.from_pretrained(tmp, local_files_only=True, add_bos_token=True,
                                             padding_side="right")
    return _checked_tokenizer(tok, file)


def _checked_tokenizer(tok, where: Path):
    """Sana's token selection relies on <bos> first and on a pad token; refuse tokenizers without them."""
    ids = tok("a")["input_ids"]
    if tok.bos_token_id is None or not ids or ids[0] != tok.bos_token_id:
        raise ValueError(f"the tokenizer from {where} does not start sequences with <bos> (got ids {ids}); "
                         f"Sana's token selection needs it, use the Gemma tokenizer of {C.HF_GEMMA}")
    if tok.pad_token_id is None:
        raise ValueError(f"the tokenizer from {where} has no pad token; use the Gemma tokenizer of {C.HF_GEMMA}")
    return tok


def _identity(files: Iterable[Path]) -> str:
    """Cache identity: hash of the resolved paths, sizes and modification times of the files used."""
    digest = hashlib.sha1()
    for file in sorted({Path(f).resolve() for f in files}):
        stat = file.stat()
        digest.update(f"{file}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return f"gemma2:{digest.hexdigest()[:16]}"


# --- prompt encoding -----------------------------------------------------------------------------


def chi_text(quote_style: str = "nvlabs") -> str:
    """The complex human instruction as one string; "diffusers" spells 'Enhanced prompt' in single quotes."""
    _check_quote_style(quote_style)
    text = "\n".join(C.CHI_LINES)  # its only double quotes are the two around "Enhanced prompt"
    return text.replace('"', "'") if quote_style == "diffusers" else text


def encode_prompt(text_encoder: TextEncoder, prompts: str | Sequence[str], *, chi: bool = True,
                  max_tokens: int = C.MAX_TEXT_TOKENS, quote_style: str = "nvlabs", lowercase: bool = False,
                  cache: PromptCache | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode prompts into (embeds (B, max_tokens, hidden) in the encoder's dtype, mask (B, max_tokens) int64).

    Sana's recipe (sana_sprint_model.md section 3): prompts are stripped (and lowercased if asked, as
    diffusers does); with `chi` the CHI text is prepended and the sequence is right-padded / truncated to
    n_chi + max_tokens - 2 tokens; Gemma's last_hidden_state (after its final norm) is then cut to the
    <bos> position plus the last max_tokens - 1 positions. A `cache` serves repeated prompts without
    running the model.
    """
    texts = _prepare_prompts(prompts, lowercase)
    _check_quote_style(quote_style)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 2:
        raise ValueError(f"max_tokens must be an integer >= 2, got {max_tokens!r}")
    if cache is None:
        return _encode_batch(text_encoder, texts, chi, max_tokens, quote_style)
    found = {}
    for text in dict.fromkeys(texts):
        hit = cache.get(_cache_key(text_encoder, text, chi, max_tokens, quote_style))
        if hit is not None:
            found[text] = hit
    missing = [t for t in dict.fromkeys(texts) if t not in found]
    if missing:
        embeds, mask = _encode_batch(text_encoder, missing, chi, max_tokens, quote_style)
        for i, text in enumerate(missing):  # clones: a cached row must not pin the whole batch tensor
            found[text] = (embeds[i].clone(), mask[i].clone())
            cache.put(_cache_key(text_encoder, text, chi, max_tokens, quote_style), found[text])
    return torch.stack([found[t][0] for t in texts]), torch.stack([found[t][1] for t in texts])


def _prepare_prompts(prompts: str | Sequence[str], lowercase: bool) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    if prompts is None or not hasattr(prompts, "__iter__"):
        raise TypeError(f"prompts must be a str or a list of str, got {type(prompts).__name__}")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty; pass at least one prompt (an empty string is a valid prompt)")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompts[{i}] must be a str, got {type(p).__name__}")
    return [p.strip().lower() if lowercase else p.strip() for p in prompts]


def _check_quote_style(quote_style: str) -> None:
    if quote_style not in QUOTE_STYLES:
        raise ValueError(f"quote_style must be one of {QUOTE_STYLES}, got {quote_style!r}")


def _cache_key(encoder: TextEncoder, text: str, chi: bool, max_tokens: int, quote_style: str) -> tuple:
    return (encoder.identity, str(encoder.storage_dtype), str(encoder.dtype), str(encoder.device), text, bool(chi),
            max_tokens, quote_style if chi else None)


def _encode_batch(encoder: TextEncoder, prompts: list[str], chi: bool, max_tokens: int,
                  quote_style: str) -> tuple[torch.Tensor, torch.Tensor]:
    tok = encoder.tokenizer
    texts, max_length = prompts, max_tokens
    if chi:
        prefix = chi_text(quote_style)
        # n_chi counts <bos>; NVlabs: "magic number 2: [bos], [_]" (the trailing-space token of the CHI
        # merges into the prompt), so the prompt keeps max_tokens - 2 tokens after the CHI.
        max_length = len(tok.encode(prefix)) + max_tokens - 2
        texts = [prefix + p for p in prompts]
    _warn_truncation(tok, prompts, texts, max_length, max_tokens)
    batch = tok(texts, padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True,
                padding_side="right", return_tensors="pt")
    ids = batch["input_ids"].to(encoder.device)  # (B, max_length)
    mask = batch["attention_mask"].to(device=encoder.device, dtype=torch.int64)  # (B, max_length)
    with torch.no_grad():  # not inference_mode: cached embeddings may feed a trained DiT later
        hidden = encoder.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    # <bos> + the last max_tokens - 1 positions; without CHI max_length == max_tokens: the identity.
    keep = torch.tensor([0, *range(max_length - max_tokens + 1, max_length)], device=encoder.device)
    return hidden[:, keep], mask[:, keep]  # (B, max_tokens, hidden), (B, max_tokens)


def _warn_truncation(tok, prompts: list[str], texts: list[str], max_length: int, max_tokens: int) -> None:
    lengths = [len(ids) for ids in tok(texts, add_special_tokens=True)["input_ids"]]
    for prompt, n in zip(prompts, lengths):
        if n > max_length:
            shown = prompt if len(prompt) <= 40 else prompt[:37] + "..."
            warnings.warn(f"prompt {shown!r} is too long for max_tokens={max_tokens}: its last "
                          f"{n - max_length} tokens were dropped", UserWarning, stacklevel=4)
