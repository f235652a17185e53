"""Step-adaptive sCM sampler of SANA-Sprint in TrigFlow time (sCM Alg. 1, multistep consistency).

Each step predicts x0 = cos(s) x_s - sin(s) sigma_d F and re-noises it to the next time t with fresh
noise: x_t = cos(t) x0 + sin(t) z. The final time is 0, where the step returns x0. Latents enter and
leave in DC-AE diffusion-latent units (VAE latent * 0.41407); internally x = sigma_d * latent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from . import trigflow
from .constants import (
    DEFAULT_GUIDANCE,
    LATENT_CHANNELS,
    LATENT_DOWNSCALE,
    MAX_IMAGE_SIDE,
    MAX_STEPS,
    SIGMA_DATA,
    T_HALF_PI,
    T_INTERMEDIATE_2STEP,
    T_MAX,
)
from .dit import SanaSprintDiT
from .trigflow_model import TrigFlowModel

# Accept explicit times up to T_MAX (pi/2 rounded up) and a hair above for float round-off.
_T_LIMIT = T_MAX + 1e-4


def check_image_size(width: int, height: int) -> None:
    """Raise naming the nearest valid sizes unless both sides are positive multiples of 32 up to
    MAX_IMAGE_SIDE (why that limit: constants.MAX_IMAGE_SIDE)."""
    step = LATENT_DOWNSCALE
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be a whole number of pixels, got {value!r}")
        if value > MAX_IMAGE_SIDE:
            raise ValueError(f"{name} {value} is larger than {MAX_IMAGE_SIDE}, the largest side SANA-Sprint "
                             f"generates here (its decode would need tens of GB); use at most {MAX_IMAGE_SIDE}")
        if value <= 0 or value % step:
            lo = max(step, value // step * step)
            near = f"{lo}" if value < step else f"{lo} or {lo + step}"
            raise ValueError(
                f"{name} must be a positive multiple of {step} (the DC-AE downscale), got {value}; "
                f"nearest valid: {near}"
            )


def sprint_timesteps(
    steps: int,
    *,
    max_timestep: float = T_MAX,
    intermediate_timestep: float | None = T_INTERMEDIATE_2STEP,
    denoise: float = 1.0,
) -> list[float]:
    """The TrigFlow schedule, steps + 1 times ending at 0.

    2 steps: [s_max, intermediate, 0] (the searched SANA-Sprint schedule); otherwise
    linspace(s_max, 0, steps + 1) as in the sCM sampler. With denoise d < 1 the start time is the
    one whose flow noise level is d times that of s_max: tau(s_start) = d * tau(s_max), and the
    schedule is spaced evenly below it (the intermediate time is kept when it is still below it).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be a whole number from 1 to {MAX_STEPS} (SANA-Sprint samples in 1, 2 or 4 "
                         f"steps), got {steps!r}")
    if not 0.0 < max_timestep <= _T_LIMIT:
        raise ValueError(f"max_timestep must be in (0, {T_MAX}], got {max_timestep}")
    if not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise must be in (0, 1], got {denoise}")
    start = max_timestep
    if denoise < 1.0:
        tau_max = trigflow.flow_time(torch.tensor(max_timestep, dtype=torch.float64))
        start = trigflow.trig_time(denoise * tau_max).item()
    if steps == 2 and intermediate_timestep is not None and 0.0 < intermediate_timestep < start:
        return [start, float(intermediate_timestep), 0.0]
    return [start * (steps - i) / steps for i in range(steps)] + [0.0]


