"""Media worker actor: fetch, decode and process the media entries of one request sent to it.

Thin: the work is ``Preprocessor.fetch_item_async`` and ``Preprocessor.process_fetched``.
An async actor: fetches run concurrently on its event loop (at most
``max_fetches_per_worker`` at once), and decoding runs on its one decode thread as
soon as an item's bytes are in, so a slow server delays only its own request. A
fetch still running after ``slow_fetch_s`` is reported to the coordinator that sent the
call (with coordinator shards, the call names its sender), which then stops counting that
item against the worker's decode slots.

One call takes every entry of a request that the coordinator placed on this worker
and returns two objects, (metadata, features), both owned by the caller, so the
coordinator can await the small one and pass the large one on without touching it.
One call and one feature object per (request, worker) rather than per item: Ray's
per-call and per-object costs land on the coordinator, which is the part that does
not scale out. Bad media is returned as an error in that entry's metadata, not
raised, so the other entries still count. A call is never retried by Ray
(``max_task_retries=0``): if the worker dies, the coordinator counts the death
against the call's items and dispatches them again itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import os
import time
from typing import Any

import ray

from ray_mm.buffers import ArenaPool, CallArena, output_arena
from ray_mm.config import RayMMConfig
from ray_mm.errors import InternalError, MMError
from ray_mm.pool.config import PoolConfig
from ray_mm.types import MediaSpec

logger = logging.getLogger("ray_mm.actors.media_worker")


@ray.remote(max_restarts=-1, max_task_retries=-1)
class MediaWorker:
    def __init__(self, model_dir: str, core_config: dict[str, Any], adapter: str | None = None,
                 pool_config: dict[str, Any] | None = None, coordinator_name: str | None = None,
                 index: int = 0) -> None:
        # One decode/processing thread per worker: scale with workers, not threads (DESIGN.md, "Threads").
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)
        from ray_mm.pipeline import Preprocessor

        self.cfg = PoolConfig.model_validate(pool_config or {})
        self.pre = Preprocessor(model_dir, RayMMConfig.model_validate(core_config), adapter)
        self.node_id = ray.get_runtime_context().get_node_id()
        self.index = index
        self.coordinator_name = coordinator_name  # where reports go when a call names no sender
        self._coordinators: dict[str, Any] = {}  # name -> handle, looked up on first report
        self.processed = 0
        self.slow_fetches = 0
        self.decoder = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ray-mm-decode")
        self._fetch_slots: asyncio.Semaphore | None = None  # made on the actor's event loop, at first use
        # Outputs of one call live in an arena until Ray has copied the call's return value into
        # the object store; overlapping calls each take their own (ray_mm.buffers.ArenaPool).
        self.arenas = ArenaPool() if self.cfg.reuse_output_buffers else None
        if ray.get_runtime_context().was_current_actor_reconstructed:
            logger.warning("media worker %d restarted on node %s (pid %d)", index, self.node_id[:12], os.getpid())
        if self.cfg.freeze_gc_after_start:
            gc.freeze()  # see PoolConfig.freeze_gc_after_start

    def ready(self) -> str:
        return self.node_id

    @ray.method(max_task_retries=0)
    async def process_batch(self, specs: list[MediaSpec], call_id: int | None = None,
                            reply_to: str | None = None) -> tuple[list[dict[str, Any]], list[Any]]:
        """Per spec ``{"items": [ItemMeta...]}`` or ``{"error": MMError}``; and one flat list with the
        feature dict of every item of the successful specs, in order (an item's place in it is
        its position among the items before it). ``call_id`` names the call in slow-fetch reports,
        which go to the coordinator named ``reply_to`` (the shard that sent the call)."""
        reply_to = reply_to or self.coordinator_name
        arena = self.arenas.acquire() if self.arenas is not None else None
        features: list[Any] = self.arenas.outputs(arena) if self.arenas is not None and arena is not None else []
        answers = await asyncio.gather(*(self._process_one(spec, arena, call_id, reply_to) for spec in specs))
        metas = []
        for meta, feats in answers:
            metas.append(meta)
            features.extend(feats)
        return metas, features

    async def _process_one(self, spec: MediaSpec, arena: CallArena | None, call_id: int | None,
                           reply_to: str | None) -> tuple[dict[str, Any], list[Any]]:
        t0 = time.perf_counter()
        try:
            fetched = await self._fetch(spec, call_id, reply_to)
            loop = asyncio.get_running_loop()
            items = await loop.run_in_executor(self.decoder, self._decode, spec, fetched, arena)
        except MMError as exc:
            return {"error": exc, "node_id": self.node_id}, []
        except Exception as exc:  # never let one item kill the worker
            logger.exception("%s: media worker fault", spec.label)
            return {"error": InternalError(f"{spec.label}: worker fault ({type(exc).__name__})"), "node_id": self.node_id}, []
        self.processed += 1
        for item in items:
            item.meta.node_id = self.node_id
            item.meta.timings["worker_s"] = time.perf_counter() - t0
        return {"items": [item.meta for item in items]}, [item.features for item in items]

    async def _fetch(self, spec: MediaSpec, call_id: int | None, reply_to: str | None) -> Any:
        if self._fetch_slots is None:
            self._fetch_slots = asyncio.Semaphore(self.cfg.max_fetches_per_worker)
        async with self._fetch_slots:
            task = asyncio.ensure_future(self.pre.fetch_item_async(spec))
            done, _ = await asyncio.wait({task}, timeout=self.cfg.slow_fetch_s)
            if not done:
                self._report_slow(call_id, reply_to)
            return await task

    def _report_slow(self, call_id: int | None, reply_to: str | None) -> None:
        """Tell the coordinator ``reply_to`` an item of its call ``call_id`` waits on a slow fetch
        (fire and forget; call ids are per coordinator)."""
        self.slow_fetches += 1
        if call_id is None or reply_to is None:
            return
        try:
            if reply_to not in self._coordinators:
                self._coordinators[reply_to] = ray.get_actor(reply_to)
            self._coordinators[reply_to].fetch_parked.remote(self.index, call_id)
        except Exception:  # only bookkeeping is lost: the item still counts as decode work
            logger.warning("could not report a slow fetch to the coordinator", exc_info=True)

    def _decode(self, spec: MediaSpec, fetched: Any, arena: CallArena | None) -> Any:
        """On the decode thread: decode and process one entry, outputs in the call's arena."""
        with output_arena(arena) if arena is not None else contextlib.nullcontext():
            return self.pre.process_fetched(spec, fetched)

    def stats(self) -> dict[str, Any]:
        import resource

        return {
            "node_id": self.node_id,
            "processed": self.processed,
            "slow_fetches": self.slow_fetches,
            "output_arena_allocations": None if self.arenas is None else self.arenas.allocations,
            "output_arena_bytes": None if self.arenas is None else self.arenas.capacity,
            "output_arenas": None if self.arenas is None else self.arenas.created,
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
