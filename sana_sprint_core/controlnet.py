"""Sana ControlNet on the Sprint DiT: copied blocks, zero projections, two wirings (reference 5.1, 5.2).

Both wirings share one module layout (diffusers `SanaControlNetModel` names): `transformer_blocks.j`
(copies of base blocks j), `input_block` (NVlabs `before_proj`) and `controlnet_blocks.j` (NVlabs
`after_proj`), all projections zero-initialised, so a fresh ControlNet leaves the base unchanged.

- "nvlabs" (NVlabs `SanaMSControlNet`, the order its `.pth` checkpoints were trained in): the
  control latent goes through the BASE model's patch embedding; the stream starts from the output
  h1 of base block 0: c = block'_0(h1 + input_block(embed(control))), c = block'_j(c) for j > 0,
  and controlnet_blocks_j(c) is added to the INPUT of base block j + 1. It uses the base's
  caption and adaLN conditioning, so base block 0 runs once (a `block_hook` of the DiT).
- "diffusers" (diffusers `SanaControlNetModel`): own patch embedding, time embedding (no CFG
  embedder) and caption projection; h = embed(x) + input_block(embed(control)), h = block'_j(h),
  and controlnet_blocks_j(h) is added to the OUTPUT of base block j + 1 = the input of block j + 2.

The residuals are multiplied by the conditioning strength (1 = NVlabs, which has no scale).

Control latent units (a choice, see reference 5.4: how Sprint would scale it is not published): the
DC-AE latent of the control image times DCAE_SCALE (diffusion units, `dcae.encode`), fed to the
patch embedding as is, exactly as NVlabs and diffusers feed it to the flow model. It is NOT divided
by sigma_d or multiplied by the TrigFlow -> flow input scale: those act on the noisy state only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .constants import CONTROLNET_BLOCKS
from .dcae import encode
from .dit import BlockInputs, SanaBlock, SanaSprintDiT
from .dit_config import DiTConfig
from .dit_layers import CaptionProjection, RMSNorm, TimeGuidanceEmbed, mask_to_bias
from .ops import factory_kwargs, resolve
from .sampler import check_finite, sample
from .trigflow_model import TrigFlowModel

WIRINGS = ("nvlabs", "diffusers")
Strength = float | Tensor  # a number or a (B,) tensor


@dataclass(frozen=True)
class ControlNetConfig:
    """Architecture of a Sana ControlNet.

    dit: the block architecture (width, heads, mlp, qk_norm, eps), plus in/caption channels and
    patch size for the diffusers wiring's own embedders (its time embedder never has a CFG part).
    time_input_scale (diffusers wiring only): the ControlNet's time embedder sees tau * this;
    None = the base DiT's own scale, i.e. the same timestep the base gets (diffusers' pipeline).
    """

    dit: DiTConfig = DiTConfig()
    num_blocks: int = CONTROLNET_BLOCKS
    wiring: str = "nvlabs"
    time_input_scale: float | None = None

    def __post_init__(self):
        if self.wiring not in WIRINGS:
            raise ValueError(f"ControlNetConfig.wiring must be one of {WIRINGS}, got {self.wiring!r}")
        if self.num_blocks < 1:
            raise ValueError(f"ControlNetConfig.num_blocks must be at least 1, got {self.num_blocks}")
        if self.time_input_scale is not None and not self.time_input_scale > 0:
            raise ValueError(f"ControlNetConfig.time_input_scale must be positive or None, got {self.time_input_scale}")

    def to_dict(self) -> dict:
        """Plain dict (JSON-able), the inverse of from_dict."""
        return {**dataclasses.asdict(self), "dit": self.dit.to_dict()}

    @classmethod
    def from_dict(cls, values: dict) -> "ControlNetConfig":
        """Build from a dict (as written by to_dict), rejecting unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ControlNetConfig keys {unknown}; known keys: {sorted(known)}")
        values = dict(values)
        if isinstance(values.get("dit"), dict):
            values["dit"] = DiTConfig.from_dict(values["dit"])
        return cls(**values)


