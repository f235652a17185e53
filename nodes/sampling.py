"""Sampling nodes: the SANA-Sprint sampler (-> LATENT), and a SAMPLER + SIGMAS pair for ComfyUI's
own SamplerCustomAdvanced that gives the same latents.

Why the pair reproduces the sampler (comfy_api_notes.md section 6): with sigma = tau = sin s /
(sin s + cos s) the flow state x_tau equals the TrigFlow state x_s / (sigma_d (sin s + cos s)), the
FLOW model's denoised x - tau v equals TrigFlow's x0, and re-noising to the next time is
noise_scaling(tau', eps', x0). The re-noise draws continue the CPU stream of the seed after the
initial noise, as the core sampler and diffusers' SanaSprintPipeline draw them. (A latent with a
`batch_index` makes ComfyUI draw the initial noise per index; the pair is then not seed-identical.)
"""

from __future__ import annotations

import torch
from comfy_api.latest import io
from PIL import Image

import comfy.model_management as mm
import comfy.samplers
import comfy.utils

from ..sana_sprint_core import preview as core_preview
from ..sana_sprint_core import trigflow
from ..sana_sprint_core.constants import (
    DEFAULT_GUIDANCE, LATENT_DOWNSCALE, MAX_STEPS, PREVIEW_MAX_SIZE, T_INTERMEDIATE_2STEP, T_MAX,
)
from ..sana_sprint_core.controlnet import sample_with_control
from ..sana_sprint_core.sampler import check_timesteps, sample, sprint_timesteps
from ..sana_sprint_core.trigflow_model import TrigFlowModel
from .comfy_model import control_of, host_compiled, sana_dit
from .float_inputs import check_floats
from .timing import timed

CATEGORY = "SanaSprint/sampling"


def schedule_inputs() -> list:
    """The schedule inputs shared by the sampler and the SIGMAS node (same names, same meaning).

    The optional `timesteps` comes last: ComfyUI orders optional inputs after required ones.
    """
    return [
        io.Int.Input("steps", default=2, min=1, max=MAX_STEPS,
                     tooltip="Sampling steps: 1, 2 (SANA-Sprint's default) or up to 4."),
        io.Float.Input("max_timestep", default=T_MAX, min=0.01, max=T_MAX, step=0.0001,
                       tooltip="First TrigFlow time in radians (1.5708 = pi/2, pure noise)."),
        io.Float.Input("intermediate_timestep", default=T_INTERMEDIATE_2STEP, min=0.0, max=T_MAX, step=0.0001,
                       tooltip="Middle time of the 2-step schedule [max, intermediate, 0]; other step "
                               "counts space times evenly."),
        io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01,
                       tooltip="Below 1 starts from a noised input latent (img2img): the fraction of the "
                               "noise level of max_timestep to start from."),
        io.String.Input("timesteps", default="", optional=True,
                        tooltip="Optional explicit TrigFlow times, comma separated, e.g. '1.5708, 1.3, 0'. "
                                "Overrides steps, max_timestep, intermediate_timestep and denoise."),
    ]


def parse_timesteps(text: str | None) -> list[float] | None:
    """'1.5708, 1.3, 0' -> [1.5708, 1.3, 0.0] (validated); '' or None -> None."""
    if text is None or not text.strip():
        return None
    try:
        values = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError as e:
        raise ValueError(f"timesteps must be numbers separated by commas, e.g. '1.5708, 1.3, 0'; got {text!r}") from e
    return check_timesteps(values)


def schedule(steps, max_timestep, intermediate_timestep, timesteps, denoise) -> list[float]:
    """TrigFlow times from the node inputs: the explicit list when given, else the Sprint schedule."""
    explicit = parse_timesteps(timesteps)
    if explicit is not None:
        return explicit
    return sprint_timesteps(steps, max_timestep=max_timestep, intermediate_timestep=intermediate_timestep,
                            denoise=denoise)


