"""Per-prompt stage timings for the live preview (sana_sprint_core.latency)."""

import pytest

from sana_sprint_core.latency import STAGES, LatencyLog, format_latency


def test_summary_sums_nodes_per_stage_and_marks_missing_stages_cached():
    log = LatencyLog(4)
    log.record("p1", "4", "text_encode", 0.010)
    log.record("p1", "6", "sampling", 0.200)
    log.record("p1", "16", "sampling", 0.050)  # a second sampler in the same prompt
    log.record("p1", "6", "sampling", 0.025)  # the same node again (list input)
    assert log.summary("p1") == pytest.approx(
        {"text_encode": 0.010, "sampling": 0.275, "decode": None, "total": 0.285})
    assert log.summary("unknown") == {"text_encode": None, "sampling": None, "decode": None, "total": 0.0}


def test_prompts_are_kept_separately_and_the_oldest_is_dropped():
    log = LatencyLog(2)
    for i, prompt in enumerate(["a", "b", "c"]):
        log.record(prompt, "7", "decode", 0.1 * (i + 1))
    assert "a" not in log and "b" in log and "c" in log
    assert log.summary("b")["decode"] == pytest.approx(0.2)
    log.record("b", "4", "text_encode", 0.01)  # recording again makes "b" the newest
    log.record("d", "7", "decode", 0.4)
    assert "b" in log and "c" not in log


def test_format_shows_each_stage_in_order_with_cached_ones():
    text = format_latency({"text_encode": None, "sampling": 0.3124, "decode": 0.0806, "total": 0.393})
    assert text == "text encode cached | sampling 312 ms | decode 81 ms | model time 393 ms"
    assert list(STAGES) == ["text_encode", "sampling", "decode"]


@pytest.mark.parametrize("args, match", [
    (("p", "1", "encode", 0.1), r"stage must be one of \['text_encode', 'sampling', 'decode'\], got 'encode'"),
    (("p", "1", "decode", -0.1), r"seconds must be a finite number >= 0, got -0.1"),
    (("p", "1", "decode", float("nan")), r"seconds must be a finite number >= 0, got nan"),
])
def test_bad_records_are_rejected(args, match):
    with pytest.raises(ValueError, match=match):
        LatencyLog(2).record(*args)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_sizes_are_rejected(bad):
    with pytest.raises(ValueError, match="max_prompts must be an integer >= 1"):
        LatencyLog(bad)
