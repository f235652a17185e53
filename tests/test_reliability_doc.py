"""docs/reliability.md lists exactly the bad-input cases the battery tests (ids like B01, H09)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BATTERY = ("tests/test_bad_input.py", "tests/nodes/test_bad_input_nodes.py", "tests/e2e/test_real_bad_input.py")
CASE_ID = re.compile(r"\b([BCTKRNH]\d\d)\b")


def test_the_table_and_the_battery_hold_the_same_cases():
    tested = {m for path in BATTERY for m in CASE_ID.findall((REPO / path).read_text())}
    rows = re.findall(r"^\| ([BCTKRNH]\d\d) \|", (REPO / "docs" / "reliability.md").read_text(), re.M)
    assert len(rows) == len(set(rows)), "a case id appears twice in the table"
    assert set(rows) == tested, (sorted(set(rows) - tested), sorted(tested - set(rows)))
    assert len(rows) >= 60
