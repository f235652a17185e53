"""Node execute paths on tiny models: every node twice on the same inputs (same outputs, inputs
untouched), the core results they must reproduce, progress/preview/interrupt, and their errors."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from sana_sprint_core.constants import COMFY_DIT_NAME, COMFY_TEXT_ENCODER_NAME, COMFY_VAE_NAME, DCAE_SCALE
from tests.nodes import stubs

PROMPT = "a red fox in the snow"


def _same(a, b) -> bool:
    """Deep equality over dicts, lists, tuples and tensors (dtype, shape and values)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _weights(obj) -> dict:
    """A copy of the weights behind a MODEL / SANA_TEXT_ENCODER / SANA_VAE."""
    module = obj.model if hasattr(obj, "model_options") else obj.patcher.model
    return {k: v.clone() for k, v in module.state_dict().items()}


_DATA = (dict, list, tuple, torch.Tensor, str, int, float, bool, type(None))


def _opaque(value, found: dict) -> dict:
    """id -> object for every non-data object (models, patchers) inside `value`, nested ones included."""
    if isinstance(value, dict):
        for v in value.values():
            _opaque(v, found)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _opaque(v, found)
    elif not isinstance(value, _DATA):
        found[id(value)] = value
    return found


def run_twice(node, **inputs):
    """Execute twice; assert equal outputs and unchanged inputs; return the first output tuple.

    Data (tensors, dicts, lists, numbers) is compared with a deep copy; models and patchers, at any
    depth (e.g. the ControlNet inside a conditioning), by identity and by their weights.
    """
    objects = _opaque(inputs, {})
    before = copy.deepcopy(inputs, memo=dict(objects))  # models are kept, not copied
    models = {k: _weights(v) for k, v in objects.items() if hasattr(v, "model_options") or hasattr(v, "patcher")}
    first, second = node.execute(**inputs).args, node.execute(**inputs).args
    assert _same(first, second), f"{node.__name__}: two runs on the same inputs differ"
    assert _same(inputs, before), f"{node.__name__} changed its inputs"
    for k, w in models.items():
        assert _same(_weights(objects[k]), w), f"{node.__name__} changed the weights of {objects[k]!r}"
    return first


@pytest.fixture(scope="module")
def loaded(nodes):
    model = nodes["SanaSprintDiTLoader"].execute(COMFY_DIT_NAME, "auto")[0]
    te = nodes["SanaSprintTextEncoderLoader"].execute(COMFY_TEXT_ENCODER_NAME, "auto")[0]
    vae = nodes["SanaSprintVAELoader"].execute(COMFY_VAE_NAME, "auto")[0]
    cond = nodes["SanaSprintTextEncode"].execute(te, PROMPT, True)[0]
    return SimpleNamespace(model=model, te=te, vae=vae, cond=cond)


def _latent(nodes, width=128, height=96, batch=2):
    return nodes["SanaSprintEmptyLatent"].execute(width, height, batch, "custom")[0]


def _sample(nodes, loaded, latent, **kw):
    args = dict(model=loaded.model, positive=loaded.cond, latent_image=latent, seed=5, steps=2, guidance=4.5,
                max_timestep=1.5708, intermediate_timestep=1.3, denoise=1.0, timesteps="")
    return nodes["SanaSprintSampler"].execute(**{**args, **kw})[0]


# --------------------------------------------------------------------------------------------------
# Loaders


@pytest.mark.parametrize("node_id, name", [("SanaSprintDiTLoader", COMFY_DIT_NAME),
                                           ("SanaSprintTextEncoderLoader", COMFY_TEXT_ENCODER_NAME),
                                           ("SanaSprintVAELoader", COMFY_VAE_NAME)])
def test_loaders_give_equal_fresh_models_twice(nodes, node_id, name):
    node = nodes[node_id]
    a, b = node.execute(name, "fp32")[0], node.execute(name, "fp32")[0]
    assert a is not b and _same(_weights(a), _weights(b))
    assert node.validate_inputs(name) is True


def test_dit_loader_gives_a_native_model_with_lora_keys(pack, loaded):
    patcher = loaded.model
    assert isinstance(patcher.model, pack.nodes.comfy_model.SanaSprintBaseModel)
    assert isinstance(patcher.model.diffusion_model, pack.sana_sprint_core.dit.SanaSprintDiT)
    keys = patcher.model.state_dict()
    assert "diffusion_model.transformer_blocks.0.attn1.to_q.weight" in keys
    assert all(k.startswith("diffusion_model.") for k in keys)
    fmt = patcher.get_model_object("latent_format")
    assert (fmt.latent_channels, fmt.scale_factor) == (32, DCAE_SCALE)
    assert patcher.model.model_sampling.timestep(torch.tensor(0.25)) == 0.25  # sigma == tau


