"""Storage versus compute dtypes (sana_sprint_core/precision.py): the device rules, layers that cast their
weights at use, fp8-stored DiT / ControlNet / Gemma-2, and the pipeline and CLI with each --dtype.

Quality bounds (tiny random models, 2 steps at 96 x 64, against fp32, measured with both CPU compute
paths, bf16 and fp32; docs/benchmarks.md has the numbers): latent RMS error relative to the latent's
RMS and image PSNR."""

import math

import pytest
import torch
import torch.nn.functional as F

from sana_sprint_core import ops, precision
from sana_sprint_core.__main__ import _DTYPES, main
from sana_sprint_core.controlnet import ControlInput, ControlledDiT, SanaControlNet
from sana_sprint_core.controlnet_loading import load_controlnet, save_controlnet
from sana_sprint_core.dit_loading import load_dit, save_dit
from sana_sprint_core.pipeline import PromptOptions, SprintPipeline
from sana_sprint_core.trigflow_model import TrigFlowModel
from tests.fixtures.distill import tiny_teacher
from tests.fixtures.sprint_set import write_model_set

OPTS = PromptOptions(max_tokens=24)
# dtype -> (max latent RMS error / latent RMS, min image PSNR dB); measured 0.006 / 52 (bf16), 0.057 / 33
# (fp8_e4m3fn), 0.125 / 27.7 (fp8_e5m2) with bf16 compute; 0.004 / 61, 0.055 / 33.3, 0.122 / 28.0 with fp32.
BOUNDS = {"bf16": (0.012, 45.0), "fp8_e4m3fn": (0.09, 30.0), "fp8_e5m2": (0.18, 25.0)}


@pytest.fixture(params=[True, False], ids=["native-bf16-cpu", "avx2-cpu"])
def cpu_bf16(request, monkeypatch):
    """Both kinds of CPU: with native bf16 (compute in bf16) and without (compute in fp32)."""
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: request.param)
    return request.param


