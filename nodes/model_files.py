"""Model files from ComfyUI's model folders (`folder_paths`): listings and missing-file messages.

A listing holds the single weight files ComfyUI lists for the folder plus model FOLDERS, each as
one entry (its path relative to the model folder, with "/"):
  * a diffusers model folder: config.json beside weights (one file or a sharded index);
  * a diffusers pipeline folder: model_index.json beside the component subfolder (transformer/ for
    the DiT, text_encoder/ for Gemma, vae/ for DC-AE).
Weight files inside a listed folder are not listed again on their own; only loadable weight files
(safetensors / PyTorch suffixes) are listed.

The HED annotator weights live in `annotators`, a folder ComfyUI does not define: `register_annotators`
adds models/annotators and, as a fallback, comfyui_controlnet_aux's download folder
(custom_nodes/comfyui_controlnet_aux/ckpts/lllyasviel/Annotators), so a copy that pack downloaded is
found too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import folder_paths

from ..sana_sprint_core import model_files as core_files
from ..sana_sprint_core.constants import (
    COMFY_CONTROLNET_NAME, COMFY_DIT_NAME, COMFY_TEXT_ENCODER_NAME, COMFY_VAE_NAME, HED_FILE_NAME, HED_MODEL_FOLDER,
)
from ..sana_sprint_core.hed import CONTROLNET_AUX_HED

_WEIGHT_SUFFIXES = (".safetensors", ".sft", ".bin", ".pth", ".pt", ".ckpt")


@dataclass(frozen=True)
class ModelKind:
    """One kind of model: its ComfyUI folder, pipeline subfolder, workflow name and known downloads."""

    folder: str
    component: str
    example: str
    what: str
    known: tuple  # core model_files.ModelFile entries: public names and where to download them
    # Further entries of the same folder, hinted only when asked for by name (the DiT loader also
    # loads the distillation teacher: a missing teacher is answered with the teacher's repositories).
    named: tuple = ()
    # True when the core loader needs the component subfolder of a pipeline folder (DC-AE); the DiT
    # and Gemma loaders read pipeline folders themselves (Gemma also needs tokenizer/ beside it).
    pipeline_subfolder: bool = False


DIT = ModelKind("diffusion_models", "transformer", COMFY_DIT_NAME, "SANA-Sprint DiT", core_files.DIT_FILES,
                named=core_files.TEACHER_FILES)
TEXT_ENCODER = ModelKind("text_encoders", "text_encoder", COMFY_TEXT_ENCODER_NAME, "Gemma-2 text encoder",
                         core_files.TEXT_ENCODER_FILES)
VAE = ModelKind("vae", "vae", COMFY_VAE_NAME, "DC-AE autoencoder", core_files.VAE_FILES, pipeline_subfolder=True)
CONTROLNET = ModelKind("controlnet", "controlnet", COMFY_CONTROLNET_NAME, "Sana ControlNet",
                       core_files.CONTROLNET_FILES)
HED = ModelKind(HED_MODEL_FOLDER, HED_MODEL_FOLDER, HED_FILE_NAME, "HED annotator", core_files.HED_FILES)


def register_annotators() -> None:
    """Add models/annotators (first) and comfyui_controlnet_aux's Annotators download folder to folder_paths."""
    folder_paths.add_model_folder_path(HED.folder, os.path.join(folder_paths.models_dir, HED.folder), is_default=True)
    aux = CONTROLNET_AUX_HED[1:-1]  # comfyui_controlnet_aux/ckpts/lllyasviel/Annotators
    for root in folder_paths.get_folder_paths("custom_nodes"):
        folder_paths.add_model_folder_path(HED.folder, os.path.join(root, *aux))


register_annotators()


def _is_model_folder(path: Path, component: str) -> bool:
    if (path / "model_index.json").is_file() and (path / component).is_dir():
        return True
    if not (path / "config.json").is_file():
        return False
    return any(p.name.endswith(_WEIGHT_SUFFIXES) or p.name.endswith(".index.json") for p in path.iterdir())


def _model_folders(root: Path, component: str) -> list[str]:
    """Relative paths ("a/b") of the model folders under `root`, searched recursively."""
    found = []
    for dirpath, dirnames, _ in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        if here != root and _is_model_folder(here, component):
            found.append(here.relative_to(root).as_posix())
    return found


def list_models(kind: ModelKind) -> list[str]:
    """Sorted entries for a loader's combo: weight files outside model folders, plus model folders."""
    folders = [f for root in folder_paths.get_folder_paths(kind.folder) if os.path.isdir(root)
               for f in _model_folders(Path(root), kind.component)]
    inside = tuple(f + "/" for f in folders)
    files = [f for f in folder_paths.get_filename_list(kind.folder)
             if not f.replace(os.sep, "/").startswith(inside) and f.lower().endswith(_WEIGHT_SUFFIXES)]
    return sorted(set(files) | set(folders))


def download_folder(kind: ModelKind) -> str:
    """The folder a download should go to: ComfyUI's own `models/<kind.folder>` among the folders it
    searches (diffusion_models also searches the legacy models/unet, listed first), else the first."""
    roots = folder_paths.get_folder_paths(kind.folder)
    named = [r for r in roots if os.path.basename(os.path.normpath(r)) == kind.folder]
    return (named or roots or [os.path.join(folder_paths.models_dir, kind.folder)])[0]


def missing_message(kind: ModelKind, name: str) -> str:
    """What is missing, where ComfyUI looked, and what to download from which public repository.

    A known public name gets its own download hint; a teacher's name gets the teachers' repositories;
    any other name gets the hints of the kind's usual files."""
    roots = folder_paths.get_folder_paths(kind.folder)
    where = download_folder(kind)
    wanted = os.path.normpath(name).replace(os.sep, "/")
    if any(e.name == wanted for e in kind.named):
        entries = list(kind.named)
    else:
        entries = [e for e in kind.known if e.name == wanted] or list(kind.known)
    hints = "; ".join(entry.hint_in(where) for entry in entries)
    example = entries[0].name if entries[0] in kind.named else kind.example
    return (f"{kind.what} {name!r} not found in ComfyUI's '{kind.folder}' folder ({', '.join(roots)}). Expected "
            f"the file or folder '{name}' there; the workflows use '{example}'. Download "
            f"{'it' if len(entries) == 1 else 'one of'}: {hints}. Nothing is downloaded automatically.")


def resolve(kind: ModelKind, name: str) -> Path:
    """The full path of a listed entry (file or folder); FileNotFoundError with missing_message."""
    normal = os.path.normpath(name)
    if os.path.isabs(normal) or normal.split(os.sep)[0] == "..":
        raise ValueError(f"{kind.what} name {name!r} points outside the '{kind.folder}' folder")
    for root in folder_paths.get_folder_paths(kind.folder):
        candidate = Path(root) / normal
        if candidate.is_dir() and _is_model_folder(candidate, kind.component):
            pipeline = (candidate / "model_index.json").is_file() and (candidate / kind.component).is_dir()
            return candidate / kind.component if pipeline and kind.pipeline_subfolder else candidate
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(missing_message(kind, name))


def check_available(kind: ModelKind, name: str) -> bool | str:
    """For validate_inputs: True when `name` resolves, else the missing-file message."""
    try:
        resolve(kind, name)
    except FileNotFoundError as e:
        return str(e)
    return True
