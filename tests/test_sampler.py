"""Sampler: schedules, errors, and latents equal to diffusers' SanaSprintPipeline."""

import math

import pytest
import torch

from sana_sprint_core import sampler
from sana_sprint_core.dit import SanaSprintDiT
from sana_sprint_core.sampler import sample, sprint_timesteps
from tests.test_dit import TINY, diffusers_model

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def models():
    return sampler_pair()


def sampler_pair():
    """(our tiny DiT, diffusers' SanaSprintPipeline around the same weights), both in eval mode."""
    ref = diffusers_model(TINY, seed=3)
    with torch.no_grad():  # keep activations moderate so multi-step sampling stays well conditioned
        for p in ref.parameters():
            p.mul_(0.5)
    ours = SanaSprintDiT(TINY)
    ours.load_state_dict(ref.state_dict(), strict=True)
    pipe = diffusers.SanaSprintPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=ref,
                                        scheduler=diffusers.SCMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return ours.eval(), pipe


def text(b=2, length=7):
    g = torch.Generator().manual_seed(5)
    mask = torch.ones(b, length, dtype=torch.int64)
    mask[-1, 3:] = 0
    return torch.randn(b, length, TINY.caption_channels, generator=g), mask


def run_diffusers(pipe, embeds, mask, seed, **kw):
    return pipe(prompt_embeds=embeds, prompt_attention_mask=mask, height=128, width=192, guidance_scale=4.5,
                generator=torch.Generator().manual_seed(seed), output_type="latent", use_resolution_binning=False,
                return_dict=False, **kw)[0]


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_latents_match_diffusers(models, steps):
    ours, pipe = models
    embeds, mask = text()
    inter = 1.3 if steps == 2 else None  # diffusers rejects an intermediate time unless steps == 2
    want = run_diffusers(pipe, embeds, mask, 42, num_inference_steps=steps, intermediate_timesteps=inter)
    got = sample(ours, embeds, mask, width=192, height=128, steps=steps, seed=42)
    assert got.shape == (2, 32, 4, 6)
    assert (got - want).abs().max().item() <= 1e-4


def test_custom_timesteps_match_diffusers(models, monkeypatch):
    ours, pipe = models
    embeds, mask = text()
    times = [1.5, 1.1, 0.6, 0.0]
    # diffusers 0.42.1's retrieve_timesteps drops num_inference_steps for custom timesteps, which
    # SCMScheduler.set_timesteps requires (TypeError); route custom times straight to the scheduler.
    module = __import__("diffusers.pipelines.sana.pipeline_sana_sprint", fromlist=["x"])

    def retrieve(scheduler, num_inference_steps=None, device=None, timesteps=None, sigmas=None, **kw):
        scheduler.set_timesteps(len(timesteps) - 1, timesteps=timesteps, device=device, max_timesteps=None,
                                  intermediate_timesteps=None)
        return scheduler.timesteps, len(timesteps) - 1

    monkeypatch.setattr(module, "retrieve_timesteps", retrieve)
    want = run_diffusers(pipe, embeds, mask, 7, num_inference_steps=3, timesteps=times, max_timesteps=None,
                         intermediate_timesteps=None)
    got = sample(ours, embeds, mask, width=192, height=128, timesteps=times, seed=7)
    assert (got - want).abs().max().item() <= 1e-4
    # the trailing 0 is optional
    got2 = sample(ours, embeds, mask, width=192, height=128, timesteps=times[:-1], seed=7)
    assert torch.equal(got, got2)


def test_schedules():
    assert sprint_timesteps(1) == [1.5708, 0.0]
    assert sprint_timesteps(2) == [1.5708, 1.3, 0.0]
    four = sprint_timesteps(4)
    assert [round(t, 4) for t in four] == [1.5708, 1.1781, 0.7854, 0.3927, 0.0]
    assert sprint_timesteps(2, intermediate_timestep=None) == [1.5708, 0.7854, 0.0]
    half = sprint_timesteps(2, denoise=0.5)
    # the start time has half the flow noise level of the full schedule: tau(s) = 0.5 tau(1.5708)
    tau = math.sin(half[0]) / (math.sin(half[0]) + math.cos(half[0]))
    tau_max = math.sin(1.5708) / (math.sin(1.5708) + math.cos(1.5708))
    assert abs(tau - 0.5 * tau_max) < 1e-9
    assert half[1] < half[0] and half[-1] == 0.0  # 1.3 is above the start, so evenly spaced


