"""Model listings from ComfyUI's folders: files, diffusers folders, pipeline folders; resolution errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest


@pytest.fixture
def files(pack, tmp_path, monkeypatch):
    """model_files with the 'vae' and 'diffusion_models' folders pointed at an empty tmp folder."""
    module = pack.nodes.model_files
    fp = module.folder_paths
    for name in ("vae", "diffusion_models"):
        (tmp_path / name).mkdir()
        monkeypatch.setitem(fp.folder_names_and_paths, name, ([str(tmp_path / name)], fp.supported_pt_extensions))
    return module, tmp_path


def _touch(path, text="x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_listing_has_files_and_model_folders_once(files):
    module, root = files
    _touch(root / "vae" / "single.safetensors")
    _touch(root / "vae" / "notes.txt")
    _touch(root / "vae" / "dcae" / "config.json")
    _touch(root / "vae" / "dcae" / "diffusion_pytorch_model.safetensors")
    _touch(root / "vae" / "pipe" / "model_index.json")
    _touch(root / "vae" / "pipe" / "vae" / "config.json")
    _touch(root / "vae" / "pipe" / "vae" / "diffusion_pytorch_model.safetensors")
    _touch(root / "vae" / "empty" / "config.json")  # config without weights: not a model
    assert module.list_models(module.VAE) == ["dcae", "pipe", "pipe/vae", "single.safetensors"]


def test_resolve_maps_pipeline_folders_for_the_vae_only(files):
    module, root = files
    for folder in ("vae", "diffusion_models"):
        _touch(root / folder / "pipe" / "model_index.json")
    _touch(root / "vae" / "pipe" / "vae" / "config.json")
    _touch(root / "diffusion_models" / "pipe" / "transformer" / "config.json")
    assert module.resolve(module.VAE, "pipe") == root / "vae" / "pipe" / "vae"
    assert module.resolve(module.DIT, "pipe") == root / "diffusion_models" / "pipe"  # load_dit reads pipelines


def test_missing_and_outside_names(files):
    module, root = files
    with pytest.raises(FileNotFoundError, match=r"DC-AE autoencoder 'x' not found in ComfyUI's 'vae' folder"):
        module.resolve(module.VAE, "x")
    message = module.check_available(module.DIT, "Sana.safetensors")
    assert "Efficient-Large-Model/Sana_Sprint_1.6B_1024px_diffusers" in message
    assert "'Sana_Sprint_1.6B_1024px_diffusers'" in message and "Nothing is downloaded" in message
    with pytest.raises(ValueError, match="points outside the 'vae' folder"):
        module.resolve(module.VAE, "../diffusion_models/x")


def test_workflow_names_are_known_downloads(pack):
    module = pack.nodes.model_files
    for kind in (module.DIT, module.TEXT_ENCODER, module.VAE):
        assert kind.example in [entry.name for entry in kind.known], kind.folder


def _download_targets(message: str) -> list[str]:
    return re.findall(r" to (\S+?)(?:;|\. Nothing)", message)


def test_missing_message_names_each_folder_once_where_the_loader_looks(files, monkeypatch):
    """ComfyUI searches models/unet before models/diffusion_models: the hint names the latter, once."""
    module, root = files
    fp = module.folder_paths
    unet = root / "unet"
    unet.mkdir()
    monkeypatch.setitem(fp.folder_names_and_paths, "diffusion_models",
                        ([str(unet), str(root / "diffusion_models")], fp.supported_pt_extensions))
    for kind, name in ((module.DIT, "Sana_Sprint_1.6B_1024px_diffusers"), (module.VAE, "dc-ae-f32c32-sana-1.1-diffusers")):
        message = module.missing_message(kind, name)
        (target,) = _download_targets(message)
        assert Path(target) == root / kind.folder / name, message
        assert f"{kind.folder}/{kind.folder}" not in message.replace("\\", "/")
        Path(target).mkdir(parents=True)  # put the model where the message says: the loader finds it
        (Path(target) / "config.json").write_text("{}")
        (Path(target) / "diffusion_pytorch_model.safetensors").write_text("x")
        assert module.resolve(kind, name) == Path(target)


def test_a_missing_teacher_is_answered_with_the_teachers_repositories(files):
    module, root = files
    message = module.missing_message(module.DIT, "SANA_Sprint_1.6B_1024px_teacher_diffusers")
    assert "https://huggingface.co/Efficient-Large-Model/SANA_Sprint_1.6B_1024px_teacher_diffusers" in message
    assert "https://huggingface.co/Efficient-Large-Model/SANA_Sprint_1.6B_1024px_teacher " in message
    assert "Sana_Sprint_1.6B_1024px_diffusers" not in message  # not the student's repositories
    assert _download_targets(message)[0] == str(root / "diffusion_models" / "SANA_Sprint_1.6B_1024px_teacher_diffusers")
    # a known student file gets its own hint only; an unknown name gets the usual files
    assert len(_download_targets(module.missing_message(module.DIT, "Sana_Sprint_1.6B_1024px.pth"))) == 1
    assert len(_download_targets(module.missing_message(module.DIT, "mine.safetensors"))) == 4
