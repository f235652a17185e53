"""Where the model files live and where to download them (shared by the CLI, the trainer and the nodes).

The folder names follow ComfyUI's `models/` layout, so one download serves both. Each kind lists the
names we look for, in order; a name may be a single file or a folder (a diffusers/HF snapshot).
Kinds: the three generation models (dit, text_encoder, vae), the distillation teacher (teacher, in
the DiT's folder), and, for ControlNet, the Sana HED ControlNet (controlnet) and the HED annotator
weights (hed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .constants import (
    COMFY_CONTROLNET_NAME, COMFY_TEACHER_NAME, HED_FILE_NAME, HED_MODEL_FOLDER, HF_ANNOTATORS, HF_DCAE, HF_GEMMA,
    HF_SANA_CONTROLNET_HED_1600M, HF_SPRINT_600M, HF_SPRINT_1600M,
)

HF_SPRINT_1600M_NVLABS = "Efficient-Large-Model/Sana_Sprint_1.6B_1024px"
HF_SPRINT_600M_NVLABS = "Efficient-Large-Model/Sana_Sprint_0.6B_1024px"
HF_SPRINT_TEACHER_1600M = "Efficient-Large-Model/SANA_Sprint_1.6B_1024px_teacher_diffusers"
HF_SPRINT_TEACHER_1600M_NVLABS = "Efficient-Large-Model/SANA_Sprint_1.6B_1024px_teacher"


@dataclass(frozen=True)
class ModelFile:
    """One downloadable model: the name we look for, its folder under models/, and its source."""

    name: str  # file or folder name inside `folder`
    folder: str  # ComfyUI model folder: diffusion_models, text_encoders, vae, controlnet or annotators
    repo: str  # public Hugging Face repository
    what: str  # what to download from the repository

    def hint(self, models_dir: Path | str) -> str:
        """Where to download it, for a models/ folder that holds `self.folder`."""
        return self.hint_in(Path(models_dir) / self.folder)

    def hint_in(self, folder: Path | str) -> str:
        """Where to download it, for the model folder itself (e.g. ComfyUI's models/vae)."""
        where = Path(folder) / self.name
        return f"{self.name}: download {self.what} from https://huggingface.co/{self.repo} to {where}"


# Default first: the workflows and the CLI use these names.
DIT_FILES = (
    ModelFile("Sana_Sprint_1.6B_1024px_diffusers", "diffusion_models", HF_SPRINT_1600M,
              "the transformer/ folder (config.json + diffusion_pytorch_model*.safetensors)"),
    ModelFile("Sana_Sprint_1.6B_1024px.pth", "diffusion_models", HF_SPRINT_1600M_NVLABS,
              "checkpoints/Sana_Sprint_1.6B_1024px.pth"),
    ModelFile("Sana_Sprint_0.6B_1024px_diffusers", "diffusion_models", HF_SPRINT_600M,
              "the transformer/ folder (config.json + diffusion_pytorch_model*.safetensors)"),
    ModelFile("Sana_Sprint_0.6B_1024px.pth", "diffusion_models", HF_SPRINT_600M_NVLABS,
              "checkpoints/Sana_Sprint_0.6B_1024px.pth"),
)
# Flow-matching teachers of the distillation (reference section 6: QK-norm, dense time), also in
# diffusion_models/; the training workflow names the diffusers one (COMFY_TEACHER_NAME).
TEACHER_FILES = (
    ModelFile(COMFY_TEACHER_NAME, "diffusion_models", HF_SPRINT_TEACHER_1600M,
              "the transformer/ folder (config.json + diffusion_pytorch_model*.safetensors)"),
    ModelFile("SANA_Sprint_1.6B_1024px_teacher.pth", "diffusion_models", HF_SPRINT_TEACHER_1600M_NVLABS,
              "checkpoints/SANA_Sprint_1.6B_1024px_teacher.pth"),
)
TEXT_ENCODER_FILES = (
    ModelFile("gemma-2-2b-it", "text_encoders", HF_GEMMA, "the whole repository (config, tokenizer, safetensors)"),
)
VAE_FILES = (
    ModelFile("dc-ae-f32c32-sana-1.1-diffusers", "vae", HF_DCAE,
              "the whole repository (config.json + diffusion_pytorch_model.safetensors)"),
)
# Released Sana (not Sprint) HED ControlNet, an NVlabs checkpoint that also holds its Sana base model
# (reference 5.1). No Sprint ControlNet is public; trainers.distill's ControlNet mode distils one.
CONTROLNET_FILES = (
    ModelFile(COMFY_CONTROLNET_NAME, "controlnet", HF_SANA_CONTROLNET_HED_1600M,
              f"checkpoints/{COMFY_CONTROLNET_NAME}"),
)
# lllyasviel's ControlNetHED_Apache2 weights (reference 5.3), in models/annotators/.
HED_FILES = (ModelFile(HED_FILE_NAME, HED_MODEL_FOLDER, HF_ANNOTATORS, HED_FILE_NAME),)
KINDS = {"dit": DIT_FILES, "teacher": TEACHER_FILES, "text_encoder": TEXT_ENCODER_FILES, "vae": VAE_FILES,
         "controlnet": CONTROLNET_FILES, "hed": HED_FILES}


def find_model(models_dir: Path | str, kind: str) -> Path | None:
    """The first known model of `kind` present under models_dir/<folder>/, or None."""
    for entry in KINDS[kind]:
        candidate = Path(models_dir) / entry.folder / entry.name
        if candidate.exists():
            return candidate
    return None


def missing_models_message(models_dir: Path | str, kinds: list[str]) -> str:
    """A message naming, for each missing kind, the folder searched and what to download from where."""
    lines = [f"model files missing under {Path(models_dir).resolve()}:"]
    for kind in kinds:
        entries = KINDS[kind]
        lines.append(f"- {kind} (looked in {Path(models_dir) / entries[0].folder} for "
                     f"{', '.join(e.name for e in entries)}); get the default one:")
        lines.append(f"    {entries[0].hint(models_dir)}")
    return "\n".join(lines)
