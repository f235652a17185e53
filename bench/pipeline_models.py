"""Random-weight SANA-Sprint model sets for the pipeline benchmark: ours and diffusers' on the same tensors.

Real widths, depth chosen by the caller: the Sprint DiT preset (2240 wide for 1.6B, 1152 for 0.6B),
Gemma-2 at gemma-2-2b's width (transformers' Gemma2Config defaults are gemma-2-2b: 2304 wide, 8 heads,
4 KV heads, head dim 256, MLP 9216), DC-AE f32c32 (the real 312 M-parameter autoencoder). Every model
is built on the meta device, materialised on the target device and filled in place with seeded random
numbers; our DiT and DC-AE are then assigned diffusers' tensors (one copy of each weight), and both
pipelines share the one transformers Gemma2Model. The tokenizer is a small BPE trained in code
(tests/fixtures/text.py), so the vocabulary is small unless `vocab` asks for Gemma's 256000 rows.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import nn

from bench.random_weights import fill_random
from sana_sprint_core.acceleration import fast_cpu_linears
from sana_sprint_core.dcae import DCAE_F32C32, DCAEConfig, build_from_state_dict
from sana_sprint_core.dit import SanaSprintDiT
from sana_sprint_core.dit_config import PRESETS, DiTConfig
from sana_sprint_core.pipeline import PromptOptions
from sana_sprint_core.text_encoder import TextEncoder

# Ours encodes prompts the way diffusers' pipeline does (lowercase, its CHI spelling), so both do
# the same work and the outputs can be compared.
DIFFUSERS_PROMPTS = PromptOptions(quote_style="diffusers", lowercase=True)


# --smoke: tiny widths (a test runs the benchmark end to end in seconds).
SMOKE_DIT = DiTConfig(hidden_size=64, num_layers=1, num_heads=2, cross_heads=2, caption_channels=64)
SMOKE_GEMMA = dict(hidden_size=64, intermediate_size=128, num_attention_heads=2, num_key_value_heads=1, head_dim=32)
SMOKE_DCAE = DCAEConfig(
    latent_channels=32, widths=(8, 8, 16, 16, 32, 32), encoder_depths=(1,) * 6, decoder_depths=(1,) * 6,
    encoder_attention=(False,) * 3 + (True,) * 3, decoder_attention=(False,) * 3 + (True,) * 3,
    attention_head_dim=8)


@dataclass(frozen=True)
class SetSpec:
    """What to build: DiT preset and depth, Gemma depth and vocabulary, device, dtype (smoke: tiny)."""

    preset: str = "sprint_1600m"
    dit_layers: int | None = 2  # None = the preset's full depth
    gemma_layers: int | None = 2  # None = gemma-2-2b's 26 (transformers' default)
    vocab: int | None = None  # None = the trained tokenizer's size; 256000 = gemma-2-2b's embedding
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    seed: int = 0
    smoke: bool = False

    def dit_config(self) -> DiTConfig:
        cfg = SMOKE_DIT if self.smoke else PRESETS[self.preset]
        return cfg if self.dit_layers is None else cfg.replace(num_layers=self.dit_layers)

    @property
    def dcae(self) -> DCAEConfig:
        return SMOKE_DCAE if self.smoke else DCAE_F32C32


def _materialise(model: nn.Module, spec: SetSpec, seed: int) -> nn.Module:
    """Meta parameters -> empty storage on the device in the dtype, then a seeded random fill.

    Buffers (Gemma's rotary frequencies) were built real (`_empty`) and only move to the device.
    """
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[name] = nn.Parameter(
                    torch.empty(p.shape, device=spec.device, dtype=spec.dtype), requires_grad=False)
        for name, b in list(module._buffers.items()):
            if b is not None:
                module._buffers[name] = b.to(spec.device)
    return fill_random(model, seed).eval()


def _empty(cls, *args, **kwargs):
    """cls(*args, **kwargs) with parameters on the meta device and real buffers."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return cls(*args, **kwargs)


def diffusers_transformer(spec: SetSpec):
    """diffusers SanaTransformer2DModel of the spec's Sprint config (CFG embedder, QK norm)."""
    import diffusers

    cfg = spec.dit_config()
    model = _empty(
        diffusers.SanaTransformer2DModel, num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
        num_layers=cfg.num_layers, num_cross_attention_heads=cfg.cross_heads,
        cross_attention_head_dim=cfg.cross_head_dim, cross_attention_dim=cfg.hidden_size,
        caption_channels=cfg.caption_channels, sample_size=32, interpolation_scale=None, guidance_embeds=True,
        qk_norm="rms_norm_across_heads")
    return _materialise(model, spec, spec.seed)


def diffusers_autoencoder(spec: SetSpec):
    """diffusers AutoencoderDC of the spec's DC-AE config."""
    from diffusers import AutoencoderDC

    cfg = spec.dcae
    kinds = tuple("EfficientViTBlock" if a else "ResBlock" for a in cfg.decoder_attention)
    ms = tuple(cfg.multiscale_kernels if a else () for a in cfg.decoder_attention)
    model = _empty(
        AutoencoderDC, in_channels=cfg.in_channels, latent_channels=cfg.latent_channels,
        attention_head_dim=cfg.attention_head_dim, encoder_block_types=kinds, decoder_block_types=kinds,
        encoder_block_out_channels=cfg.widths, decoder_block_out_channels=cfg.widths,
        encoder_layers_per_block=cfg.encoder_depths, decoder_layers_per_block=cfg.decoder_depths,
        encoder_qkv_multiscales=ms, decoder_qkv_multiscales=ms, upsample_block_type="interpolate",
        downsample_block_type="Conv", decoder_norm_types="rms_norm", decoder_act_fns="silu",
        scaling_factor=cfg.scaling_factor)
    return _materialise(model, spec, spec.seed + 1)


def gemma(spec: SetSpec, vocab: int):
    """transformers Gemma2Model at gemma-2-2b's width (smoke: tiny) with `gemma_layers` layers, eager attention."""
    from transformers import Gemma2Config, Gemma2Model

    sizes = SMOKE_GEMMA if spec.smoke else {}
    depth = {} if spec.gemma_layers is None else {"num_hidden_layers": spec.gemma_layers}
    config = Gemma2Config(**sizes, **depth, vocab_size=vocab, attn_implementation="eager")
    return _materialise(_empty(Gemma2Model, config), spec, spec.seed + 2)


def tokenizer():
    """The BPE tokenizer of tests/fixtures/text.py (Gemma's special ids), loaded as transformers does."""
    from transformers import AutoTokenizer

    from tests.fixtures.text import train_bpe_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        train_bpe_tokenizer(tmp)
        return AutoTokenizer.from_pretrained(tmp, padding_side="right")


def ours_dit(ref, spec: SetSpec) -> SanaSprintDiT:
    """Our DiT holding the diffusers transformer's tensors (assigned, not copied)."""
    dit = SanaSprintDiT(spec.dit_config(), device="meta", dtype=spec.dtype)
    dit.load_state_dict(ref.state_dict(), strict=True, assign=True)
    return dit.eval()


def ours_vae(ref, spec: SetSpec):
    """Our DC-AE holding the diffusers autoencoder's tensors."""
    return build_from_state_dict(dict(ref.state_dict()), spec.dcae, device=spec.device, dtype=spec.dtype)


def ours_text_encoder(tok, ref_model) -> TextEncoder:
    """Our TextEncoder on its own Gemma2Model module tree holding the reference model's tensors
    (SprintPipeline swaps its Linear classes; diffusers' modules must stay untouched)."""
    from transformers import Gemma2Model

    model = _empty(Gemma2Model, ref_model.config)
    model.load_state_dict(ref_model.state_dict(), strict=True, assign=True)
    for name, buf in ref_model.named_buffers():  # rotary frequencies: same values, on the device
        model.get_buffer(name).data = buf
    fast_cpu_linears(model)  # as SprintPipeline does
    return TextEncoder(tok, model.eval(), identity="bench-gemma2")


def diffusers_pipeline(tok, text_encoder, transformer, vae):
    """diffusers SanaSprintPipeline assembled from the given modules (None for stages not run)."""
    import diffusers

    pipe = diffusers.SanaSprintPipeline(tokenizer=tok, text_encoder=text_encoder, vae=vae, transformer=transformer,
                                        scheduler=diffusers.SCMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_pair(spec: SetSpec, stages=("text", "transformer", "decode")):
    """(ours, diffusers) for the stages asked for: ours has .text_encoder, .dit, .vae (None if not built),
    diffusers is a SanaSprintPipeline with None for the modules of the other stages."""
    tok = model = None
    if "text" in stages:
        tok = tokenizer()
        model = gemma(spec, spec.vocab or len(tok))
    transformer = diffusers_transformer(spec) if "transformer" in stages else None
    vae = diffusers_autoencoder(spec) if "decode" in stages else None
    ours = SimpleNamespace(text_encoder=None if model is None else ours_text_encoder(tok, model),
                           dit=None if transformer is None else ours_dit(transformer, spec),
                           vae=None if vae is None else ours_vae(vae, spec))
    return ours, diffusers_pipeline(tok, model, transformer, vae)
