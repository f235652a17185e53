"""Latent and text-embedding cache, so that training holds only the transformer(s) in GPU memory.

Cache folder:
  index.json               fingerprint (encoders, resolution, ...), items [{name, shard, key, size, repeats}]
  shard_<k>.safetensors    latent.<key> (C, h, w) fp32 diffusion latents (DC-AE latent x 0.41407),
                           text.<key> (L, Dc), mask.<key> (L,) int64; in the ControlNet modes also
                           control.<key> (C, h, w), the DC-AE latent of the image's HED scribble
  null.safetensors         text (L, Dc), mask (L,): the empty-prompt embedding (CFG's unconditional)
  validation.safetensors   text.<i>, mask.<i> of the validation prompts (prompts in the metadata)
`precompute` rebuilds the cache when the fingerprint differs; `CachedDataset` reads it lazily.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor

from sana_sprint_core.checkpoint_io import save_safetensors_atomic

from .config import Config
from .data import Item, bucket_for, folder_digest, load_image, scan_dataset

INDEX = "index.json"
NULL = "null.safetensors"
VALIDATION = "validation.safetensors"
ITEMS_PER_SHARD = 256
CACHE_VERSION = 1


class CacheWriter:
    """Writes items into shards, then the index (atomically, last)."""

    def __init__(self, folder: str | Path, fingerprint: dict):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fingerprint = fingerprint
        self.items: list[dict] = []
        self._pending: dict[str, Tensor] = {}

    def add(self, name: str, latent: Tensor, text: Tensor, mask: Tensor, repeats: int = 1,
            control: Tensor | None = None) -> None:
        """latent (C, h, w), text (L, Dc), mask (L,); control (C, h, w) the control image's latent, if any."""
        key = f"{len(self.items):06d}"
        shard = f"shard_{len(self.items) // ITEMS_PER_SHARD:05d}.safetensors"
        self._pending.update({f"latent.{key}": latent.float().cpu().contiguous(),
                              f"text.{key}": text.cpu().contiguous(), f"mask.{key}": mask.to(torch.int64).cpu()})
        item = {"name": name, "shard": shard, "key": key, "size": list(latent.shape[1:]), "repeats": int(repeats)}
        if control is not None:
            if tuple(control.shape) != tuple(latent.shape):
                raise ValueError(f"{name}: control latent {tuple(control.shape)} differs from the image latent "
                                 f"{tuple(latent.shape)}")
            self._pending[f"control.{key}"] = control.float().cpu().contiguous()
            item["control"] = True
        self.items.append(item)
        if len(self.items) % ITEMS_PER_SHARD == 0:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            save_safetensors_atomic(self._pending, self.folder / self.items[-1]["shard"])
            self._pending = {}

    def finish(self, null_text: Tensor, null_mask: Tensor, prompts: list[str] | None = None,
               prompt_embeds: tuple[Tensor, Tensor] | None = None) -> None:
        """Write the last shard, the null prompt, the validation prompts and the index."""
        self._flush()
        save_safetensors_atomic({"text": null_text.cpu().contiguous(), "mask": null_mask.to(torch.int64).cpu()},
                                self.folder / NULL)
        if prompts:
            text, mask = prompt_embeds
            tensors = {f"text.{i}": text[i].cpu().contiguous() for i in range(len(prompts))}
            tensors.update({f"mask.{i}": mask[i].to(torch.int64).cpu() for i in range(len(prompts))})
            save_safetensors_atomic(tensors, self.folder / VALIDATION, metadata={"prompts": json.dumps(prompts)})
        index = {"version": CACHE_VERSION, "fingerprint": self.fingerprint, "items": self.items}
        tmp = self.folder / (INDEX + ".tmp")
        tmp.write_text(json.dumps(index))
        os.replace(tmp, self.folder / INDEX)


def fingerprint(cfg: Config) -> dict:
    """What the cache depends on; a change means the cache is rebuilt."""
    d = cfg.data
    out = {"image_dir": str(Path(d.image_dir).resolve()), "files": folder_digest(d.image_dir) if d.image_dir else "",
           "caption_ext": d.caption_ext, "resolution": d.resolution,
           "buckets": d.buckets, "text_encoder": d.text_encoder, "vae": d.vae, "max_tokens": d.max_tokens,
           "chi": d.chi, "validation_prompts": list(cfg.train.validation_prompts)}
    c = cfg.controlnet
    if c.mode != "off":  # the control maps (the seed draws the thicknesses)
        out["controlnet"] = {"hed_model": c.hed_model, "detect_resolution": c.detect_resolution,
                             "thickness": [c.thickness_min, c.thickness_max], "seed": cfg.train.seed}
    return out


def cache_is_current(cfg: Config) -> bool:
    """True when the cache folder has an index with the config's fingerprint."""
    index = Path(cfg.data.cache_dir) / INDEX
    if not index.is_file():
        return False
    data = json.loads(index.read_text())
    return data.get("version") == CACHE_VERSION and data.get("fingerprint") == fingerprint(cfg)


# encode_text(prompt or prompts) -> (text (B, L, Dc), mask (B, L)); encode_image(image (1, 3, H, W) in
# [0, 1]) -> diffusion latent (1, C, h, w); progress(done) after each item of a phase.
TextFn = Callable[[str | list[str]], tuple[Tensor, Tensor]]
ImageFn = Callable[[Tensor], Tensor]
Progress = Callable[[int], None]


