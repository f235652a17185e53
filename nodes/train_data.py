"""Training data nodes: an image folder -> SANA_DATASET, then -> SANA_TRAIN_CACHE (latents + text embeddings).

The folder layout is the trainer's (trainers/data.py): `<name>.png|jpg|jpeg|webp|bmp` with
`<name>.txt` beside it, `N_anything/` subfolders repeated N times. Precompute encodes everything once
with Gemma-2 and the DC-AE (trainers/precompute.py) into a cache folder under ComfyUI's temp folder,
then unloads both so that the GPU holds only the transformer while SanaSprintDistill trains. With
control_maps 'hed' it also stores the DC-AE latent of each image's HED scribble (the control maps
SanaSprintDistillControlNet trains on; trainers/controlnet.py scribble_encoder).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from comfy_api.latest import io

import comfy.model_management as mm
import comfy.utils
import folder_paths

from ..sana_sprint_core.constants import (
    DCAE_BYTES_PER_PIXEL_PER_DTYPE_BYTE, HED_FILE_NAME, LATENT_DOWNSCALE, MAX_IMAGE_SIDE, SCRIBBLE_TRAIN_THICKNESS_MAX,
)
from ..sana_sprint_core.dcae import encode
from ..sana_sprint_core.text_encoder import encode_prompt
from ..trainers.controlnet import scribble_encoder
from ..trainers.data import Item, Scan, bucket_counts, folder_digest, scan_folder
from ..trainers.precompute import CachedDataset, encode_captions, write_cache
from . import model_files
from .controlnet import hed_module, hed_options
from .loaders import TextEncoderType, VaeType
from .train_models import release

CATEGORY = "SanaSprint/training"
DatasetType = io.Custom("SANA_DATASET")
CacheType = io.Custom("SANA_TRAIN_CACHE")
CACHE_ROOT = "sana_sprint_training"  # under ComfyUI's temp folder (emptied when ComfyUI starts)
CONTROL_MAPS = ("none", "hed")  # Precompute's control_maps: none, or HED scribbles of the images


@dataclass(frozen=True)
class Dataset:
    """A scanned image folder: usable items, what was skipped and why, the training size buckets."""

    root: Path
    items: list[Item]
    skipped: list[str]
    resolution: int
    buckets: bool
    caption_extension: str
    bucket_counts: dict

    def summary(self) -> str:
        """A few lines for the node and the log."""
        examples = sum(i.repeats for i in self.items)
        sizes = ", ".join(f"{h}x{w}: {n}" for (h, w), n in self.bucket_counts.items())
        lines = [f"{len(self.items)} image(s), {examples} training example(s) with repeats, in {self.root}",
                 f"buckets (height x width): {sizes}"]
        lines.append(f"skipped {len(self.skipped)}: {'; '.join(self.skipped)}" if self.skipped else "skipped: none")
        return "\n".join(lines)


@dataclass(frozen=True)
class TrainCache:
    """A precomputed cache folder (trainers/precompute.py layout) and what it was made from."""

    folder: Path
    dataset_summary: str
    latent_channels: int
    text_channels: int
    has_control: bool = False  # control latents (HED scribbles) beside the image latents


def dataset_folder(folder: str) -> Path:
    """An absolute path as given, else a folder inside ComfyUI's input folder; ValueError if missing."""
    if not folder.strip():
        raise ValueError("SanaSprintDataset: folder is empty; give a folder inside ComfyUI's input folder or a path")
    path = Path(folder.strip()).expanduser()
    path = path if path.is_absolute() else Path(folder_paths.get_input_directory()) / path
    if not path.is_dir():
        raise ValueError(f"SanaSprintDataset: image folder {str(path)!r} not found; put your images with their "
                         f".txt captions into a folder inside ComfyUI's input folder and give its name, e.g. "
                         f"'my_style' for {Path(folder_paths.get_input_directory()) / 'my_style'}")
    return path


def check_scan(scan: Scan, caption_extension: str, skip_bad_files: bool) -> list[str]:
    """The skipped-file lines; ValueError naming every bad file unless skipping, or when nothing is left."""
    problems = scan.problems(caption_extension)
    if problems and not skip_bad_files:
        raise ValueError(f"SanaSprintDataset: {scan.root}: " + "; ".join(problems) +
                         ". Fix or remove these files, or turn on skip_bad_files to train on the others.")
    if not scan.items:
        raise ValueError(f"SanaSprintDataset: {scan.root} has no usable image: " + "; ".join(problems))
    return [f"{name} (no {caption_extension} caption)" for name in scan.missing_caption] + \
        [f"{entry.replace(' (', ' (unreadable: ', 1)}" for entry in scan.unreadable]


