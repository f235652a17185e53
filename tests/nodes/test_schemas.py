"""Node schemas: public ids and input names (golden file), descriptions, tooltips, categories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

GOLDEN = Path(__file__).with_name("node_api.json")


def _public_api(nodes: dict) -> dict:
    api = {}
    for node_id, cls in sorted(nodes.items()):
        schema = cls.define_schema()
        api[node_id] = {"inputs": [i.id for i in schema.inputs], "outputs": [o.io_type for o in schema.outputs]}
    return api


def test_public_api_matches_the_golden_file(nodes):
    """Node ids and input names are public API: removals and renames fail here.

    Additions need node_api.json updated on purpose (never rename or remove an entry).
    """
    golden = json.loads(GOLDEN.read_text())
    current = _public_api(nodes)
    for node_id, entry in golden.items():
        assert node_id in current, f"node {node_id} was removed or renamed"
        got = current[node_id]["inputs"]
        assert got[: len(entry["inputs"])] == entry["inputs"], f"{node_id}: inputs renamed/reordered: {got}"
        assert current[node_id]["outputs"] == entry["outputs"], node_id
    assert current == golden, "new nodes or inputs: add them to tests/nodes/node_api.json"


def test_every_node_is_prefixed_categorised_and_described(nodes):
    assert len(nodes) == 25
    for node_id, cls in nodes.items():
        schema = cls.define_schema()
        schema.validate()
        assert node_id.startswith("SanaSprint") and schema.node_id == node_id
        assert schema.category.startswith("SanaSprint/"), node_id
        assert len(schema.description) > 40, node_id
        assert schema.display_name, node_id


@pytest.mark.parametrize("kind", ["inputs", "outputs"])
def test_every_input_and_output_has_a_tooltip(nodes, kind):
    for node_id, cls in nodes.items():
        for item in getattr(cls.define_schema(), kind):
            assert item.tooltip and len(item.tooltip) > 10, f"{node_id}.{item.id}"


def test_optional_inputs_come_last(nodes):
    """ComfyUI orders optional inputs after required ones; the schema must list them the same way."""
    for node_id, cls in nodes.items():
        flags = [bool(i.optional) for i in cls.define_schema().inputs]
        assert flags == sorted(flags), node_id


def test_seed_has_control_after_generate_and_full_range(nodes):
    seed = next(i for i in nodes["SanaSprintSampler"].define_schema().inputs if i.id == "seed")
    assert seed.control_after_generate is True
    assert (seed.min, seed.max) == (0, 0xFFFFFFFFFFFFFFFF)


def test_steps_are_limited_to_one_to_four(nodes):
    for node_id in ("SanaSprintSampler", "SanaSprintSigmas"):
        steps = next(i for i in nodes[node_id].define_schema().inputs if i.id == "steps")
        assert (steps.min, steps.max, steps.default) == (1, 4, 2)