def _patchify(proj: nn.Module, x: Tensor) -> Tensor:
    """Patch-embed (B, C, H, W) -> tokens (B, N, D), n = row * W + col."""
    return proj(x).flatten(2).transpose(1, 2)


def _scaled(r: Tensor, strength: Strength) -> Tensor:
    if isinstance(strength, Tensor) and strength.ndim > 0:
        return r * strength.to(r.dtype).reshape(-1, 1, 1)  # (B,) -> (B, 1, 1)
    return r * strength


class SanaControlNet(nn.Module):
    """Copied Sana blocks plus zero-initialised input/output projections (module docstring)."""

    def __init__(self, config: ControlNetConfig, *, operations=None, dtype=None, device=None):
        super().__init__()
        self.config = config
        cfg, ops, kw = config.dit, resolve(operations), factory_kwargs(dtype, device)
        mk = dict(operations=operations, dtype=dtype, device=device)
        dim = cfg.hidden_size
        if config.wiring == "diffusers":
            self.patch_embed = nn.Module()
            self.patch_embed.proj = ops.Conv2d(cfg.in_channels, dim, cfg.patch_size, stride=cfg.patch_size, **kw)
            self.time_embed = TimeGuidanceEmbed(dim, False, **mk)
            self.caption_projection = CaptionProjection(cfg.caption_channels, dim, **mk)
            self.caption_norm = RMSNorm(dim, 1e-5, **kw)
        self.transformer_blocks = nn.ModuleList(SanaBlock(cfg, **mk) for _ in range(config.num_blocks))
        self.input_block = ops.Linear(dim, dim, **kw)
        self.controlnet_blocks = nn.ModuleList(ops.Linear(dim, dim, **kw) for _ in range(config.num_blocks))
        self.gradient_checkpointing = False
        with torch.no_grad():
            for proj in (self.input_block, *self.controlnet_blocks):
                nn.init.zeros_(proj.weight)
                nn.init.zeros_(proj.bias)

    @property
    def wiring(self) -> str:
        """"nvlabs" or "diffusers" (module docstring)."""
        return self.config.wiring

    @classmethod
    def from_base(cls, base: SanaSprintDiT, num_blocks: int = CONTROLNET_BLOCKS, wiring: str = "nvlabs",
                  operations=None) -> "SanaControlNet":
        """A new ControlNet whose blocks (and, for "diffusers", embedders) copy the base's weights.

        The projections are zero, so the controlled model equals the base until trained (NVlabs
        `ControlSanaMSBlock` deep-copies base block i; diffusers' converter copies the embedders).
        """
        if num_blocks > base.config.num_layers:
            raise ValueError(f"num_blocks {num_blocks} exceeds the base DiT's {base.config.num_layers} layers")
        p = next(base.parameters())
        model = cls(ControlNetConfig(base.config, num_blocks, wiring), operations=operations,
                    dtype=p.dtype, device=p.device)
        base_state = base.state_dict()
        own = {k: v for k, v in model.state_dict().items()
               if not k.startswith(("input_block.", "controlnet_blocks."))}
        model.load_state_dict({**model.state_dict(), **{k: base_state[k].clone() for k in own}}, strict=True)
        return model

    def check_base(self, base: SanaSprintDiT) -> None:
        """Raise ValueError unless the base DiT is wide and deep enough for this ControlNet."""
        cfg, n = base.config, self.config.num_blocks
        if cfg.hidden_size != self.config.dit.hidden_size:
            raise ValueError(f"ControlNet width {self.config.dit.hidden_size} does not match the DiT's "
                             f"{cfg.hidden_size}; use a ControlNet trained for this model size")
        last = n if self.wiring == "nvlabs" else n + 1  # highest block input receiving a residual
        if last > cfg.num_layers:
            raise ValueError(f"a {n}-block {self.wiring} ControlNet feeds the input of block {last}, but the "
                             f"DiT has only {cfg.num_layers} layers")

    def dit_kwargs(self, base: SanaSprintDiT, x: Tensor, timestep: Tensor, context: Tensor,
                   context_mask: Tensor | None, control_latent: Tensor, strength: Strength = 1.0) -> dict:
        """Keyword arguments that make `base(x, timestep, context, context_mask, guidance, **kw)` controlled.

        x, timestep, context, mask: exactly what the base gets (flow input, tau (B,)); control_latent
        (B or 1, C, H, W) in diffusion units at the size of x. Returns {"block_hook": ...} (nvlabs)
        or {"block_residuals": ...} (diffusers).
        """
        self.check_base(base)
        latent = _control_batch(control_latent, x)
        if self.wiring == "nvlabs":
            tokens = _patchify(base.patch_embed.proj, latent.to(x.dtype))  # the base's own patch embedding
            return {"block_hook": self._nvlabs_hook(tokens, strength)}
        scale = self.config.time_input_scale or base.config.time_input_scale
        dt = self.compute_dtype or x.dtype
        residuals = self._diffusers_residuals(x.to(dt), timestep * scale, context.to(dt), context_mask,
                                              latent.to(dt), strength)
        return {"block_residuals": {i: r.to(x.dtype) for i, r in residuals.items()}}

    @property
    def dtype(self) -> torch.dtype:
        """Storage dtype of the ControlNet's weights."""
        return self.input_block.weight.dtype

    @property
    def compute_dtype(self) -> torch.dtype | None:
        """The dtype the ControlNet computes in when set (by the loader), else None: then it computes in
        the dtype of the stream it joins (the base DiT's compute dtype), whatever its weights are stored in."""
        return getattr(self, "_compute_dtype", None)

    @compute_dtype.setter
    def compute_dtype(self, dtype: torch.dtype | None) -> None:
        self._compute_dtype = dtype

    def _run(self, block: SanaBlock, h: Tensor, inp: BlockInputs) -> Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, h, inp.y, inp.bias, inp.t0, inp.hw, use_reentrant=False)
        return block(h, inp.y, inp.bias, inp.t0, inp.hw)

    def _nvlabs_hook(self, control_tokens: Tensor, strength: Strength) -> Callable:
        """After base block 0: run the whole control stream on its output; residual j -> input of block j+1."""

        def hook(i: int, h: Tensor, inputs: BlockInputs) -> dict[int, Tensor] | None:
            if i != 0:
                return None
            dt = self.compute_dtype or h.dtype
            inputs = BlockInputs(inputs.y.to(dt), None if inputs.bias is None else inputs.bias.to(dt),
                                 inputs.t0.to(dt), inputs.hw)
            c = h.to(dt) + self.input_block(control_tokens.to(dt))
            out = {}
            for j, (block, proj) in enumerate(zip(self.transformer_blocks, self.controlnet_blocks)):
                c = self._run(block, c, inputs)
                out[j + 1] = _scaled(proj(c), strength).to(h.dtype)
            return out

        return hook

    def _diffusers_residuals(self, x: Tensor, t_in: Tensor, context: Tensor, mask: Tensor | None,
                             latent: Tensor, strength: Strength) -> dict[int, Tensor]:
        """diffusers' stream from its own embedders; sample j -> output of block j+1 = input of block j+2."""
        p = self.config.dit.patch_size
        hw = (x.shape[-2] // p, x.shape[-1] // p)
        h = _patchify(self.patch_embed.proj, x)
        h = h + self.input_block(_patchify(self.patch_embed.proj, latent))
        t0, _ = self.time_embed(t_in, None, h.dtype)
        y = self.caption_norm(self.caption_projection(context))
        inputs = BlockInputs(y, mask_to_bias(mask, h.dtype), t0, hw)
        out = {}
        for j, (block, proj) in enumerate(zip(self.transformer_blocks, self.controlnet_blocks)):
            h = self._run(block, h, inputs)
            out[j + 2] = _scaled(proj(h), strength)
        return out


def _control_batch(latent: Tensor, x: Tensor) -> Tensor:
    """The control latent broadcast to the batch of x; its spatial size must equal x's."""
    if latent.ndim != 4 or tuple(latent.shape[1:]) != tuple(x.shape[1:]):
        want = ", ".join(map(str, x.shape[1:]))
        raise ValueError(f"control latent has shape {tuple(latent.shape)}, expected (B, {want}) like the latent "
                         "being generated: encode the control image at the generation size")
    if latent.shape[0] == x.shape[0]:
        return latent
    if latent.shape[0] == 1:
        return latent.expand(x.shape[0], *latent.shape[1:])
    raise ValueError(f"control latent has batch {latent.shape[0]}, expected 1 or {x.shape[0]}")


@dataclass(frozen=True)
class ControlInput:
    """What a controlled forward needs per call: the control latent (diffusion units) and strength."""

    latent: Tensor
    strength: Strength = 1.0


class ControlledDiT(nn.Module):
    """A SanaSprintDiT steered by a SanaControlNet; same call as the DiT plus `control=ControlInput`.

    Wrap it in TrigFlowModel for the sampler and the trainer; without `control` it is the base DiT.
    """

    def __init__(self, dit: SanaSprintDiT, controlnet: SanaControlNet):
        super().__init__()
        controlnet.check_base(dit)
        self.dit, self.controlnet = dit, controlnet

    @property
    def dtype(self) -> torch.dtype:
        """The base DiT's storage dtype."""
        return self.dit.dtype

    @property
    def compute_dtype(self) -> torch.dtype:
        """The base DiT's compute dtype (TrigFlowModel casts the inputs to it)."""
        return self.dit.compute_dtype

    @property
    def config(self) -> DiTConfig:
        """The base DiT's config."""
        return self.dit.config

    @property
    def transformer_blocks(self) -> nn.ModuleList:
        """The base DiT's blocks (where feature hooks attach, e.g. the LADD discriminator's)."""
        return self.dit.transformer_blocks

    def embed_conditions(self, timestep: Tensor, guidance: Tensor | None, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """The base DiT's (t0, c) embeddings (SanaSprintDiT.embed_conditions)."""
        return self.dit.embed_conditions(timestep, guidance, dtype)

    def forward(self, x: Tensor, timestep: Tensor, context: Tensor, context_mask: Tensor | None = None,
                guidance: Tensor | None = None, control: ControlInput | None = None, **dit_kwargs) -> Tensor:
        """Velocity at flow time tau, like SanaSprintDiT.forward."""
        if control is not None:
            extra = self.controlnet.dit_kwargs(self.dit, x, timestep, context, context_mask,
                                               control.latent, control.strength)
            clash = sorted(set(extra) & set(dit_kwargs))
            if clash:
                raise ValueError(f"{clash} cannot be passed together with control")
            dit_kwargs = {**dit_kwargs, **extra}
        return self.dit(x, timestep, context, context_mask, guidance, **dit_kwargs)


def sample_with_control(dit: SanaSprintDiT, controlnet: SanaControlNet, control_latent: Tensor,
                        text_embeds: Tensor, text_mask: Tensor | None, *, strength: Strength = 1.0,
                        **sample_kwargs) -> Tensor:
    """`sampler.sample` with the ControlNet applied at every step (same arguments, same noise draws)."""
    if "model_kwargs" in sample_kwargs:
        raise ValueError("sample_with_control sets model_kwargs itself; call sampler.sample for custom ones")
    check_finite(strength, "ControlNet strength", " (1 = as trained, 0 = off)")
    if not bool(torch.isfinite(control_latent).all()):
        raise ValueError("control_latent (the encoded control image) holds NaN or infinite values; encode it again")
    model = TrigFlowModel(ControlledDiT(dit, controlnet))
    control = ControlInput(control_latent.to(text_embeds.device), strength)
    return sample(model, text_embeds, text_mask, model_kwargs={"control": control}, **sample_kwargs)


def encode_control_image(vae, image: Tensor) -> Tensor:
    """Control image (B, 3, H, W) in [0, 1] at the generation size -> control latent (diffusion units)."""
    with torch.no_grad():
        return encode(vae, image)