@pytest.mark.parametrize("node_id, arg", [("SanaSprintDiTLoader", "model_name"),
                                          ("SanaSprintTextEncoderLoader", "text_encoder_name"),
                                          ("SanaSprintVAELoader", "vae_name")])
def test_missing_model_names_folder_file_and_repository(nodes, node_id, arg):
    node = nodes[node_id]
    message = node.validate_inputs("nope.safetensors")
    assert isinstance(message, str) and "'nope.safetensors'" in message and "huggingface.co" in message
    folder = {"model_name": "diffusion_models", "text_encoder_name": "text_encoders", "vae_name": "vae"}[arg]
    assert f"'{folder}' folder" in message
    with pytest.raises(FileNotFoundError, match=f"not found in ComfyUI's '{folder}' folder"):
        node.execute("nope.safetensors", "auto")


# --------------------------------------------------------------------------------------------------
# Text, latents


def test_text_encode_gives_conditioning_with_mask_and_uses_the_cache(pack, nodes, loaded):
    cache = pack.nodes.conditioning.PROMPT_CACHE
    cond = run_twice(nodes["SanaSprintTextEncode"], text_encoder=loaded.te, text=PROMPT,
                     complex_human_instruction=True)[0]
    (embeds, extra), = cond
    assert embeds.shape == (1, 300, 64) and extra["attention_mask"].shape == (1, 300)
    assert extra["attention_mask"].dtype == torch.int64 and 0 < extra["attention_mask"].sum() < 300
    expected, mask = pack.sana_sprint_core.text_encoder.encode_prompt(loaded.te.payload, PROMPT)
    assert torch.equal(embeds, expected) and torch.equal(extra["attention_mask"], mask)
    hits = cache.hits
    nodes["SanaSprintTextEncode"].execute(loaded.te, PROMPT, True)
    assert cache.hits == hits + 1
    assert any(p is loaded.te.patcher for p, _ in stubs.STATE.loads)  # placed by model management
    no_chi = nodes["SanaSprintTextEncode"].execute(loaded.te, PROMPT, False)[0]
    assert not torch.equal(no_chi[0][0], embeds)


def test_empty_latent_custom_and_preset(nodes):
    node = nodes["SanaSprintEmptyLatent"]
    out = run_twice(node, width=256, height=96, batch_size=3, aspect_ratio="custom")[0]
    assert out["samples"].shape == (3, 32, 3, 8) and not out["samples"].any()
    preset = node.execute(64, 64, 1, "16:9 (1376x768)")[0]
    assert preset["samples"].shape == (1, 32, 24, 43)


def test_empty_latent_errors(nodes):
    with pytest.raises(ValueError, match=r"width must be a positive multiple of 32 .*got 1000; nearest valid: 992 or 1024"):
        nodes["SanaSprintEmptyLatent"].execute(1000, 1024, 1, "custom")
    with pytest.raises(ValueError, match="aspect_ratio must be 'custom' or one of"):
        nodes["SanaSprintEmptyLatent"].execute(1024, 1024, 1, "5:4")


# --------------------------------------------------------------------------------------------------
# Sampler


def test_sampler_twice_equals_the_core_sampler(pack, nodes, loaded):
    latent = _latent(nodes)
    out = run_twice(nodes["SanaSprintSampler"], model=loaded.model, positive=loaded.cond, latent_image=latent,
                    seed=5, steps=2, guidance=4.5, max_timestep=1.5708, intermediate_timestep=1.3, denoise=1.0,
                    timesteps="")[0]
    embeds, extra = loaded.cond[0]
    expected = pack.sana_sprint_core.sampler.sample(
        loaded.model.model.diffusion_model, embeds, extra["attention_mask"], width=128, height=96, steps=2,
        seed=5, latent=latent["samples"])
    assert out["samples"].shape == (2, 32, 3, 4)
    torch.testing.assert_close(out["samples"], expected / DCAE_SCALE, rtol=0, atol=0)  # LATENT holds raw latents
    assert any(p is loaded.model for p, _ in stubs.STATE.loads)


def test_sampler_follows_comfyuis_compile_node(nodes, loaded, monkeypatch):
    """A MODEL patched by TorchCompileModel (its kwargs in model_options) samples through torch.compile,
    compiled once per argument set, with the same latents as the plain model (eager backend: exact)."""
    calls = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **kw: calls.append(kw) or real_compile(m, **kw))
    latent = _latent(nodes)
    plain = _sample(nodes, loaded, latent)["samples"]
    model = loaded.model.clone()
    model.model_options["torch_compile_kwargs"] = {"backend": "eager", "options": None, "mode": None,
                                                   "fullgraph": False, "dynamic": None}
    dit = loaded.model.model.diffusion_model
    try:
        compiled = [_sample(nodes, loaded, latent, model=model)["samples"] for _ in range(2)]
        assert calls == [model.model_options["torch_compile_kwargs"]]  # compiled once, with the node's args
        for out in compiled:
            torch.testing.assert_close(out, plain, rtol=0, atol=0)
        assert _sample(nodes, loaded, latent)["samples"].equal(plain) and len(calls) == 1  # plain MODEL: eager
    finally:
        dit.__dict__.pop("_sana_host_compiled", None)
        torch._dynamo.reset()


