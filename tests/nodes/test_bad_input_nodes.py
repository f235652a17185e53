"""Bad input at the nodes (ComfyUI stubs): what validation answers before anything runs, and what a
node says when a value arrives through a link instead of a widget. Case ids are rows of
docs/reliability.md. The same values over real HTTP: tests/e2e/test_real_bad_input.py.
"""

from __future__ import annotations

import math

import pytest

from sana_sprint_core.constants import COMFY_DIT_NAME, COMFY_TEXT_ENCODER_NAME

# ComfyUI's own widget check is `value < min or value > max`, False for NaN: these reach validate_inputs.
FLOAT_CASES = [
    ("N01", "SanaSprintSampler", {"guidance": math.nan}, "guidance must be a finite number from 0.0 to 20.0, got nan"),
    ("N02", "SanaSprintSampler", {"guidance": math.inf}, "guidance must be a finite number from 0.0 to 20.0, got inf"),
    ("N03", "SanaSprintSampler", {"guidance": 25.0}, "guidance 25.0 is bigger than the maximum 20.0"),
    ("N04", "SanaSprintSampler", {"denoise": math.nan}, "denoise must be a finite number from 0.01 to 1.0"),
    ("N05", "SanaSprintSampler", {"max_timestep": -math.inf}, "max_timestep must be a finite number"),
    ("N06", "SanaSprintSigmas", {"intermediate_timestep": math.nan}, "intermediate_timestep must be a finite number"),
    ("N07", "SanaSprintControlNetApply", {"strength": math.nan}, "strength must be a finite number from 0.0 to"),
    ("N08", "SanaSprintControlNetApply", {"strength": -1.0}, "strength -1.0 is smaller than the minimum 0.0"),
    ("N09", "SanaSprintLoraLoader", {"lora_name": None, "strength": math.nan},
     "strength must be a finite number from -10.0 to 10.0"),
    ("N10", "SanaSprintDistill", {"output_name": "run", "learning_rate": math.nan},
     "learning_rate must be a finite number from 1e-08 to 1.0"),
    ("N11", "SanaSprintDistill", {"output_name": "run", "alpha": math.inf}, "alpha must be a finite number"),
    ("N12", "SanaSprintDistill", {"output_name": "run", "max_time_probability": 2.0},
     "max_time_probability 2.0 is bigger than the maximum 1.0"),
    ("N13", "SanaSprintDistillControlNet",
     {"mode": "train", "teacher_controlnet": "none", "init": "backbone", "output_name": "run", "scm_weight": math.nan},
     "scm_weight must be a finite number from 0.0 to 100.0"),
]


@pytest.mark.parametrize("case, node_id, values, words", FLOAT_CASES, ids=[c[0] for c in FLOAT_CASES])
def test_validation_refuses_non_finite_and_out_of_range_floats(nodes, case, node_id, values, words):
    node = nodes[node_id]
    answer = node.validate_inputs(**values)
    assert answer == words or (isinstance(answer, str) and answer.startswith(words)), answer


def test_validation_accepts_the_widget_defaults(nodes):
    """The same checks pass every default value (the shipped workflows use them)."""
    for node_id, values in (("SanaSprintSampler", dict(guidance=4.5, max_timestep=1.5708, intermediate_timestep=1.3,
                                                       denoise=1.0)),
                            ("SanaSprintControlNetApply", dict(strength=1.0)),
                            ("SanaSprintLoraLoader", dict(lora_name=None, strength=-0.5))):
        assert nodes[node_id].validate_inputs(**values) is True


@pytest.fixture(scope="module")
def loaded(nodes):
    model = nodes["SanaSprintDiTLoader"].execute(COMFY_DIT_NAME, "auto")[0]
    te = nodes["SanaSprintTextEncoderLoader"].execute(COMFY_TEXT_ENCODER_NAME, "auto")[0]
    cond = nodes["SanaSprintTextEncode"].execute(te, "a cat", True)[0]
    return model, cond


def test_linked_nan_guidance_is_named_when_the_sampler_runs(nodes, loaded):
    """N14: a value from another node skips validation; the sampler names it instead of failing in the preview."""
    model, cond = loaded
    latent = nodes["SanaSprintEmptyLatent"].execute(64, 64, 1, "custom")[0]
    args = dict(model=model, positive=cond, latent_image=latent, seed=1, steps=1, guidance=math.nan,
                max_timestep=1.5708, intermediate_timestep=1.3, denoise=1.0, timesteps="")
    with pytest.raises(ValueError, match="guidance must be a finite number >= 0"):
        nodes["SanaSprintSampler"].execute(**args)


@pytest.mark.parametrize("case, width, words", [
    ("N15", 8192, "width 8192 is larger than 4096"),
    ("N16", 1000, "width must be a positive multiple of 32"),
], ids=["N15", "N16"])
def test_empty_latent_refuses_sizes(nodes, case, width, words):
    with pytest.raises(ValueError, match=words):
        nodes["SanaSprintEmptyLatent"].execute(width, 1024, 1, "custom")


def test_timesteps_text_names_the_input(nodes):
    """N17: the sampler's schedule text with words in it."""
    with pytest.raises(ValueError, match="timesteps must be numbers separated by commas, e.g. '1.5708, 1.3, 0'; "
                                         "got 'fast, slow'"):
        nodes["SanaSprintSigmas"].execute(2, 1.5708, 1.3, 1.0, "fast, slow")
