"""FLOAT widget values that ComfyUI's own checks let through: NaN and infinities.

ComfyUI checks a FLOAT input with `value < min` and `value > max`, both False for NaN, so a JSON
`NaN` (or `Infinity`, which JSON parsers read too) posted over the HTTP API reached the nodes and failed
far away (an SVD in the preview). A node with FLOAT inputs names them in `validate_inputs` and returns
`check_floats(cls, ...)`: the prompt is then refused with a 400 naming the node's input, the value
and the range. ComfyUI skips its own min/max check for the inputs a node's validate_inputs takes, so
this does both.
"""

from __future__ import annotations

import math


def check_floats(cls, **values) -> bool | str:
    """True, or what is wrong with the first bad value (None: a linked input, checked where it is made)."""
    specs = {i.id: i for i in cls.define_schema().inputs}
    for name, value in values.items():
        if value is None:
            continue
        spec = specs[name]
        lo, hi = spec.min, spec.max
        limits = f"from {lo} to {hi}" if lo is not None and hi is not None else ""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"{name} must be a finite number {limits}, got {value!r}".replace("  ", " ")
        if lo is not None and value < lo:
            return f"{name} {value} is smaller than the minimum {lo}"
        if hi is not None and value > hi:
            return f"{name} {value} is bigger than the maximum {hi}"
    return True
