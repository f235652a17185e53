"""Per-prompt wall times of the generation stages, for the live preview's latency line.

The text-encode, sampler and decode nodes each record how long their `execute` took, under the id
of the prompt (queued run) they belong to; the live preview node, which runs after them in the same
prompt, reads the prompt's record back. A stage without a record in a prompt was not executed in it
(ComfyUI reused its cached output), so it cost nothing in that run.

    log = LatencyLog(max_prompts=16)
    log.record("prompt-1", "4", "text_encode", 0.012)
    log.summary("prompt-1")  # {"text_encode": 0.012, "sampling": None, "decode": None, "total": 0.012}
    format_latency(log.summary("prompt-1"))  # "text encode 12 ms | sampling cached | decode cached | ..."
"""

from __future__ import annotations

import math
from collections import OrderedDict

# Stage keys in pipeline order, with the words shown on the node.
STAGES = {"text_encode": "text encode", "sampling": "sampling", "decode": "decode"}


class LatencyLog:
    """Stage wall times by prompt id, keeping the `max_prompts` most recently recorded prompts."""

    def __init__(self, max_prompts: int):
        if isinstance(max_prompts, bool) or not isinstance(max_prompts, int) or max_prompts < 1:
            raise ValueError(f"max_prompts must be an integer >= 1, got {max_prompts!r}")
        self.max_prompts = max_prompts
        self._prompts: OrderedDict[str, dict[str, dict[str, float]]] = OrderedDict()

    def record(self, prompt_id: str, node_id: str, stage: str, seconds: float) -> None:
        """Store the wall time of `stage` run by node `node_id` in prompt `prompt_id`.

        A node that runs twice in one prompt (a list input) adds up. ValueError for an unknown
        stage or a negative or non-finite time.
        """
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {list(STAGES)}, got {stage!r}")
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
        stages = self._prompts.setdefault(prompt_id, {})
        self._prompts.move_to_end(prompt_id)
        nodes = stages.setdefault(stage, {})
        nodes[node_id] = nodes.get(node_id, 0.0) + seconds
        while len(self._prompts) > self.max_prompts:
            self._prompts.popitem(last=False)

    def summary(self, prompt_id: str) -> dict[str, float | None]:
        """Seconds per stage in this prompt (summed over nodes; None = not run, i.e. cached) and "total"."""
        stages = self._prompts.get(prompt_id, {})
        out: dict[str, float | None] = {}
        for stage in STAGES:
            out[stage] = sum(stages[stage].values()) if stage in stages else None
        out["total"] = sum(v for v in out.values() if v is not None)
        return out

    def __contains__(self, prompt_id: str) -> bool:
        return prompt_id in self._prompts


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def format_latency(summary: dict[str, float | None]) -> str:
    """One line for the node: each stage's time or "cached", then the sum of the stages that ran."""
    parts = [f"{label} {'cached' if summary.get(stage) is None else _ms(summary[stage])}"
             for stage, label in STAGES.items()]
    return " | ".join(parts) + f" | model time {_ms(summary.get('total') or 0.0)}"
