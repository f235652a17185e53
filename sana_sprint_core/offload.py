"""Low-VRAM placement of the three models: which one lives on the GPU when (SprintPipeline's `offload`).

Modes (peak device memory measured or derived in docs/benchmarks.md, "Low VRAM modes"):
  "none"          all three models stay on the execution device.
  "text_encoder"  Gemma-2 lives on the offload device (CPU) and visits the execution device only to
                  encode; the DiT and the DC-AE wait on the CPU meanwhile, so Gemma (5.2 GB in bf16)
                  and the DiT (3.2 GB) are never on the device together. A prompt-cache hit moves nothing.
  "sequential"    as "text_encoder" for Gemma; the DiT stays on the CPU and each transformer block (and
                  each small embedder) moves to the device just before it runs and back right after;
                  the DC-AE visits the device only to decode. The leanest mode (with tiled decoding).
Moving a module is `module.to(device)`; on CUDA the freed blocks are returned with empty_cache.
The text encoder must report the execution device to encode_prompt (SprintPipeline wraps it), so
inputs and cache keys do not depend on where Gemma happens to be.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

OFFLOAD_MODES = ("none", "text_encoder", "sequential")

Mover = Callable[[nn.Module, torch.device], None]


def move(module: nn.Module, device: torch.device) -> None:
    """Put the module's parameters and buffers on `device` (in place)."""
    module.to(device)


def _release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def streamed_parts(dit: nn.Module) -> list[nn.Module]:
    """The DiT's modules that move one at a time in "sequential" mode, in the order they run: the
    modules its forward calls (patch embedding conv, time and caption embedders, caption norm), each
    transformer block, the output projection. The final modulation table, a parameter of the DiT
    itself, stays home: the DiT casts it to the activations' device at use."""
    return [dit.patch_embed.proj, dit.time_embed, dit.caption_projection, dit.caption_norm,
            *dit.transformer_blocks, dit.proj_out]


class Offloader:
    """Applies one offload mode to (text encoder model, DiT, DC-AE) around the pipeline's three stages."""

    def __init__(self, mode: str, device: str | torch.device, offload_device: str | torch.device = "cpu",
                 mover: Mover | None = None):
        if mode not in OFFLOAD_MODES:
            raise ValueError(f"offload must be one of {OFFLOAD_MODES}, got {mode!r}")
        self.mode, self.device, self.home = mode, torch.device(device), torch.device(offload_device)
        self.mover = mover or move
        self._hooks: list = []

    def place(self, text_model: nn.Module, dit: nn.Module, vae: nn.Module) -> None:
        """Initial placement and hooks; "none" leaves the models where they are.

        Offload modes: every model goes home; Gemma's forward brings it to the device (after sending
        the DiT and DC-AE home in "text_encoder" mode) and sends it home when it returns, so only a
        prompt-cache miss moves anything; "sequential" adds the per-block hooks of the DiT.
        """
        if self.mode == "none":
            return
        self._send((text_model, dit, vae), self.home)
        away = (dit, vae) if self.mode == "text_encoder" else ()
        self._hook(text_model, lambda: self._swap_in(text_model, away), lambda: self._send((text_model,), self.home))
        if self.mode == "sequential":
            for part in streamed_parts(dit):
                self._hook(part, lambda m=part: self.mover(m, self.device), lambda m=part: self.mover(m, self.home))

    def _hook(self, module: nn.Module, before: Callable[[], None], after: Callable[[], None]) -> None:
        self._hooks.append(module.register_forward_pre_hook(lambda m, args: before()))
        self._hooks.append(module.register_forward_hook(lambda m, args, out: after()))

    def remove_hooks(self) -> None:
        """Detach the streaming hooks (the modules stay where they are)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def _send(self, modules, device: torch.device) -> None:
        for module in modules:
            self.mover(module, device)
        if device == self.home and modules:
            _release(self.device)

    def _swap_in(self, module: nn.Module, away) -> None:
        """Send `away` home first, then bring `module`: the two never share the device."""
        self._send(away, self.home)
        self._send((module,), self.device)

    def before_sampling(self, dit: nn.Module, vae: nn.Module) -> None:
        """"text_encoder": the DiT and DC-AE come to the device (and stay); others: nothing to do."""
        if self.mode == "text_encoder":
            self._send((dit, vae), self.device)

    @contextmanager
    def decoding(self, vae: nn.Module) -> Iterator[None]:
        """The DC-AE on the device for the decode; "sequential" sends it home afterwards."""
        if self.mode == "none":
            yield
            return
        self._send((vae,), self.device)
        try:
            yield
        finally:
            if self.mode == "sequential":
                self._send((vae,), self.home)