def test_img2img_full_denoise_ignores_latent_and_low_denoise_stays_close(models):
    ours, _ = models
    embeds, mask = text()
    full = sample(ours, embeds, mask, width=192, height=128, steps=2, seed=1)
    img = torch.randn(2, 32, 4, 6)
    # at s = 1.5708, cos(s) ~ -3.7e-6: the input latent barely contributes
    assert (sample(ours, embeds, mask, width=192, height=128, steps=2, seed=1, latent=img) - full).abs().max() < 1e-3
    weak = sample(ours, embeds, mask, width=192, height=128, steps=1, seed=1, latent=img, denoise=0.05)
    strong = sample(ours, embeds, mask, width=192, height=128, steps=1, seed=1, latent=img, denoise=1.0)
    assert (weak - img).abs().mean() < (strong - img).abs().mean()


def test_callback_sees_each_step_and_can_stop(models):
    ours, _ = models
    embeds, mask = text()
    seen = []
    out = sample(ours, embeds, mask, width=192, height=128, steps=4, seed=0,
                 callback=lambda i, x0, x: seen.append((i, x0.clone())))
    assert [i for i, _ in seen] == [0, 1, 2, 3]
    assert torch.equal(seen[-1][1], out)
    stopped = []

    def stop_after_two(i, x0, x):
        stopped.append(i)
        return i < 1

    out2 = sample(ours, embeds, mask, width=192, height=128, steps=4, seed=0, callback=stop_after_two)
    assert stopped == [0, 1]
    assert torch.equal(out2, seen[1][1])


def test_seed_generator_and_noise_agree(models):
    ours, _ = models
    embeds, mask = text()
    a = sample(ours, embeds, mask, width=192, height=128, steps=1, seed=11)
    b = sample(ours, embeds, mask, width=192, height=128, steps=1, generator=torch.Generator().manual_seed(11))
    n = torch.randn(2, 32, 4, 6, generator=torch.Generator().manual_seed(11))
    c = sample(ours, embeds, mask, width=192, height=128, steps=1, noise=n)
    assert torch.equal(a, b) and torch.equal(a, c)
    assert not torch.equal(a, sample(ours, embeds, mask, width=192, height=128, steps=1, seed=12))


def test_batch_broadcast_of_single_prompt(models):
    ours, _ = models
    embeds, mask = text(b=1)
    img = torch.randn(3, 32, 4, 6)
    out = sample(ours, embeds, mask, width=192, height=128, steps=1, seed=0, latent=img, denoise=0.5)
    assert out.shape == (3, 32, 4, 6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(width=1000, height=1024), r"width must be a positive multiple of 32.*got 1000; nearest valid: 992 or 1024"),
        (dict(width=1024, height=20), r"height .* got 20; nearest valid: 32"),
        (dict(steps=0), "steps must be a whole number from 1 to 4"),
        (dict(denoise=0.0), "denoise must be in"),
        (dict(max_timestep=2.0), "max_timestep must be in"),
        (dict(timesteps=[1.0, 1.2, 0]), "strictly decreasing"),
        (dict(timesteps=[3.0, 0]), "must lie in"),
        (dict(timesteps=[]), "at least one time"),
        (dict(seed=1, generator=torch.Generator()), "either seed or generator"),
        (dict(noise=torch.zeros(2, 32, 2, 2)), "noise has shape"),
        (dict(latent=torch.zeros(2, 32, 2, 2)), "latent has shape"),
        (dict(guidance=torch.tensor([1.0, 2.0, 3.0])), "guidance has 3 values"),
    ],
)
def test_bad_input_errors(models, kwargs, match):
    ours, _ = models
    embeds, mask = text()
    args = dict(width=192, height=128) | kwargs
    with pytest.raises(ValueError, match=match):
        sample(ours, embeds, mask, **args)


def test_rejects_non_model():
    with pytest.raises(TypeError, match="SanaSprintDiT or TrigFlowModel"):
        sample(object(), torch.zeros(1, 2, 3), None, width=32, height=32)
