"""Media worker actor: fetch, decode and process the media entries the coordinator sends it.

Thin: the work is ``Preprocessor.fetch_item_async`` and ``Preprocessor.process_fetched``.
An async actor: fetches run concurrently on its event loop (at most
``max_fetches_per_worker`` at once), and decoding runs on its one decode thread as
soon as an item's bytes are in.

One call carries entries of one or several requests (``ray_mm.pool.calls``), so Ray's per-call
cost on the coordinator (the part that does not scale out) is paid per call, not per item or
request. It answers only metadata. The worker puts the call's features in the object store
itself and *holds* them under the coordinator's key: GPU workers ``take`` the refs (borrowing
them) and the coordinator drops the key once the requests are finished, so the coordinator never
owns or lends a feature object. If this worker dies, the features it held are gone: a GPU
worker then nacks the request and the coordinator dispatches its media again.
A fetch still running after ``slow_fetch_s`` is *parked*: the call answers
without it (a slow server delays only its own request) and ``collect_parked`` answers it later.
Bad media is returned as an error in that entry's metadata, not raised, so the other entries
still count. A call is never retried by Ray (``max_task_retries=0``): if the worker dies, the
coordinator counts the death against the call's items and dispatches them again itself.
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

# Parked work not collected within this long (its coordinator died between the two calls) is dropped.
PARKED_TTL_S = 300.0


@ray.remote(max_restarts=-1, max_task_retries=-1)
class MediaWorker:
    def __init__(self, model_dir: str, core_config: dict[str, Any], adapter: str | None = None,
                 pool_config: dict[str, Any] | None = None, index: int = 0) -> None:
        # One decode/processing thread per worker: scale with workers, not threads (DESIGN.md, "Threads").
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)
        from ray_mm.pipeline import Preprocessor

        self.cfg = PoolConfig.model_validate(pool_config or {})
        self.pre = Preprocessor(model_dir, RayMMConfig.model_validate(core_config), adapter)
        self.node_id = ray.get_runtime_context().get_node_id()
        self.index = index
        # key -> (when, ref of a call's feature list, owned here), until the coordinator drops it
        self.held: dict[Any, tuple[float, Any]] = {}
        self.held_ttl_s = self.cfg.request_timeout_s + self.cfg.lease_s + 60.0
        self.held_expired = 0
        # call id -> (when, spec position -> its work) of specs parked in a call, until collected
        self.parked: dict[int, tuple[float, dict[int, asyncio.Future[Any]]]] = {}
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
    async def process_batch(self, specs: list[MediaSpec], call_id: int = 0, key: Any = None,
                            drops: list[Any] | None = None) -> list[dict[str, Any]]:
        """Per spec ``{"items": [ItemMeta...]}``, ``{"error": MMError}`` or ``{"parked": True}``.

        The features stay here: one flat list with the feature dict of every item of the answered
        specs, in order (an item's place in it is its position among the items before it), put in
        the object store by this worker and held under ``key`` until the coordinator drops it
        (``drops``: keys it no longer needs, sent along with its next call) or GPU workers
        ``take`` it. The coordinator never owns or lends feature objects: Ray's per-object work
        stays on the workers, which scale out.

        The specs may belong to several requests. The call answers once every spec is done or
        *parked*: its fetch still runs after ``slow_fetch_s``, so a slow server holds neither the
        call's other specs nor this worker's decode slots. A parked spec goes on in the background;
        ``collect_parked(call_id)`` answers it."""
        self.drop(drops or [])
        self._prune_parked()
        arena = self.arenas.acquire() if self.arenas is not None else None
        features: list[Any] = self.arenas.outputs(arena) if self.arenas is not None and arena is not None else []
        parked_flags = [asyncio.Event() for _ in specs]
        tasks = [asyncio.ensure_future(self._process_one(spec, arena, flag)) for spec, flag in zip(specs, parked_flags)]
        await asyncio.gather(*(self._settled(task, flag) for task, flag in zip(tasks, parked_flags)))
        metas: list[dict[str, Any]] = []
        parked: dict[int, asyncio.Future[Any]] = {}
        for k, task in enumerate(tasks):
            if not task.done():
                parked[k] = task
                metas.append({"parked": True})
                continue
            meta, feats = task.result()
            metas.append(meta)
            features.extend(feats)
        if parked:
            self.slow_fetches += len(parked)
            self.parked[call_id] = (time.monotonic(), parked)
        self._hold(key, features)
        return metas

    @staticmethod
    async def _settled(task: asyncio.Future[Any], parked: asyncio.Event) -> None:
        """Until ``task`` is done or its item parked."""
        if task.done() or parked.is_set():
            return
        waiter = asyncio.ensure_future(parked.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()

    @ray.method(max_task_retries=0)
    async def collect_parked(self, call_id: int, key: Any = None) -> list[dict[str, Any]]:
        """The parked specs of ``call_id``, in their order in that call, once done: as ``process_batch``
        answers, their features held under ``key`` (in fresh arrays: the call's arena was handed
        back long ago). Cancelling this call cancels their work."""
        _, parked = self.parked.pop(call_id, (0.0, {}))
        try:
            answers = [await parked[k] for k in sorted(parked)]
        finally:
            for task in parked.values():
                task.cancel()  # no-op for finished ones
        metas, features = [], []
        for meta, feats in answers:
            metas.append(meta)
            features.extend(feats)
        self._hold(key, features)
        return metas

    def _hold(self, key: Any, features: list[Any]) -> None:
        if features:
            self.held[key] = (time.monotonic(), ray.put(features))  # copied: the call's arena is free again

    def take(self, keys: list[Any]) -> list[Any]:
        """The object refs of the feature lists held under ``keys`` (None for one not held: dropped, or
        this worker restarted since). The caller borrows them; dropping here does not free an
        object a borrower still reads."""
        return [self.held[key][1] if key in self.held else None for key in keys]

    def drop(self, keys: list[Any]) -> None:
        """Stop holding the feature lists of ``keys`` (their requests finished)."""
        for key in keys:
            self.held.pop(key, None)
        if self.held:  # a coordinator that died never drops its keys: they go after their requests' deadline
            now = time.monotonic()
            oldest = min(since for since, _ in self.held.values())
            if now - oldest > self.held_ttl_s:
                for key, (since, _) in list(self.held.items()):
                    if now - since > self.held_ttl_s:
                        del self.held[key]
                        self.held_expired += 1

    def drop_parked(self, call_id: int) -> None:
        """Nobody wants the parked specs of ``call_id`` any more (their requests finished)."""
        _, parked = self.parked.pop(call_id, (0.0, {}))
        for task in parked.values():
            task.cancel()

    def _prune_parked(self) -> None:
        """Parked work never collected (its coordinator died before asking): dropped after a while."""
        now = time.monotonic()
        for call_id, (since, parked) in list(self.parked.items()):
            if now - since > PARKED_TTL_S and all(task.done() for task in parked.values()):
                del self.parked[call_id]

    async def _process_one(self, spec: MediaSpec, arena: CallArena | None,
                           parked: asyncio.Event) -> tuple[dict[str, Any], list[Any]]:
        t0 = time.perf_counter()
        try:
            fetched = await self._fetch(spec, parked)
            loop = asyncio.get_running_loop()
            # A parked item answers in another call: the arena of this one is not its to use.
            items = await loop.run_in_executor(self.decoder, self._decode, spec, fetched,
                                               None if parked.is_set() else arena)
        except MMError as exc:
            return {"error": exc, "node_id": self.node_id}, []
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never let one item kill the worker
            logger.exception("%s: media worker fault", spec.label)
            return {"error": InternalError(f"{spec.label}: worker fault ({type(exc).__name__})"), "node_id": self.node_id}, []
        self.processed += 1
        for item in items:
            item.meta.node_id = self.node_id
            item.meta.timings["worker_s"] = time.perf_counter() - t0
        return {"items": [item.meta for item in items]}, [item.features for item in items]

    async def _fetch(self, spec: MediaSpec, parked: asyncio.Event) -> Any:
        if self._fetch_slots is None:
            self._fetch_slots = asyncio.Semaphore(self.cfg.max_fetches_per_worker)
        async with self._fetch_slots:
            task = asyncio.ensure_future(self.pre.fetch_item_async(spec))
            done, _ = await asyncio.wait({task}, timeout=self.cfg.slow_fetch_s)
            if not done:
                parked.set()
            return await task

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
            "held_feature_lists": len(self.held),
            "held_expired": self.held_expired,
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
