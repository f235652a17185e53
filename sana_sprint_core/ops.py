"""The layer classes the core builds its models from, swappable by a host.

ComfyUI (and other hosts) pass their own namespace with `Linear`, `Conv2d`, `LayerNorm` classes
(manual cast, fp8 storage, ...). The core never names `torch.nn.Linear` directly in a model.
"""

from __future__ import annotations

from types import SimpleNamespace

from torch import nn

# The default namespace: plain torch layers.
default_operations = SimpleNamespace(Linear=nn.Linear, Conv2d=nn.Conv2d)


def resolve(operations):
    """Return `operations` or the default torch namespace when it is None."""
    return default_operations if operations is None else operations


def factory_kwargs(dtype, device) -> dict:
    """The dtype/device keyword arguments every layer constructor takes."""
    return {"dtype": dtype, "device": device}
