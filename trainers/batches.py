"""Batches from the cache: per-epoch shuffles, one aspect bucket per batch, one share per process.

The order of epoch e is a function of (seed, e) alone, and the position is two integers, so a
resumed run continues with exactly the batches an uninterrupted run would have drawn.
"""

from __future__ import annotations

import torch

from .precompute import CachedDataset
from .steps import Batch


class BatchStream:
    """Endless stream of index lists; `state()` / `load_state()` for checkpoints."""

    def __init__(self, dataset: CachedDataset, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 control_strength: float | None = None):
        """control_strength: ControlNet modes, the batches carry the cached control latents at this strength."""
        if control_strength is not None and not dataset.has_control:
            raise ValueError(f"data.cache_dir {dataset.folder} holds no control latents; a ControlNet run needs a "
                             "cache built with the controlnet section (precompute makes HED scribbles of data.image_dir)")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.control_strength = control_strength
        self.rank, self.world = rank, world
        self.epoch, self.pos = 0, 0
        self._batches: list[list[int]] | None = None

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This process's batches of `epoch`: shuffled, grouped by bucket, then dealt out by rank."""
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        order = torch.randperm(len(self.dataset), generator=g).tolist()
        groups: dict[tuple, list[int]] = {}
        for i in order:
            groups.setdefault(self.dataset.entries[i].size, []).append(i)
        batches = [ids[j:j + self.batch_size] for ids in groups.values() for j in range(0, len(ids), self.batch_size)]
        batches = [batches[k] for k in torch.randperm(len(batches), generator=g).tolist()]
        mine = batches[self.rank::self.world]
        return mine or [batches[self.rank % len(batches)]]

    def next_ids(self) -> list[int]:
        """The next batch of dataset indices."""
        if self._batches is None:
            self._batches = self.epoch_batches(self.epoch)
        if self.pos >= len(self._batches):
            self.epoch, self.pos = self.epoch + 1, 0
            self._batches = self.epoch_batches(self.epoch)
        ids = self._batches[self.pos]
        self.pos += 1
        return ids

    def next(self, device: torch.device | str = "cpu") -> Batch:
        """The next Batch, on `device`."""
        ids = self.next_ids()
        latents, texts, masks = zip(*(self.dataset.get(i) for i in ids))
        b = len(latents)
        null_text = self.dataset.null_text[None].expand(b, -1, -1)
        null_mask = self.dataset.null_mask[None].expand(b, -1)
        parts = (torch.stack(latents), torch.stack(texts), torch.stack(masks), null_text, null_mask)
        if self.control_strength is None:
            return Batch(*(p.to(device) for p in parts))
        control = torch.stack([self.dataset.get_control(i) for i in ids]).to(device)
        return Batch(*(p.to(device) for p in parts), control=control, control_strength=self.control_strength)

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state(self, state: dict) -> None:
        self.epoch, self.pos, self._batches = int(state["epoch"]), int(state["pos"]), None