def preview_image(x0: torch.Tensor, latent_format) -> tuple[str, Image.Image, int]:
    """("JPEG", PIL image, max size) of the first latent of x0 (model space) for ProgressBar."""
    factors = latent_format.latent_rgb_factors
    if factors is None:
        rgb = core_preview.false_colour(x0[0])
    else:
        bias = latent_format.latent_rgb_factors_bias
        rgb = core_preview.linear_rgb(x0[0], torch.tensor(factors), None if bias is None else torch.tensor(bias))
    return "JPEG", Image.fromarray(core_preview.to_uint8(rgb).numpy()), PREVIEW_MAX_SIZE


def single_conditioning(conditioning, node: str) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """(embeds, mask, dict) of a one-entry CONDITIONING; ValueError otherwise."""
    if not conditioning:
        raise ValueError(f"{node}: positive conditioning is empty; connect SanaSprintTextEncode")
    if len(conditioning) != 1:
        raise ValueError(f"{node} takes one conditioning entry (one SanaSprintTextEncode), got {len(conditioning)}")
    embeds, extra = conditioning[0]
    return embeds, extra.get("attention_mask"), extra


class SanaSprintSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaSprintSampler",
            display_name="SANA-Sprint Sampler",
            category=CATEGORY,
            description="SANA-Sprint's 1-4 step TrigFlow sampler (the reference algorithm, seed-identical to "
                        "diffusers' SanaSprintPipeline). Noise comes from a CPU generator, so a seed gives "
                        "the same image on every machine. Shows a preview per step; can be interrupted.",
            inputs=[
                io.Model.Input("model", tooltip="MODEL from SanaSprintDiTLoader (LoRAs applied to it are used)."),
                io.Conditioning.Input("positive", tooltip="Prompt from SanaSprintTextEncode."),
                io.Latent.Input("latent_image", tooltip="SanaSprintEmptyLatent for text-to-image, or an encoded "
                                "image (SanaSprintVAEEncode) with denoise < 1 for img2img."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed (CPU generator)."),
                *schedule_inputs()[:1],
                io.Float.Input("guidance", default=DEFAULT_GUIDANCE, min=0.0, max=20.0, step=0.1,
                               tooltip="Distilled guidance scale fed to the model's guidance embedder "
                                       "(4.5 as trained). No second pass: the cost does not change. (A "
                                       "'guidance' on the conditioning, e.g. from FluxGuidance, is used by "
                                       "SamplerCustomAdvanced/KSampler, not by this node.)"),
                *schedule_inputs()[1:],
            ],
            outputs=[io.Latent.Output(tooltip="Denoised latent for SanaSprintVAEDecode.")],
        )

    @classmethod
    def validate_inputs(cls, guidance=None, max_timestep=None, intermediate_timestep=None, denoise=None):
        return check_floats(cls, guidance=guidance, max_timestep=max_timestep,
                            intermediate_timestep=intermediate_timestep, denoise=denoise)

    @classmethod
    def execute(cls, model, positive, latent_image, seed, steps, guidance, max_timestep,
                intermediate_timestep, denoise, timesteps=None) -> io.NodeOutput:
        with timed("sampling"):
            out = _sample_node(model, positive, latent_image, seed, steps, guidance, max_timestep,
                               intermediate_timestep, denoise, timesteps)
        return io.NodeOutput(out)


def _sample_node(model, positive, latent_image, seed, steps, guidance, max_timestep, intermediate_timestep,
                 denoise, timesteps) -> dict:
    """SanaSprintSampler's work: the LATENT dict (raw DC-AE units) of the sampled latents."""
    dit = sana_dit(model, "SanaSprintSampler")
    embeds, mask, extra = single_conditioning(positive, "SanaSprintSampler")
    control = control_of(extra)
    times = schedule(steps, max_timestep, intermediate_timestep, timesteps, denoise)
    fmt = model.get_model_object("latent_format")
    samples = latent_image["samples"]
    mm.load_models_gpu([model] + ([] if control is None else [control[0].patcher]))
    device = model.load_device
    embeds, mask = embeds.to(device), None if mask is None else mask.to(device)
    kwargs = dict(width=samples.shape[-1] * LATENT_DOWNSCALE, height=samples.shape[-2] * LATENT_DOWNSCALE,
                  guidance=guidance, seed=seed, timesteps=times, latent=fmt.process_in(samples.to(device)),
                  callback=_progress_callback(len(times) - 1, fmt))
    dit = host_compiled(model, dit)  # ComfyUI's TorchCompileModel, when it was applied
    if control is None:
        x0 = sample(TrigFlowModel(dit), embeds, mask, **kwargs)
    else:
        controlnet, control_latent, strength = control
        x0 = sample_with_control(dit, controlnet.payload, _fit_control(control_latent, samples), embeds, mask,
                                 strength=strength, **kwargs)
    out = {k: v for k, v in latent_image.items() if k != "samples"}  # keep batch_index etc.
    out["samples"] = fmt.process_out(x0).to(mm.intermediate_device())
    return out