def test_compute_dtype_rules(monkeypatch):
    for native, want in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(precision, "cpu_has_bf16", lambda native=native: native)
        assert precision.compute_dtype(torch.bfloat16, "cpu") == want
        assert precision.compute_dtype(torch.float8_e4m3fn, "cpu") == want
        assert precision.compute_dtype(torch.float16, "cpu") == torch.float32  # fp16 is slow on every CPU
        assert precision.compute_dtype(torch.float32, "cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for bf16, want in ((True, torch.bfloat16), (False, torch.float16)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda bf16=bf16: bf16)
        assert precision.compute_dtype(torch.float8_e5m2, "cuda") == want
        assert precision.compute_dtype(torch.float16, "cuda") == torch.float16
        assert precision.compute_dtype(torch.bfloat16, "cuda") == torch.bfloat16


def test_plan_of_each_request(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    auto = precision.plan("auto", "cpu")  # a 16 GB CPU-only machine: bf16 storage, fp32 compute
    assert (auto.dit, auto.dit_compute, auto.text_encoder, auto.text_encoder_compute, auto.vae) == (
        torch.bfloat16, torch.float32, torch.bfloat16, torch.float32, torch.float32)
    fp16 = precision.plan("fp16", "cpu")  # Gemma-2 and the DC-AE overflow fp16
    assert (fp16.dit, fp16.dit_compute, fp16.text_encoder, fp16.vae) == (
        torch.float16, torch.float32, torch.bfloat16, torch.float32)
    fp8 = precision.plan("fp8_e4m3fn", "cpu")
    assert (fp8.dit, fp8.text_encoder, fp8.vae) == (torch.float8_e4m3fn, torch.float8_e4m3fn, torch.float32)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    gpu = precision.plan(None, "cuda")  # the file's dtype, computed as stored
    assert (gpu.dit, gpu.dit_compute, gpu.text_encoder, gpu.vae) == (None, None, torch.bfloat16, torch.bfloat16)
    with pytest.raises(ValueError, match="dtype must be one of fp32, bf16, fp16, fp8_e4m3fn, fp8_e5m2, got 'int8'"):
        precision.plan("int8", "cpu")
    assert set(_DTYPES) == {"auto", *precision.STORAGE_DTYPES}  # the CLI's choices


def test_layers_cast_their_weights_to_the_input_dtype():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 40, 16, generator=g)
    linear = ops.Linear(16, 8).to(torch.float8_e4m3fn)
    want = F.linear(x, linear.weight.float(), linear.bias.float())
    torch.testing.assert_close(linear(x), want, rtol=0, atol=1e-5)  # fp32 rounding of the oneDNN path only
    conv = ops.Conv2d(4, 6, 3, padding=1).to(torch.bfloat16)
    img = torch.randn(1, 4, 8, 8, generator=g)
    torch.testing.assert_close(conv(img), F.conv2d(img, conv.weight.float(), conv.bias.float(), padding=1))
    assert linear.weight.dtype == torch.float8_e4m3fn  # nothing kept in the compute dtype


@pytest.mark.parametrize("name", ["fp8_e4m3fn", "fp8_e5m2"])
def test_fp8_dit_stores_every_weight_in_fp8_and_computes(tmp_path, name, cpu_bf16):
    save_dit(tiny_teacher(), tmp_path / "dit.safetensors")
    ref = load_dit(tmp_path / "dit.safetensors")
    dit = load_dit(tmp_path / "dit.safetensors", dtype=name)
    assert {p.dtype for p in dit.parameters()} == {precision.STORAGE_DTYPES[name]}
    assert sum(p.nbytes for p in dit.parameters()) * 4 == sum(p.nbytes for p in ref.parameters())
    assert dit.compute_dtype == (torch.bfloat16 if cpu_bf16 else torch.float32)
    g = torch.Generator().manual_seed(1)
    x, s = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([1.2, 0.4])
    ctx, mask = torch.randn(2, 6, 48, generator=g), torch.ones(2, 6, dtype=torch.int64)
    got, want = TrigFlowModel(dit)(x, s, ctx, mask), TrigFlowModel(ref)(x, s, ctx, mask)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    rel = ((got - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt()).item()
    assert rel < {"fp8_e4m3fn": 0.1, "fp8_e5m2": 0.2}[name]


def test_fp8_controlnet_steers_an_fp8_dit(tmp_path, cpu_bf16):
    base = tiny_teacher()
    net = SanaControlNet.from_base(base, 2)
    with torch.no_grad():
        for p in (net.input_block.weight, *(b.weight for b in net.controlnet_blocks)):
            p.add_(torch.randn_like(p) * 0.05)
    save_dit(base, tmp_path / "base.safetensors")
    save_controlnet(net, tmp_path / "cn.safetensors")
    fp8 = ControlledDiT(load_dit(tmp_path / "base.safetensors", dtype="fp8_e4m3fn"),
                        load_controlnet(tmp_path / "cn.safetensors", dtype="fp8_e4m3fn"))
    ref = ControlledDiT(base, net)
    assert fp8.controlnet.dtype == torch.float8_e4m3fn and fp8.compute_dtype == fp8.controlnet.compute_dtype
    g = torch.Generator().manual_seed(2)
    x, s = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([1.0])
    ctx, mask = torch.randn(1, 6, 48, generator=g), torch.ones(1, 6, dtype=torch.int64)
    control = ControlInput(torch.randn(1, 4, 8, 8, generator=g), 1.0)
    got = TrigFlowModel(fp8)(x, s, ctx, mask, control=control)
    want = TrigFlowModel(ref)(x, s, ctx, mask, control=control)
    free = TrigFlowModel(ref)(x, s, ctx, mask)
    rel = ((got - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt()).item()
    assert rel < 0.1 and (got - free).abs().max() > 5 * (got - want).abs().max()  # it still steers


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    write_model_set(folder)
    return folder


def _generate(models, dtype):
    pipe = SprintPipeline.from_models_dir(models, dtype=dtype)
    latents = pipe.generate_latents("a small red cube", width=96, height=64, steps=2, seed=3, prompt_options=OPTS)
    image = pipe("a small red cube", width=96, height=64, steps=2, seed=3, prompt_options=OPTS)
    return pipe, latents, image


@pytest.mark.parametrize("dtype", sorted(BOUNDS))
def test_pipeline_quality_of_each_storage_dtype(models, dtype, cpu_bf16):
    _, ref_latents, ref_image = _generate(models, "fp32")
    pipe, latents, image = _generate(models, dtype)
    storage = precision.STORAGE_DTYPES[dtype]
    compute = torch.bfloat16 if cpu_bf16 else torch.float32
    assert (pipe.dit.dtype, pipe.dit.compute_dtype) == (storage, compute)
    assert (pipe.text_encoder.storage_dtype, pipe.text_encoder.dtype) == (storage, compute)
    rel = ((latents - ref_latents).pow(2).mean().sqrt() / ref_latents.pow(2).mean().sqrt()).item()
    psnr = 10 * math.log10(1.0 / ((image - ref_image) ** 2).mean().item())
    max_rel, min_psnr = BOUNDS[dtype]
    assert rel < max_rel and psnr > min_psnr, (rel, psnr)
    assert rel > 1e-4  # the cheap path really ran in its dtype


def test_auto_on_the_cpu_stores_bf16_and_gemma_never_fp16(models, cpu_bf16):
    pipe = SprintPipeline.from_models_dir(models)  # auto
    compute = torch.bfloat16 if cpu_bf16 else torch.float32
    assert (pipe.dit.dtype, pipe.dit.compute_dtype) == (torch.bfloat16, compute)
    assert (pipe.text_encoder.storage_dtype, pipe.text_encoder.dtype) == (torch.bfloat16, compute)
    assert next(pipe.vae.parameters()).dtype == torch.float32
    fp16 = SprintPipeline.from_models_dir(models, dtype="fp16")
    assert fp16.text_encoder.storage_dtype == torch.bfloat16 and fp16.dit.compute_dtype == torch.float32


def test_cli_generates_with_fp8_weights(models, tmp_path):
    out = tmp_path / "fp8.png"
    code = main(["generate", "--models-dir", str(models), "--prompt", "a small red cube", "--width", "96",
                 "--height", "64", "--steps", "2", "--out", str(out), "--device", "cpu", "--dtype", "fp8_e4m3fn"])
    assert code == 0 and out.is_file()