def test_sampler_reports_progress_with_jpeg_previews(nodes, loaded):
    _sample(nodes, loaded, _latent(nodes), steps=4)
    assert [(v, t) for v, t, _ in stubs.STATE.progress] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    for _, _, (fmt, image, size) in stubs.STATE.progress:
        assert fmt == "JPEG" and image.size == (4, 3) and size == 512


def test_sampler_honours_interruption_between_steps(nodes, loaded):
    def interrupt_after_first(value, total):
        if value == 1:
            stubs.STATE.interrupt = True

    stubs.STATE.on_progress = interrupt_after_first
    with pytest.raises(stubs.InterruptProcessingException):
        _sample(nodes, loaded, _latent(nodes), steps=4)
    assert [v for v, _, _ in stubs.STATE.progress] == [1]


def test_sampler_options_change_the_result(nodes, loaded):
    latent = _latent(nodes)
    base = _sample(nodes, loaded, latent)["samples"]
    for change in (dict(seed=6), dict(guidance=2.0), dict(intermediate_timestep=1.0), dict(steps=1),
                   dict(timesteps="1.5708, 0.9, 0")):
        assert not torch.equal(_sample(nodes, loaded, latent, **change)["samples"], base), change
    assert torch.equal(_sample(nodes, loaded, latent, timesteps="1.5708, 1.3, 0")["samples"], base)


def test_sampler_img2img_starts_from_the_encoded_image(pack, nodes, loaded):
    image = torch.rand(1, 96, 128, 3)
    latent = nodes["SanaSprintVAEEncode"].execute(image, loaded.vae, "off")[0]
    out = _sample(nodes, loaded, latent, denoise=0.5)["samples"]
    embeds, extra = loaded.cond[0]
    expected = pack.sana_sprint_core.sampler.sample(
        loaded.model.model.diffusion_model, embeds, extra["attention_mask"], width=128, height=96, steps=2,
        seed=5, latent=latent["samples"] * DCAE_SCALE, denoise=0.5)
    torch.testing.assert_close(out, expected / DCAE_SCALE)
    zero = _sample(nodes, loaded, {"samples": torch.zeros_like(latent["samples"])}, denoise=0.5)["samples"]
    assert (out - zero).abs().max() > 0.1


def test_sampler_errors(nodes, loaded):
    latent = _latent(nodes)
    with pytest.raises(ValueError, match="takes one conditioning entry"):
        _sample(nodes, loaded, latent, positive=loaded.cond + loaded.cond)
    with pytest.raises(ValueError, match="needs a MODEL from SanaSprintDiTLoader"):
        _sample(nodes, loaded, latent, model=stubs.ModelPatcher(torch.nn.Linear(2, 2), "cpu", "cpu"))
    with pytest.raises(ValueError, match="numbers separated by commas"):
        _sample(nodes, loaded, latent, timesteps="1.5, fast")
    with pytest.raises(ValueError, match="strictly decreasing"):
        _sample(nodes, loaded, latent, timesteps="1.0, 1.3, 0")


# --------------------------------------------------------------------------------------------------
# SIGMAS + SAMPLER (ComfyUI's SamplerCustomAdvanced route)


def test_sigmas_are_flow_times_of_the_schedule(nodes):
    sigmas = run_twice(nodes["SanaSprintSigmas"], steps=2, max_timestep=1.5708, intermediate_timestep=1.3,
                       denoise=1.0, timesteps="")[0]
    s = torch.tensor([1.5708, 1.3, 0.0], dtype=torch.float64)
    torch.testing.assert_close(sigmas, (s.sin() / (s.sin() + s.cos())).float())
    assert sigmas.dtype == torch.float32 and sigmas[-1] == 0
    four = nodes["SanaSprintSigmas"].execute(4, 1.5708, 1.3, 1.0, "")[0]
    assert four.shape == (5,) and bool((four[:-1] > four[1:]).all())
    explicit = nodes["SanaSprintSigmas"].execute(1, 1.5708, 1.3, 1.0, "1.2, 0.6")[0]
    assert explicit.shape == (3,) and explicit[-1] == 0  # a trailing 0 is added