@dataclass
class Captions:
    """Text embeddings of every item's caption, the empty prompt and the validation prompts."""

    texts: list[tuple[Tensor, Tensor]]  # per item: (text (1, L, Dc), mask (1, L))
    null: tuple[Tensor, Tensor]  # (1, L, Dc), (1, L)
    prompts: list[str]
    prompt_embeds: tuple[Tensor, Tensor] | None  # (P, L, Dc), (P, L)


def encode_captions(items: list[Item], encode_text: TextFn, prompts=(), progress: Progress | None = None) -> Captions:
    """Phase 1 of the cache: every caption, the empty prompt (CFG's unconditional) and the prompts."""
    null = encode_text("")
    prompts = list(prompts)
    embeds = encode_text(prompts) if prompts else None
    texts = []
    for i, item in enumerate(items):
        texts.append(encode_text(item.caption))
        if progress is not None:
            progress(i + 1)
    return Captions(texts, null, prompts, embeds)


def write_cache(folder: str | Path, fingerprint: dict, items: list[Item], captions: Captions, encode_image: ImageFn,
                resolution: int, buckets: bool, progress: Progress | None = None,
                encode_control: ImageFn | None = None) -> Path:
    """Phase 2: encode every image at its bucket size and write the cache folder (index last).

    encode_control (ControlNet modes): image -> the latent of its control image, stored beside it.
    """
    writer = CacheWriter(folder, fingerprint)
    with torch.no_grad():
        for i, (item, (text, mask)) in enumerate(zip(items, captions.texts)):
            size = bucket_for(item.image, resolution, buckets)
            image = load_image(item.image, size)[None]
            control = None if encode_control is None else encode_control(image)[0]
            writer.add(item.name, encode_image(image)[0], text[0], mask[0], item.repeats, control)
            if progress is not None:
                progress(i + 1)
    writer.finish(captions.null[0][0], captions.null[1][0], captions.prompts, captions.prompt_embeds)
    return Path(folder)


def precompute(cfg: Config, device: torch.device | str = "cpu") -> Path:
    """Encode every image (DC-AE) and caption (Gemma-2) of data.image_dir into data.cache_dir."""
    from sana_sprint_core.dcae import encode, load_vae
    from sana_sprint_core.text_encoder import encode_prompt, load_text_encoder

    d = cfg.data
    for key, value in (("data.cache_dir", d.cache_dir), ("data.text_encoder", d.text_encoder), ("data.vae", d.vae)):
        if not value:
            raise ValueError(f"config key {key} is empty; the precompute stage needs it")
    items = scan_dataset(d.image_dir, d.caption_ext)
    encoder = load_text_encoder(d.text_encoder, device=device)
    captions = encode_captions(items, lambda text: encode_prompt(encoder, text, chi=d.chi, max_tokens=d.max_tokens),
                               cfg.train.validation_prompts)
    del encoder  # free Gemma before the DC-AE is loaded
    vae = load_vae(d.vae, device=device)
    encode_control = None
    if cfg.controlnet.mode != "off":
        from .controlnet import control_encoder

        encode_control = control_encoder(cfg, vae, device)
    return write_cache(d.cache_dir, fingerprint(cfg), items, captions,
                       lambda image: encode(vae, image.to(device), tiled=d.vae_tiled), d.resolution, d.buckets,
                       encode_control=encode_control)


@dataclass(frozen=True)
class CacheEntry:
    shard: Path
    key: str
    size: tuple[int, int]


class CachedDataset:
    """Read access to a cache folder; entries are expanded by their repeats."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = self.folder / INDEX
        if not index.is_file():
            raise FileNotFoundError(f"data.cache_dir {self.folder} has no {INDEX}; run the precompute stage first")
        data = json.loads(index.read_text())
        self.entries = [CacheEntry(self.folder / it["shard"], it["key"], tuple(it["size"]))
                        for it in data["items"] for _ in range(it["repeats"])]
        if not self.entries:
            raise ValueError(f"data.cache_dir {self.folder} holds no items")
        self.has_control = all(it.get("control", False) for it in data["items"])
        null = self._read(self.folder / NULL, ["text", "mask"])
        self.null_text, self.null_mask = null["text"], null["mask"]

    @staticmethod
    def _read(path: Path, keys: list[str]) -> dict[str, Tensor]:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in keys}

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        """(latent (C, h, w), text (L, Dc), mask (L,)) of entry i."""
        e = self.entries[i]
        t = self._read(e.shard, [f"latent.{e.key}", f"text.{e.key}", f"mask.{e.key}"])
        return t[f"latent.{e.key}"], t[f"text.{e.key}"], t[f"mask.{e.key}"]

    def get_control(self, i: int) -> Tensor:
        """The control latent (C, h, w) of entry i (ControlNet caches)."""
        if not self.has_control:
            raise ValueError(f"data.cache_dir {self.folder} holds no control latents; rebuild it with the controlnet "
                             "section set (precompute makes HED scribbles of the images)")
        e = self.entries[i]
        return self._read(e.shard, [f"control.{e.key}"])[f"control.{e.key}"]

    def validation_prompts(self) -> tuple[list[str], Tensor | None, Tensor | None]:
        """Validation prompts with their embeddings (B, L, Dc) and masks (B, L), if cached."""
        path = self.folder / VALIDATION
        if not path.is_file():
            return [], None, None
        with safe_open(str(path), framework="pt") as f:
            prompts = json.loads(f.metadata()["prompts"])
            text = torch.stack([f.get_tensor(f"text.{i}") for i in range(len(prompts))])
            mask = torch.stack([f.get_tensor(f"mask.{i}") for i in range(len(prompts))])
        return prompts, text, mask
