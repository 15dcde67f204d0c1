"""The coordinator actor: its state, stats and inspection. What it does is in one mixin per
concern: ``admission`` (a request's life), ``media`` (media calls, alignment), ``leases`` (the
GPU worker side), ``online`` (the HTTP front end's waits); policy and bookkeeping are pure
classes in ``ray_mm.pool``."""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import os
import time
from typing import Any

import ray

from ray_mm.config import RayMMConfig
from ray_mm.logs import RateLimitedLog
from ray_mm.pipeline import Preprocessor
from ray_mm.pool import (
    CallPlanner,
    Deadlines,
    FeatureSlots,
    HeldFeatures,
    InflightRequest,
    LeaseTable,
    ReadyQueue,
    ReadyRequest,
    WorkerSelector,
)
from ray_mm.pool.config import PoolConfig

from .admission import Admission
from .leases import Leases
from .media import MediaCalls
from .online import Online, Waiter

logger = logging.getLogger("ray_mm.actors.coordinator")

@ray.remote(max_restarts=-1, max_task_retries=-1, num_cpus=0)
class Coordinator(Admission, MediaCalls, Leases, Online):
    """One coordinator shard (see the package docstring); thin: state here, behaviour in the mixins."""

    def __init__(
        self,
        model_dir: str,
        core_config: dict[str, Any],
        pool_config: dict[str, Any],
        adapter: str | None,
        worker_names: list[str],
        shard: int = 0,
    ) -> None:
        self.cfg = PoolConfig.model_validate(pool_config)  # this shard's share (ray_mm.pool.shard_config)
        self.shard = shard
        self.pre = Preprocessor(model_dir, RayMMConfig.model_validate(core_config), adapter)
        self.workers = [ray.get_actor(name) for name in worker_names]
        self.worker_names = list(worker_names)
        self.held = HeldFeatures(len(self.workers))  # feature lists the media workers hold for this shard
        self.media_tokens = frozenset(self.pre.adapter.feature_token_ids.values())
        self.selector = WorkerSelector(len(self.workers), self.cfg.max_inflight_per_worker,
                                       max_parked_per_worker=self.cfg.max_fetches_per_worker)
        self.planner = CallPlanner(self.selector, self.cfg.max_calls_per_worker, self.cfg.max_items_per_call)
        self.call_refs: dict[int, Any] = {}  # call id -> metadata ref of a media call in flight (to cancel it)
        self.pump_scheduled = False
        self.ready: ReadyQueue[ReadyRequest] = ReadyQueue(self.cfg.ready_queue_size, key=lambda r: r.request_id)
        self.ready_changed = asyncio.Condition()
        self.leases: LeaseTable[ReadyRequest] = LeaseTable(self.cfg.lease_s)
        self.inflight: dict[str, InflightRequest] = {}
        self.results: dict[str, dict[str, Any]] = {}
        self.results_changed = asyncio.Condition()
        # Requests admitted by submit_and_wait: their records go to their own caller, never to take_results.
        self.waiters: dict[str, Waiter] = {}
        self.last_contact: dict[str, float] = {}  # GPU worker -> last pull or renewal (monotonic), for health
        self.incarnation = time.time_ns()
        self.counters: collections.Counter[str] = collections.Counter()
        self.items_per_node: collections.Counter[str] = collections.Counter()
        self.refusals_log = RateLimitedLog(logger, logging.WARNING, every_s=10.0)
        self.cpu_s = 0.0
        self.lease_task: asyncio.Task[None] | None = None
        self.reaper_wake: asyncio.Event | None = None  # made on the actor's event loop, with the reaper
        # Object-store bound: requests holding feature refs (dispatched, not finished); waiters are futures.
        self.slots: FeatureSlots[asyncio.Future[None]] = FeatureSlots(self.cfg.feature_request_limit())
        self.deadlines = Deadlines()
        if self.cfg.freeze_gc_after_start:
            gc.freeze()  # see PoolConfig.freeze_gc_after_start
        # Process CPU (every thread: Ray's core worker included) from here on, for stats(): start-up
        # (imports, the processor) is not what a request costs.
        self.process_cpu0 = time.process_time()

    def stats(self) -> dict[str, Any]:
        return {
            "waiters": len(self.waiters),
            "incarnation": self.incarnation,
            "inflight": len(self.inflight),
            "ready": len(self.ready),
            "max_ready_seen": self.ready.max_seen,
            "leased": len(self.leases),
            "lease_holders": self.leases.holders(),
            "held_feature_refs": sum(len(e.refs) for e in self.inflight.values()),
            "held_feature_lists": len(self.held),
            **self.planner.stats(),
            "feature_slots_used": self.slots.used,
            "feature_slots_limit": self.cfg.feature_request_limit(),
            "max_feature_slots_used": self.slots.max_used,
            "results_waiting": len(self.results),
            "counters": dict(self.counters),
            "items_per_node": dict(self.items_per_node),
            "worker_load": list(self.selector.load),
            "worker_assigned": list(self.selector.assigned),
            "coordinator_cpu_s": self.cpu_s,  # its own code (thread time of admission, alignment, record)
            # Its whole process since start-up (Ray's per-call and per-object work, idle polling included).
            "coordinator_process_cpu_s": time.process_time() - self.process_cpu0,
            "shard": self.shard,
            "pid": os.getpid(),
        }

    async def feature_locations(self) -> list[dict[str, Any]]:
        """Where the features of queued and leased requests live (node ids, size), for inspection."""
        payloads = [*self.ready, *(lease.payload for lease in self.leases.leases.values())]
        refs = [ref for r in payloads for ref, _ in await self._borrow(r.feature_refs) if ref is not None]
        found = ray.experimental.get_object_locations(refs) if refs else {}
        return [{"node_ids": list(v.get("node_ids", [])), "object_size": v.get("object_size")} for v in found.values()]

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def ready(self) -> str:
        """Answers once the constructor has run; the pool's bounded start-up wait calls it."""
        return self.node_id()

    def incarnation_id(self) -> int:
        return self.incarnation
