"""A byte-bounded LRU of processed items, keyed by content hash (fetched bytes + options).

Media workers keep one: a repeat of the same media with the same options is
fetched (its hash needs the bytes) but not decoded or processed again.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Hashable

from .types import ProcessedItem


def _nbytes(items: list[ProcessedItem]) -> int:
    return sum(int(a.nbytes) for item in items for a in item.features.values())


def _copy(items: list[ProcessedItem]) -> list[ProcessedItem]:
    # Metadata is renumbered downstream; hand out copies so the cached entry never changes.
    return [dataclasses.replace(it, meta=dataclasses.replace(it.meta, timings=dict(it.meta.timings))) for it in items]


class FeatureCache:
    """LRU bounded by the bytes of the cached feature arrays; ``max_bytes=0`` disables it."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.entries: OrderedDict[Hashable, tuple[list[ProcessedItem], int]] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> list[ProcessedItem] | None:
        entry = self.entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.entries.move_to_end(key)
        self.hits += 1
        return _copy(entry[0])

    def put(self, key: Hashable, items: list[ProcessedItem]) -> None:
        size = _nbytes(items)
        if size > self.max_bytes or key in self.entries:
            return
        self.entries[key] = (_copy(items), size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, evicted) = self.entries.popitem(last=False)
            self.bytes -= evicted

    def __len__(self) -> int:
        return len(self.entries)
