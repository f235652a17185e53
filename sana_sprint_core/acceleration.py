"""Optional speed-ups: torch.compile per DiT block, CUDA-graph replay of the step, fast CPU linears.

    compile_dit(dit)                      # compiles each transformer block in place (keys unchanged)
    model = CudaGraphTrigFlow(dit)        # sample(model, ...) replays one captured forward per step
    fast_cpu_linears(gemma)               # transformers' nn.Linear -> ops.Linear (CPU fp32 fast path)

All keep the eager model's numbers up to the kernel choices of the backend (tests/test_acceleration.py
states the tolerances). The GPU levers are off by default (docs/benchmarks.md says what was measured
where); SprintPipeline applies `fast_cpu_linears` to the text encoder, a no-op off CPU fp32.

ComfyUI: its TorchCompileModel node compiles the whole diffusion model through a model patch. Use
either that node or `compile_dit`, not both: `compile_dit` refuses a DiT whose blocks are already
compiled, and the regional (per block) form it uses is what makes a later LoRA weight patch cheap
(blocks read their parameters as graph inputs, so patched weights need no recompile).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import ops
from .dit import SanaSprintDiT
from .trigflow_model import TrigFlowModel

COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _is_compiled(module: nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


def compile_dit(dit: SanaSprintDiT, *, mode: str | None = None, backend: str = "inductor", fullgraph: bool = True,
                dynamic: bool = False) -> SanaSprintDiT:
    """Compile every transformer block of `dit` in place (nn.Module.compile) and return `dit`.

    Regional compilation: the 20 (28) identical blocks share one compiled graph per input shape, so
    compile time is that of one block; the embedders and the final layer stay eager (they are small).
    `fullgraph=True` makes a graph break an error rather than a silent slowdown. `dynamic=False`
    specialises on the image size (1024 px: one compile; a new size compiles again).
    """
    if not isinstance(dit, SanaSprintDiT):
        raise TypeError(f"compile_dit needs a SanaSprintDiT, got {type(dit).__name__}")
    if mode not in COMPILE_MODES:
        raise ValueError(f"mode must be one of {COMPILE_MODES}, got {mode!r}")
    if any(_is_compiled(b) for b in dit.transformer_blocks) or _is_compiled(dit):
        raise ValueError("this DiT is already compiled (by compile_dit or a host's compile node); compile once")
    options = {} if mode is None else {"mode": mode}
    for block in dit.transformer_blocks:
        block.compile(backend=backend, fullgraph=fullgraph, dynamic=dynamic, **options)
    return dit


def fast_cpu_linears(model: nn.Module) -> int:
    """Give every plain torch nn.Linear of `model` the CPU fp32 fast path of ops.Linear; returns how many.

    The modules keep their parameters, keys and outputs (up to fp32 rounding); only CPU fp32 inputs take
    the oneDNN 1x1-convolution route (bench/bench_linear.py: about 2x faster than F.linear here), every
    other input the unchanged F.linear. SprintPipeline applies it to transformers' Gemma-2.
    """
    count = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = ops.Linear
            count += 1
    return count


class CudaGraphTrigFlow(TrigFlowModel):
    """TrigFlowModel whose forward replays a CUDA graph captured once per input signature.

    The sampler's steps have fixed shapes (only the values of x, s change), so one capture serves
    every step and every later call with the same batch, size and caption length. Inputs are copied
    into static buffers, the graph is replayed and a copy of the static output is returned. Extra
    DiT keyword arguments (ControlNet residuals and hooks) are not supported: they change per call.
    """

    def __init__(self, dit: SanaSprintDiT, warmup: int = 2):
        super().__init__(dit)
        device = next(dit.parameters()).device
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need the DiT on a CUDA device, got {device}; "
                             f"on CPU use the plain TrigFlowModel (sample() does by default)")
        self.warmup = warmup
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, tuple[Tensor | None, ...], Tensor]] = {}

    def forward(self, x_in, s, context, mask=None, guidance=None, **dit_kwargs) -> Tensor:
        if dit_kwargs:
            raise ValueError(f"CudaGraphTrigFlow does not take extra DiT arguments ({sorted(dit_kwargs)}); "
                             f"use the plain TrigFlowModel with a ControlNet")
        inputs = (x_in, s, context, mask, guidance)
        key = tuple(None if t is None else (tuple(t.shape), t.dtype, t.device) for t in inputs)
        if key not in self._graphs:
            self._graphs[key] = self._capture(inputs)
        graph, static_in, static_out = self._graphs[key]
        for buf, t in zip(static_in, inputs):
            if buf is not None:
                buf.copy_(t)
        graph.replay()
        return static_out.clone()

    def _capture(self, inputs):
        """Warm up on a side stream (cuBLAS/cuDNN plans, lazy inits), then capture one forward."""
        static_in = tuple(None if t is None else t.clone() for t in inputs)
        run = lambda: TrigFlowModel.forward(self, *static_in)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                run()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = run()
        return graph, static_in, static_out
