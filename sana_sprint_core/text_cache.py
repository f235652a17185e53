"""Bounded least-recently-used store for prompt embeddings, so re-encoding a prompt costs nothing."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any


class PromptCache:
    """LRU map from a hashable key to a cached value, holding at most `max_entries` items.

    `encode_prompt(..., cache=cache)` keys it by (encoder identity, dtype, device, prompt, options) and
    stores one (embeds (L, D), mask (L,)) pair per prompt. `hits` and `misses` count lookups.
    """

    def __init__(self, max_entries: int):
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be an integer >= 1, got {max_entries!r}")
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable) -> Any | None:
        """Return the value for `key` (marking it most recently used), or None when absent."""
        if key not in self._items:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key: Hashable, value: Any) -> None:
        """Store `value` under `key`, evicting the least recently used entries beyond the bound."""
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def clear(self) -> None:
        """Drop every entry (the hit and miss counters are kept)."""
        self._items.clear()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)
