"""Coordinator shards: which shard owns a request, what each shard may hold, and the pool's
stats as the sum of its shards'.

A request belongs to one shard for its whole life, chosen by a stable hash of its
``request_id`` (not Python's per-process ``hash``): the driver, the Serve front end and a
restarted driver all agree, so resubmission, ``cancel`` and the duplicate-id check (409) reach
the shard that holds the id. The pool's limits are totals: each shard gets its share
(rounded up), so K shards hold about what one coordinator held.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from ray_mm.pool.config import PoolConfig

T = TypeVar("T")


def shard_of(request_id: str, shards: int) -> int:
    """The shard that owns ``request_id`` among ``shards`` (stable across processes and runs)."""
    if shards <= 1:
        return 0
    digest = hashlib.blake2b(str(request_id).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def shard_names(base: str, shards: int) -> list[str]:
    """Actor names of the shards: shard 0 keeps ``base`` (one coordinator is named as before)."""
    return [base if k == 0 else f"{base}_{k}" for k in range(max(1, shards))]


def split_by_shard(items: Iterable[T], key: Callable[[T], str], shards: int) -> dict[int, list[tuple[int, T]]]:
    """``(position, item)`` per shard, in input order, for the shards that get any item."""
    out: dict[int, list[tuple[int, T]]] = {}
    for pos, item in enumerate(items):
        out.setdefault(shard_of(key(item), shards), []).append((pos, item))
    return out


def _share(total: int, shards: int) -> int:
    return max(1, math.ceil(total / shards))


def shard_config(cfg: PoolConfig) -> PoolConfig:
    """One shard's configuration: the pool's totals divided among ``cfg.coordinators`` shards.

    Divided (rounded up, at least 1): the admission limit, the ready queue, the feature slots
    (the object-store bound) and each media worker's parked-fetch slots. Not divided: the items
    and calls a shard may have in flight on one worker (``max_inflight_per_worker``,
    ``max_calls_per_worker``). Divided, they halved the items each media call carries at K=2
    (2 against 4) and with them each shard's capacity: K=2 gave 0.66x the requests/s of K=1 and
    1.09x its coordinator capacity; kept whole, 0.92x and 1.52x (BENCHMARKS.md, "Session 7").
    A worker may then hold up to K x ``max_inflight_per_worker`` items of the shards together.
    The same config for K=1.
    """
    k = cfg.coordinators
    if k <= 1:
        return cfg
    return cfg.model_copy(update={
        "max_inflight_requests": _share(cfg.max_inflight_requests, k),
        "ready_queue_size": _share(cfg.ready_queue_size, k),
        "max_feature_requests": _share(cfg.feature_request_limit(), k),
        "max_fetches_per_worker": _share(cfg.max_fetches_per_worker, k),
    })


# Identity of one shard's process: meaningless summed, kept under "shards".
_PER_SHARD = frozenset({"pid", "shard", "incarnation"})


def merge_stats(shards: list[dict[str, Any]]) -> dict[str, Any]:
    """The pool's coordinator stats from its shards': numbers and counters summed, per-worker lists
    summed element-wise, mappings merged; ``incarnation`` is shard 0's, and ``shards`` keeps each
    shard's own stats (a shard that did not answer is ``{"error": ...}`` there and adds nothing)."""
    if len(shards) == 1:
        return {**shards[0], "coordinators": 1, "shards": list(shards)}
    live = [s for s in shards if "error" not in s]
    out: dict[str, Any] = {}
    for s in live:
        for key, value in s.items():
            if key in _PER_SHARD:
                continue
            if key not in out:
                out[key] = dict(value) if isinstance(value, dict) else list(value) if isinstance(value, list) else value
            elif isinstance(value, bool) or value is None:
                continue
            elif isinstance(value, (int, float)):
                out[key] += value
            elif isinstance(value, list):
                out[key] = [a + b for a, b in zip(out[key], value)]
            elif isinstance(value, dict):
                for k2, v2 in value.items():
                    out[key][k2] = out[key].get(k2, 0) + v2 if isinstance(v2, (int, float)) else v2
    if out.get("media_calls"):  # a ratio: from the summed counts, not summed
        out["items_per_call"] = round(out.get("media_call_items", 0) / out["media_calls"], 3)
    out["incarnation"] = shards[0].get("incarnation")
    out["coordinators"] = len(shards)
    out["shards"] = list(shards)
    return out
