"""A minimal stand-in for ComfyUI's executor: runs an API-format prompt through the node classes."""

from __future__ import annotations

from collections.abc import Callable


def run_prompt(prompt: dict, run_node: Callable[[str, str, dict], tuple]) -> dict[str, tuple]:
    """Runs each node once all its linked inputs exist; `run_node(key, class_type, inputs)` returns the
    node's outputs (a tuple). Returns {node key: outputs}; a cycle or a missing node fails the test."""
    outputs, pending = {}, dict(prompt)
    while pending:
        ready = [k for k, n in pending.items()
                 if all(not isinstance(v, list) or v[0] in outputs for v in n["inputs"].values())]
        assert ready, f"cycle or missing node among {sorted(pending)}"
        for key in ready:
            node = pending.pop(key)
            inputs = {k: outputs[v[0]][v[1]] if isinstance(v, list) else v for k, v in node["inputs"].items()}
            outputs[key] = run_node(key, node["class_type"], inputs)
    return outputs