def check_timesteps(timesteps: Sequence[float]) -> list[float]:
    """Validate an explicit schedule; a trailing 0 is appended when missing (NVlabs demo rule)."""
    times = [float(t) for t in timesteps]
    if not times or times == [0.0]:
        raise ValueError("timesteps must hold at least one time above 0, e.g. [1.5708, 1.3, 0]")
    if times[-1] != 0.0:
        times.append(0.0)
    bad = [t for t in times if not 0.0 <= t <= _T_LIMIT or math.isnan(t)]
    if bad:
        raise ValueError(f"timesteps must lie in [0, {T_MAX}] (TrigFlow radians), got {bad}")
    if any(b >= a for a, b in zip(times, times[1:])):
        raise ValueError(f"timesteps must be strictly decreasing, got {times}")
    if len(times) - 1 > MAX_STEPS:
        raise ValueError(f"timesteps give {len(times) - 1} steps; SANA-Sprint samples in at most {MAX_STEPS}, "
                         f"got {times}")
    return times


def check_finite(value, what: str, note: str = "", *, at_least: float | None = None) -> None:
    """A float or one value per image (any tensor): raise naming `what` unless every value is finite
    (and >= at_least); `note` says what the value means."""
    values = torch.as_tensor(value, dtype=torch.float64).flatten()
    low = at_least is not None and bool((values < at_least).any())
    if values.numel() == 0 or not bool(torch.isfinite(values).all()) or low:
        bound = "" if at_least is None else f" >= {at_least:g}"
        raise ValueError(f"{what} must be a finite number{bound}{note}, "
                         f"got {values.tolist() if values.numel() > 1 else value}")


def check_guidance(guidance) -> None:
    """The distilled guidance scale: finite and >= 0."""
    check_finite(guidance, "guidance", f" (SANA-Sprint's default is {DEFAULT_GUIDANCE})", at_least=0)


def _make_generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    if seed is not None and generator is not None:
        raise ValueError("pass either seed or generator, not both")
    if generator is not None:
        return generator
    return torch.Generator("cpu").manual_seed(0 if seed is None else int(seed))


def _randn(shape, generator: torch.Generator, device) -> Tensor:
    """Unit Gaussian drawn on the generator's device (CPU: same numbers on every machine), fp32."""
    return torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32).to(device)


def _as_batch(value, batch: int, name: str, device) -> Tensor:
    """A float or a (B,)/(1,) tensor -> a (B,) fp32 tensor."""
    t = torch.as_tensor(value, dtype=torch.float32, device=device).flatten()
    if t.numel() == 1:
        return t.expand(batch).clone()
    if t.numel() != batch:
        raise ValueError(f"{name} has {t.numel()} values for a batch of {batch}")
    return t


def _broadcast_batch(tensor: Tensor, batch: int, name: str) -> Tensor:
    if tensor.shape[0] == batch:
        return tensor
    if tensor.shape[0] == 1:
        return tensor.expand(batch, *tensor.shape[1:])
    raise ValueError(f"{name} has batch {tensor.shape[0]}, expected 1 or {batch}")


