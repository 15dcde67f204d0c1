"""Media worker actor: fetch, decode and process the media entries of one request sent to it.

Thin: all work is ``Preprocessor.process_item``. One call takes every entry of a
request that the coordinator placed on this worker and returns two objects,
(metadata, features), both owned by the caller, so the coordinator can await
the small one and pass the large one on without touching it. One call and one
feature object per (request, worker) rather than per item: Ray's per-call and
per-object costs land on the coordinator, which is the part that does not
scale out. Bad media is returned as an error in that entry's metadata, not
raised, so Ray does not retry it and the other entries still count.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from typing import Any

import ray

from ray_mm.buffers import CallArena, output_arena
from ray_mm.config import RayMMConfig
from ray_mm.errors import InternalError, MMError
from ray_mm.types import MediaSpec


@ray.remote(max_restarts=-1, max_task_retries=-1)
class MediaWorker:
    def __init__(self, model_dir: str, core_config: dict[str, Any], adapter: str | None = None,
                 reuse_output_buffers: bool = True, freeze_gc: bool = True) -> None:
        # One decode/processing thread per worker: scale with workers, not threads (DESIGN.md, "Threads").
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)
        from ray_mm.pipeline import Preprocessor

        self.pre = Preprocessor(model_dir, RayMMConfig.model_validate(core_config), adapter)
        self.node_id = ray.get_runtime_context().get_node_id()
        self.processed = 0
        # Outputs of one call live in this arena until Ray has copied the call's return value into
        # the object store, which it does before it runs the next call (ray_mm.buffers).
        self.arena = CallArena() if reuse_output_buffers else None
        if freeze_gc:
            gc.freeze()  # see PoolConfig.freeze_gc_after_start

    def ready(self) -> str:
        return self.node_id

    def process_batch(self, specs: list[MediaSpec]) -> tuple[list[dict[str, Any]], list[Any]]:
        """Per spec ``{"items": [ItemMeta...]}`` or ``{"error": MMError}``; and one flat list with the
        feature dict of every item of the successful specs, in order (an item's place in it is
        its position among the items before it)."""
        metas: list[dict[str, Any]] = []
        features: list[Any] = []
        with contextlib.ExitStack() as stack:
            if self.arena is not None:
                self.arena.reset()  # the previous call's outputs are in the object store by now
                stack.enter_context(output_arena(self.arena))
            for spec in specs:
                meta, feats = self._process_one(spec)
                metas.append(meta)
                features.extend(feats)
        return metas, features

    def _process_one(self, spec: MediaSpec) -> tuple[dict[str, Any], list[Any]]:
        t0 = time.perf_counter()
        try:
            items = self.pre.process_item(spec)
        except MMError as exc:
            return {"error": exc, "node_id": self.node_id}, []
        except Exception as exc:  # never let one item kill the worker
            return {"error": InternalError(f"{spec.label}: worker fault ({type(exc).__name__})"), "node_id": self.node_id}, []
        self.processed += 1
        for item in items:
            item.meta.node_id = self.node_id
            item.meta.timings["worker_s"] = time.perf_counter() - t0
        return {"items": [item.meta for item in items]}, [item.features for item in items]

    def stats(self) -> dict[str, Any]:
        import resource

        return {
            "node_id": self.node_id,
            "processed": self.processed,
            "output_arena_allocations": None if self.arena is None else self.arena.allocations,
            "output_arena_bytes": None if self.arena is None else self.arena.capacity,
            "pid": os.getpid(),
            "gc_frozen_objects": gc.get_freeze_count(),
            "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "rss_kb": _rss_kb(),
        }


def _rss_kb() -> int | None:
    """Resident set size now (VmRSS), Linux only."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None