def _fit_control(control_latent: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
    """The control latent, checked against the size of the latent being sampled (ValueError naming both)."""
    if tuple(control_latent.shape[-2:]) != tuple(samples.shape[-2:]):
        got = f"{control_latent.shape[-1] * LATENT_DOWNSCALE}x{control_latent.shape[-2] * LATENT_DOWNSCALE}"
        want = f"{samples.shape[-1] * LATENT_DOWNSCALE}x{samples.shape[-2] * LATENT_DOWNSCALE}"
        raise ValueError(f"the control image was encoded at {got} but the latent is {want}; set width and height "
                         f"of SanaSprintControlNetApply to {want}")
    return control_latent


def _progress_callback(total: int, latent_format):
    """Per step: interruption point, then ProgressBar with a preview of x0."""
    bar = comfy.utils.ProgressBar(total)

    def callback(i, x0, x):
        mm.throw_exception_if_processing_interrupted()
        bar.update_absolute(i + 1, total, preview_image(x0, latent_format))

    return callback


@torch.no_grad()
def sample_sprint_scm(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """k-diffusion style sampler: denoise, then re-noise to the next sigma with the seed's CPU stream.

    `model(x, sigma)` returns the denoised x0 (ComfyUI's wrapped model). The generator skips one
    draw of x's shape, the initial noise that RandomNoise drew from the same seed.
    """
    extra_args = {} if extra_args is None else extra_args
    generator = torch.Generator("cpu").manual_seed(int(extra_args.get("seed", 0)))
    torch.randn(x.shape, generator=generator, dtype=torch.float32)  # the initial noise, already in x
    model_sampling = model.inner_model.inner_model.model_sampling
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = denoised
        if sigmas[i + 1] > 0:
            noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x)
            x = model_sampling.noise_scaling(sigmas[i + 1], noise, x)
    return x


class SanaSprintSCMSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaSprintSCMSampler",
            display_name="SANA-Sprint sCM Sampler (SAMPLER)",
            category=CATEGORY,
            description="SANA-Sprint's multistep consistency sampler as a SAMPLER for SamplerCustomAdvanced "
                        "(with SanaSprintSigmas, RandomNoise and BasicGuider). Gives the same latents as "
                        "SanaSprintSampler for the same seed and schedule.",
            inputs=[],
            outputs=[io.Sampler.Output(tooltip="The sCM sampler (denoise, then re-noise with the seed's noise).")],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(comfy.samplers.KSAMPLER(sample_sprint_scm))


class SanaSprintSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaSprintSigmas",
            display_name="SANA-Sprint Sigmas",
            category=CATEGORY,
            description="SANA-Sprint's TrigFlow schedule as flow sigmas (sigma = sin s / (sin s + cos s)) for "
                        "SamplerCustomAdvanced with a SANA-Sprint MODEL.",
            inputs=schedule_inputs(),
            outputs=[io.Sigmas.Output(tooltip="steps + 1 sigmas ending at 0.")],
        )

    @classmethod
    def validate_inputs(cls, max_timestep=None, intermediate_timestep=None, denoise=None):
        return check_floats(cls, max_timestep=max_timestep, intermediate_timestep=intermediate_timestep,
                            denoise=denoise)

    @classmethod
    def execute(cls, steps, max_timestep, intermediate_timestep, denoise, timesteps=None) -> io.NodeOutput:
        times = schedule(steps, max_timestep, intermediate_timestep, timesteps, denoise)
        sigmas = trigflow.flow_time(torch.tensor(times, dtype=torch.float64)).float()
        return io.NodeOutput(sigmas)
