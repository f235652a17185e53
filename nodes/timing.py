"""Stage wall times of the running prompt, shared by the generation nodes and the live preview.

Design (no extra sockets for users): SanaSprintTextEncode, SanaSprintSampler and SanaSprintVAEDecode
wrap their work in `timed(stage)`, which records the wall time under the prompt id and node id of
ComfyUI's executing context. SanaSprintLivePreview runs after them in the same prompt and reads
`current_summary()`. A stage that ComfyUI served from its cache records nothing, so it shows as
"cached". Times are wall-clock seconds of the node's execute (results are moved to ComfyUI's
intermediate device, usually the CPU, so GPU work has finished when a stage ends).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from comfy_execution.utils import get_executing_context

from ..sana_sprint_core.constants import LATENCY_PROMPTS_KEPT
from ..sana_sprint_core.latency import LatencyLog

LOG = LatencyLog(LATENCY_PROMPTS_KEPT)


@contextmanager
def timed(stage: str) -> Iterator[None]:
    """Record the wall time of the block as `stage` of the executing prompt (nothing on an error,
    nothing outside a prompt, e.g. when a node is called directly)."""
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    context = get_executing_context()
    if context is not None:
        LOG.record(context.prompt_id, str(context.node_id), stage, seconds)


def current_summary() -> dict[str, float | None] | None:
    """Per-stage seconds of the executing prompt (see LatencyLog.summary), or None outside a prompt."""
    context = get_executing_context()
    return None if context is None else LOG.summary(context.prompt_id)