def _batched(cond, batch: int):
    """What ComfyUI's cond processing hands the model: CONDConstant as is, CONDRegular repeated to the
    batch (comfy.utils.repeat_to_batch_size)."""
    if isinstance(cond, stubs.CONDConstant):
        return cond.cond
    t = cond.cond
    return t.repeat(-(-batch // t.shape[0]), *[1] * (t.ndim - 1))[:batch]


def _comfy_route(base_model, cond, latent, sigmas, seed, sampler_fn):
    """What KSAMPLER does for a FLOW/CONST model, written out: conds from every entry of the conditioning
    dict (as comfy.samplers.encode_model_conds), noise, noise_scaling, sampler, process_out."""
    embeds, extra = cond[0]
    conds = base_model.extra_conds(cross_attn=embeds, **extra)
    samples = base_model.process_latent_in(latent["samples"])
    noise = torch.randn(samples.shape, generator=torch.Generator().manual_seed(seed))

    def denoiser(x, sigma, **_):
        return base_model.apply_model(x, sigma, **{k: _batched(c, x.shape[0]) for k, c in conds.items()})

    denoiser.inner_model = SimpleNamespace(inner_model=base_model)
    x = base_model.model_sampling.noise_scaling(sigmas[0], noise, samples)
    steps = []
    out = sampler_fn(denoiser, x, sigmas, extra_args={"seed": seed}, callback=lambda d: steps.append(d["i"]))
    return base_model.process_latent_out(out), steps


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_scm_sampler_with_sigmas_reproduces_the_sampler_node(nodes, loaded, steps):
    latent = _latent(nodes)
    sampler = nodes["SanaSprintSCMSampler"].execute()[0]
    sigmas = nodes["SanaSprintSigmas"].execute(steps, 1.5708, 1.3, 1.0, "")[0]
    got, calls = _comfy_route(loaded.model.model, loaded.cond, latent, sigmas, 9, sampler.sampler_function)
    ours = _sample(nodes, loaded, latent, seed=9, steps=steps)["samples"]
    assert calls == list(range(steps))
    torch.testing.assert_close(got, ours, rtol=1e-5, atol=1e-5 * float(ours.abs().max()))


def test_model_conds_and_apply_model(loaded):
    base = loaded.model.model
    embeds, extra = loaded.cond[0]
    conds = base.extra_conds(cross_attn=embeds, attention_mask=extra["attention_mask"], guidance=3.0)
    assert set(conds) == {"c_crossattn", "attention_mask", "guidance"}
    assert all(type(c).__name__ == "CONDRegular" for c in conds.values())
    assert conds["guidance"].cond.tolist() == [3.0]
    assert base.extra_conds(cross_attn=embeds)["guidance"].cond.tolist() == [4.5]
    with pytest.raises(ValueError, match="ComfyUI ControlNets .* cannot steer SANA-Sprint; use SanaSprintControlNet"):
        base.apply_model(torch.zeros(1, 32, 2, 2), torch.ones(1), c_crossattn=embeds, control={"x": 1})
    with pytest.raises(ValueError, match="no concat conditioning"):
        base.apply_model(torch.zeros(1, 32, 2, 2), torch.ones(1), c_concat=torch.zeros(1), c_crossattn=embeds)


# --------------------------------------------------------------------------------------------------
# DC-AE


def test_vae_decode_and_encode_twice(pack, nodes, loaded):
    latent = {"samples": torch.randn(2, 32, 2, 3)}
    images = run_twice(nodes["SanaSprintVAEDecode"], samples=latent, vae=loaded.vae, tiled="off")[0]
    assert images.shape == (2, 64, 96, 3) and 0 <= images.min() and images.max() <= 1
    expected = pack.sana_sprint_core.dcae.decode(loaded.vae.payload, latent["samples"] * DCAE_SCALE)
    torch.testing.assert_close(images, expected.movedim(1, -1))
    assert any(p is loaded.vae.patcher and mem > 0 for p, mem in stubs.STATE.loads)
    tiled = nodes["SanaSprintVAEDecode"].execute(latent, loaded.vae, "on")[0]
    assert tiled.shape == images.shape
    rgba = torch.cat([images, torch.ones_like(images[..., :1])], dim=-1)
    encoded = run_twice(nodes["SanaSprintVAEEncode"], pixels=rgba, vae=loaded.vae, tiled="auto")[0]
    assert encoded["samples"].shape == (2, 32, 2, 3)
    raw = pack.sana_sprint_core.dcae.encode(loaded.vae.payload, images.movedim(-1, 1)) / DCAE_SCALE
    torch.testing.assert_close(encoded["samples"], raw)


def test_vae_encode_rejects_sizes_that_are_not_multiples_of_32(nodes, loaded):
    with pytest.raises(ValueError, match="image height must be a multiple of 32, got 50"):
        nodes["SanaSprintVAEEncode"].execute(torch.rand(1, 50, 64, 3), loaded.vae, "off")
