"""A request's state inside a coordinator, with no Ray in it: in flight, ready, and the step from
answered media to a ready request (features located, record built).

Feature lists appear here only as opaque holders (``Any``): media workers hold them, GPU
workers take them, the coordinator only passes the holder along.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the pipeline imports the model adapters (transformers): not at import time
    from ..pipeline import Prepared

# Per answered spec: (its metadata, where its call's feature list is held, where its items start in it).
Answer = tuple[dict[str, Any], Any, int]


@dataclass
class ReadyRequest:
    """An aligned request waiting for (or leased to) a GPU worker."""

    request_id: str
    record: dict[str, Any]
    # Per item in prompt order: ((media worker name, key), position): the worker holds a media call's
    # feature list under the key; the item is at that position in it.
    feature_refs: list[tuple[Any, int]]
    placeholder_tokens: int
    pulls: int = 0
    lease: int = 0  # token of the current lease; set on each pull, named in ack / nack


@dataclass
class InflightRequest:
    """An admitted request, from admission to its one record."""

    request_id: str
    submitted: float
    deadline: float
    prepared: Prepared | None = None
    task: Any = None  # the asyncio task that dispatches, collects and aligns it
    refs: list[Any] = field(default_factory=list)  # (worker, key) of the held feature lists it uses
    stage: str = "dispatch"
    has_slot: bool = False  # holds one of the max_feature_requests slots
    dispatches: int = 0


@dataclass
class ReadyOutcome:
    """What aligning a request's answered media gives: the ready request, and what it tells the stats."""

    ready: ReadyRequest
    cache_hits: int
    cache_misses: int
    items_per_node: dict[str, int]


def holders_by_worker(feature_refs: Iterable[tuple[Any, int]]) -> dict[str, list[Any]]:
    """The keys to ``take`` from each media worker (by name) for these ``((worker, key), position)`` items,
    each key once, in first-seen order."""
    out: dict[str, list[Any]] = {}
    for (name, key), _ in feature_refs:
        keys = out.setdefault(name, [])
        if key not in keys:
            keys.append(key)
    return out


def first_error(metas: Iterable[dict[str, Any]]) -> Exception | None:
    """The first spec's error (bad media, a worker fault), in prompt order, or None."""
    return next((m["error"] for m in metas if "error" in m), None)


def build_ready(pre: Any, request_id: str, prepared: Prepared, answers: list[Answer],
                media_tokens: frozenset[int]) -> ReadyOutcome:
    """Align ``answers`` (per spec, in spec order) and build the ready request.

    ``pre`` is the ``Preprocessor``; the record's ``align_s`` is the alignment alone. Stage timings are summed over items; the
    placeholder count comes from the ids, not the items, so the GPU-side check is independent of
    alignment.
    """
    from ..pipeline import success_record

    per_spec = [meta["items"] for meta, _, _ in answers]
    location: dict[int, tuple[Any, int]] = {}
    for meta, feat_ref, start in answers:
        for k, item in enumerate(meta["items"]):
            location[id(item)] = (feat_ref, start + k)
    t0 = time.perf_counter()
    alignment = pre.align_request(prepared, per_spec)
    align_s = time.perf_counter() - t0
    timings = dict(prepared.timings, align_s=align_s)
    items = [m for ms in per_spec for m in ms]
    for stage in ("fetch_s", "decode_s", "process_s"):
        timings[stage] = sum(m.timings.get(stage, 0.0) for m in items)
    hits = sum(1 for m in items if m.timings.get("cache_hit"))
    per_node: dict[str, int] = {}
    for m in items:
        per_node[m.node_id or "?"] = per_node.get(m.node_id or "?", 0) + 1
    record = success_record(request_id, alignment, timings)
    placeholders = sum(1 for tok in alignment.input_ids if tok in media_tokens)
    refs = [location[id(item.meta)] for item in alignment.items]
    return ReadyOutcome(ReadyRequest(request_id, record, refs, placeholders), hits, len(items) - hits, per_node)
