"""Known model files (sana_sprint_core/model_files.py): lookup under models/ and the missing-file message."""

from __future__ import annotations

from sana_sprint_core import controlnet_loading, hed, model_files
from sana_sprint_core.constants import COMFY_CONTROLNET_NAME, HED_FILE_NAME


def test_controlnet_and_hed_kinds_point_at_the_public_files():
    (cn,) = model_files.KINDS["controlnet"]
    assert (cn.name, cn.folder, cn.repo) == (
        COMFY_CONTROLNET_NAME, "controlnet", "Efficient-Large-Model/Sana_1600M_1024px_BF16_ControlNet_HED")
    assert cn.what == f"checkpoints/{COMFY_CONTROLNET_NAME}"
    (h,) = model_files.KINDS["hed"]
    assert (h.name, h.folder, h.repo, h.what) == (HED_FILE_NAME, "annotators", "lllyasviel/Annotators", HED_FILE_NAME)
    # defined once: the loaders use the same entries
    assert controlnet_loading.CONTROLNET_FILES is model_files.CONTROLNET_FILES and hed.HED_FILE is h


def test_find_model_and_missing_message(tmp_path):
    assert model_files.find_model(tmp_path, "controlnet") is None
    message = model_files.missing_models_message(tmp_path, ["controlnet", "hed"])
    assert f"controlnet (looked in {tmp_path / 'controlnet'} for {COMFY_CONTROLNET_NAME})" in message
    assert "https://huggingface.co/Efficient-Large-Model/Sana_1600M_1024px_BF16_ControlNet_HED" in message
    assert f"hed (looked in {tmp_path / 'annotators'} for {HED_FILE_NAME})" in message
    assert f"https://huggingface.co/lllyasviel/Annotators to {tmp_path / 'annotators' / HED_FILE_NAME}" in message
    (tmp_path / "annotators").mkdir()
    (tmp_path / "annotators" / HED_FILE_NAME).write_bytes(b"x")
    assert model_files.find_model(tmp_path, "hed") == tmp_path / "annotators" / HED_FILE_NAME