def drop_caption_padding(context: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Cut the caption positions that are padding in every prompt of the batch: (B, L, C) -> (B, L', C).

    A masked token enters the cross-attention softmax with the bias -10000, i.e. with the weight
    exp(-10000 + score) = 0 in fp32 and bf16, so dropping it leaves every output unchanged (up to the
    order of summation) while the caption projection and the per-block keys and values shrink from
    300 tokens to the prompt's own length. A prompt that is all padding attends uniformly to the
    pads; then nothing is cut.
    """
    if mask is None:
        return context, mask
    used = mask.bool()
    if not bool(used.any(dim=1).all()):
        return context, mask
    last = int(used.any(dim=0).nonzero().max()) + 1  # one host sync per sampling call
    return context[:, :last], mask[:, :last]


def _initial_state(shape, x0_latent, s0: float, generator, noise, device) -> Tensor:
    """x_{s0} = cos(s0) sigma_d z_img + sin(s0) sigma_d n, or pure noise sigma_d n at the top."""
    if noise is None:
        noise = _randn(shape, generator, device)
    elif tuple(noise.shape) != tuple(shape):
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(shape)}")
    noise = noise.to(device=device, dtype=torch.float32) * SIGMA_DATA
    if x0_latent is None:
        return noise
    s = torch.tensor(s0, dtype=torch.float32)
    return trigflow.add_noise(x0_latent.to(device=device, dtype=torch.float32) * SIGMA_DATA, noise, s)


def _as_trigflow_model(model) -> TrigFlowModel:
    if isinstance(model, TrigFlowModel):
        return model
    if isinstance(model, SanaSprintDiT):
        return TrigFlowModel(model)
    raise TypeError(f"sample() needs a SanaSprintDiT or TrigFlowModel, got {type(model).__name__}")


@torch.no_grad()
def sample(
    dit,
    text_embeds: Tensor,
    text_mask: Tensor | None,
    *,
    width: int,
    height: int,
    steps: int = 2,
    guidance: float | Tensor = DEFAULT_GUIDANCE,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    timesteps: Sequence[float] | None = None,
    max_timestep: float = T_MAX,
    intermediate_timestep: float | None = T_INTERMEDIATE_2STEP,
    latent: Tensor | None = None,
    denoise: float = 1.0,
    callback: Callable[[int, Tensor, Tensor], object] | None = None,
    model_kwargs: dict | None = None,
) -> Tensor:
    """Generate latents (B, 32, H/32, W/32) in DC-AE diffusion-latent units.

    Random draws: the initial noise (B, 32, h, w), then one draw of the same shape per step except
    the last, all from one CPU generator (diffusers' SanaSprintPipeline order, so a seed gives its
    latents). `latent` (img2img) is noised to the first time of the schedule, which `denoise` sets.
    `callback(step, x0, x)` runs after each step; returning False stops and returns that x0.
    """
    model = _as_trigflow_model(dit)
    check_image_size(width, height)
    check_guidance(guidance)
    if latent is not None and not bool(torch.isfinite(latent).all()):
        raise ValueError("latent (the image to start from) holds NaN or infinite values; encode the image again")
    times = check_timesteps(timesteps) if timesteps is not None else sprint_timesteps(
        steps, max_timestep=max_timestep, intermediate_timestep=intermediate_timestep, denoise=denoise)
    batch = max(text_embeds.shape[0], 1 if latent is None else latent.shape[0])
    shape = (batch, LATENT_CHANNELS, height // LATENT_DOWNSCALE, width // LATENT_DOWNSCALE)
    if latent is not None and tuple(latent.shape[1:]) != shape[1:]:
        raise ValueError(f"latent has shape {tuple(latent.shape)}, expected (B, {shape[1]}, {shape[2]}, {shape[3]}) "
                         f"for {width}x{height}")
    device = text_embeds.device
    gen = _make_generator(seed, generator)
    ctx = _broadcast_batch(text_embeds, batch, "text_embeds")
    mask = None if text_mask is None else _broadcast_batch(text_mask, batch, "text_mask")
    ctx, mask = drop_caption_padding(ctx, mask)  # same latents, cheaper cross-attention
    g = _as_batch(guidance, batch, "guidance", device)
    x0_img = None if latent is None else _broadcast_batch(latent, batch, "latent")
    x = _initial_state(shape, x0_img, times[0], gen, noise, device)
    x0 = x
    for i, (s, t) in enumerate(zip(times[:-1], times[1:])):
        s_b = torch.full((batch,), s, dtype=torch.float32, device=device)
        pred = SIGMA_DATA * model(x / SIGMA_DATA, s_b, ctx, mask, g, **(model_kwargs or {}))
        x0 = trigflow.x0_from_prediction(x, pred, torch.tensor(s, dtype=torch.float32))
        x = x0 if t == 0.0 else trigflow.add_noise(x0, _randn(shape, gen, device) * SIGMA_DATA,
                                                     torch.tensor(t, dtype=torch.float32))
        if callback is not None and callback(i, x0 / SIGMA_DATA, x / SIGMA_DATA) is False:
            break
    return x0 / SIGMA_DATA