class SanaSprintDataset(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaSprintDataset",
            display_name="SANA-Sprint Training Images",
            category=CATEGORY,
            description="A folder of training images, each with a caption file beside it (cat.png + cat.txt). "
                        "Checks every file and reports the count, the size buckets and anything skipped.",
            inputs=[
                io.String.Input("folder", default="sana_sprint_training",
                                tooltip="Folder inside ComfyUI's input folder (or an absolute path) holding <name>.png "
                                        "/ .jpg / .jpeg / .webp / .bmp with <name>.txt captions. A subfolder named "
                                        "'N_anything' repeats its images N times."),
                io.Int.Input("resolution", default=1024, min=2 * LATENT_DOWNSCALE, max=MAX_IMAGE_SIDE,
                             step=LATENT_DOWNSCALE,
                             tooltip="Training resolution: every image is resized to about resolution x resolution "
                                     "pixels (its aspect bucket, sides multiples of 32). 1024 for the 1024px models."),
                io.Boolean.Input("buckets", default=True,
                                 tooltip="On: keep each image's aspect ratio (buckets from 1:4 to 4:1). Off: "
                                         "center-crop every image to a square."),
                io.Boolean.Input("skip_bad_files", default=False,
                                 tooltip="Off: an image without a caption or that cannot be read stops with a message "
                                         "naming every such file. On: they are skipped and listed in the summary."),
                io.String.Input("caption_extension", default=".txt",
                                tooltip="File extension of the caption files, e.g. .txt or .caption."),
            ],
            outputs=[DatasetType.Output(tooltip="The checked dataset, for SanaSprintPrecompute."),
                     io.String.Output(tooltip="Summary: image count, size buckets, skipped files and why.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def fingerprint_inputs(cls, folder, **kwargs):
        """Names, sizes and times of the folder's files, so an edited folder is scanned again."""
        if folder is None:  # linked from another node: ComfyUI compares the link's value itself
            return ""
        try:
            root = dataset_folder(folder)
        except ValueError as e:  # reported by execute; a changing value makes ComfyUI run it
            return f"missing:{e}"
        return folder_digest(root)

    @classmethod
    def execute(cls, folder, resolution, buckets, skip_bad_files, caption_extension) -> io.NodeOutput:
        root = dataset_folder(folder)
        scan = scan_folder(root, caption_extension)
        skipped = check_scan(scan, caption_extension, skip_bad_files)
        data = Dataset(root, scan.items, skipped, resolution, buckets, caption_extension,
                       bucket_counts(scan.items, resolution, buckets))
        summary = data.summary()
        show_text(summary, cls.hidden)
        return io.NodeOutput(data, summary)


def show_text(text: str, hidden) -> None:
    """The text on the node (ComfyUI's progress text), when running inside a server prompt."""
    node_id = getattr(hidden, "unique_id", None) if hidden is not None else None
    if node_id is not None:
        from server import PromptServer

        PromptServer.instance.send_progress_text(text, node_id)


class SanaSprintPrecompute(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaSprintPrecompute",
            display_name="SANA-Sprint Precompute Training Cache",
            category=CATEGORY,
            description="Encodes every training image (DC-AE) and caption (Gemma-2) once into a cache, then "
                        "unloads the text encoder and the DC-AE, so the GPU holds only the transformer while "
                        "SanaSprintDistill trains. With control_maps 'hed' it also caches each image's HED "
                        "scribble, the control map SanaSprintDistillControlNet trains a ControlNet on.",
            inputs=[
                DatasetType.Input("dataset", tooltip="Images from SanaSprintDataset."),
                TextEncoderType.Input("text_encoder", tooltip="Gemma-2 from SanaSprintTextEncoderLoader."),
                VaeType.Input("vae", tooltip="DC-AE from SanaSprintVAELoader."),
                io.String.Input("preview_prompt", multiline=True, default="",
                                tooltip="Prompt of the validation preview shown while training (encoded now, because "
                                        "the text encoder is unloaded during training). Empty: the first caption."),
                io.Boolean.Input("complex_human_instruction", default=True,
                                 tooltip="Prepend SANA's complex human instruction to every caption, as SANA-Sprint "
                                         "was trained and as SanaSprintTextEncode does by default."),
                *_control_inputs(),
            ],
            outputs=[CacheType.Output(tooltip="Cached latents and text embeddings (and control maps), for "
                                              "SanaSprintDistill or SanaSprintDistillControlNet.")],
        )

    @classmethod
    def validate_inputs(cls, control_maps=None, hed_model=None):
        if control_maps is not None and control_maps not in CONTROL_MAPS:
            return f"control_maps must be one of {CONTROL_MAPS}, got {control_maps!r}"
        if control_maps != "hed":
            return True
        return model_files.check_available(model_files.HED, hed_model or HED_FILE_NAME)

    @classmethod
    def execute(cls, dataset, text_encoder, vae, preview_prompt, complex_human_instruction, control_maps="none",
                hed_model=HED_FILE_NAME, thickness_min=0, thickness_max=SCRIBBLE_TRAIN_THICKNESS_MAX) -> io.NodeOutput:
        if thickness_min > thickness_max:
            raise ValueError(f"SanaSprintPrecompute: thickness_min {thickness_min} is larger than thickness_max "
                             f"{thickness_max}")
        items = dataset.items
        prompt = preview_prompt.strip() or items[0].caption
        bar = comfy.utils.ProgressBar(2 * len(items))
        encoder = text_encoder.load()
        captions = encode_captions(items, lambda t: encode_prompt(encoder, t, chi=complex_human_instruction),
                                   [prompt], _progress(bar, 0))
        release(text_encoder.patcher)
        hed = hed_module(hed_model or HED_FILE_NAME) if control_maps == "hed" else None
        hed_net = hed.load() if hed is not None else None  # before the DC-AE, which may move it off the GPU
        area = max(h * w for h, w in dataset.bucket_counts)
        model = vae.load(memory_required=area * next(vae.payload.parameters()).element_size()
                         * DCAE_BYTES_PER_PIXEL_PER_DTYPE_BYTE)

        def encode_image(image):
            return encode(model, image.to(vae.patcher.load_device), tiled="auto")

        encode_control, fingerprint = None, {"dataset": str(dataset.root), "resolution": dataset.resolution}
        if hed_net is not None:  # thickness drawn per image in item order, reproducibly
            thickness = (thickness_min, thickness_max)
            encode_control = scribble_encoder(hed_net, encode_image, dataset.resolution, thickness,
                                              torch.Generator().manual_seed(0))
            fingerprint["control"] = {"hed_model": hed_model, "thickness": list(thickness)}
        folder = Path(tempfile.mkdtemp(prefix="cache_", dir=_cache_root()))
        write_cache(folder, fingerprint, items, captions, encode_image, dataset.resolution, dataset.buckets,
                    _progress(bar, len(items)), encode_control)
        release(vae.patcher, *([hed.patcher] if hed is not None else []))
        cached = CachedDataset(folder)
        latent, text, _ = cached.get(0)
        return io.NodeOutput(TrainCache(folder, dataset.summary(), latent.shape[0], text.shape[-1],
                                        cached.has_control))


def _control_inputs() -> list:
    """Precompute's optional control-map inputs (the ControlNet modes of training)."""
    thickness = dict(min=0, max=SCRIBBLE_TRAIN_THICKNESS_MAX, optional=True)
    return [
        io.Combo.Input("control_maps", options=list(CONTROL_MAPS), default="none", optional=True,
                       tooltip="none: images and captions only (SanaSprintDistill). hed: also the HED scribble of "
                               "every image as its control map, for SanaSprintDistillControlNet (needs "
                               f"{HED_FILE_NAME})."),
        io.Combo.Input("hed_model", options=hed_options(), default=HED_FILE_NAME, optional=True,
                       tooltip=f"HED weights in models/annotators: {HED_FILE_NAME} of lllyasviel/Annotators "
                               "(control_maps hed only)."),
        io.Int.Input("thickness_min", default=0, tooltip="Thinnest scribble line drawn for an image (control_maps "
                     "hed): each image gets one thickness from [min, max]; NVlabs trains on 0..24.", **thickness),
        io.Int.Input("thickness_max", default=SCRIBBLE_TRAIN_THICKNESS_MAX,
                     tooltip="Thickest scribble line drawn for an image (control_maps hed).", **thickness),
    ]


def _cache_root() -> Path:
    root = Path(folder_paths.get_temp_directory()) / CACHE_ROOT
    root.mkdir(parents=True, exist_ok=True)
    return root


def _progress(bar, offset: int):
    """Per encoded item: an interruption point, then the progress bar."""
    def update(done: int) -> None:
        mm.throw_exception_if_processing_interrupted()
        bar.update_absolute(offset + done)
    return update
