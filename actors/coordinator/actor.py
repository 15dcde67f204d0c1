"""The coordinator actor: construction, admission, a request's run and its one record, stats.

Every decision is :class:`ray_mm.pool.ShardState`'s; this class holds the asyncio waits, the Ray
calls and the metrics. What else it does is in one mixin per concern: ``media`` (media calls,
alignment), ``leases`` (the GPU worker side, the reaper), ``online`` (the HTTP front end's waits).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from typing import Any

import ray

from actors import metrics
from ray_mm.config import RayMMConfig
from ray_mm.errors import InternalError, MMError
from ray_mm.pipeline import Preprocessor, RequestOutcome
from ray_mm.pool import Freed, InflightRequest, ShardState
from ray_mm.pool.config import PoolConfig
from ray_mm.request import request_id_of

from .leases import Leases
from .media import MediaCalls
from .online import Online, Waiter

logger = logging.getLogger("ray_mm.actors.coordinator")


@ray.remote(max_restarts=-1, max_task_retries=-1, num_cpus=0)
class Coordinator(MediaCalls, Leases, Online):
    """One coordinator shard (see the package docstring)."""

    def __init__(self, model_dir: str, core_config: dict[str, Any], pool_config: dict[str, Any], adapter: str | None,
                 worker_names: list[str], shard: int = 0) -> None:
        self.cfg = PoolConfig.model_validate(pool_config)  # this shard's share (ray_mm.pool.shard_config)
        self.shard = shard
        self.pre = Preprocessor(model_dir, RayMMConfig.model_validate(core_config), adapter)
        self.media_tokens = frozenset(self.pre.adapter.feature_token_ids.values())
        self.workers = [ray.get_actor(name) for name in worker_names]
        self.state = ShardState(self.cfg, worker_names, time.time_ns())
        self.call_refs: dict[int, Any] = {}  # call id -> metadata ref of a media call in flight (to cancel it)
        self.pump_scheduled = False
        self.ready_changed = asyncio.Condition()
        self.results_changed = asyncio.Condition()
        # Requests admitted by submit_and_wait: their records go to their own caller, never to take_results.
        self.waiters: dict[str, Waiter] = {}
        self.cpu_s = 0.0  # its own code: thread time of admission, alignment, record
        self.lease_task: asyncio.Task[None] | None = None
        self.reaper_wake: asyncio.Event | None = None  # made on the actor's event loop, with the reaper
        if self.cfg.freeze_gc_after_start:
            gc.freeze()  # see PoolConfig.freeze_gc_after_start
        self.process_cpu0 = time.process_time()  # start-up (imports, the processor) is not what a request costs

    # -- admission --------------------------------------------------------------------
    async def submit(self, line: Any, fallback_id: str = "?", timeout_s: float | None = None) -> str:
        """Admit one request. ``timeout_s`` (default ``request_timeout_s``) is its end-to-end deadline;
        the driver passes what is left of it when it resubmits after a coordinator restart."""
        return await self._admit(line, fallback_id, timeout_s)

    async def submit_many(self, lines: list[tuple[Any, str, float | None]]) -> list[str | MMError]:
        """Admit ``(line, fallback_id, timeout_s)`` in order: a request id per line. Stops at the first
        admission error (``PoolSaturatedError``, a duplicate id), which ``submit`` would raise, so the
        driver retries exactly the tail."""
        out: list[str | MMError] = []
        for line, fallback_id, timeout_s in lines:
            try:
                out.append(await self._admit(line, fallback_id, timeout_s))
            except MMError as exc:
                out.append(exc)
                break
        return out

    async def _admit(self, line: Any, fallback_id: str, timeout_s: float | None) -> str:
        t_cpu = time.thread_time()
        self._ensure_lease_reaper()
        rid = request_id_of(line, fallback_id)
        entry = self.state.admit(rid, time.monotonic(), timeout_s)
        if self.reaper_wake is not None:
            self.reaper_wake.set()
        try:
            if isinstance(line, MMError):
                raise line
            entry.prepared = self.pre.prepare(line, fallback_id)
        except MMError as exc:
            await self._finish(rid, RequestOutcome.failure(rid, exc).record)
        else:
            entry.task = asyncio.get_running_loop().create_task(self._run(entry))
            self.state.counters["submitted"] += 1
        self.cpu_s += time.thread_time() - t_cpu
        return rid

    async def _run(self, entry: InflightRequest) -> None:
        """Wait for a feature slot, dispatch, collect, align and enqueue, all within the deadline."""
        rid = entry.request_id
        try:
            await asyncio.wait_for(self._slot_then_dispatch(entry), timeout=max(0.0, entry.deadline - time.monotonic()))
        except asyncio.TimeoutError:
            await self._finish(rid, self.state.timeout_record(entry))
        except asyncio.CancelledError:
            raise
        except MMError as exc:
            await self._finish(rid, RequestOutcome.failure(rid, exc).record)
        except Exception as exc:
            logger.exception("request %s: coordinator fault", rid)
            await self._finish(rid, RequestOutcome.failure(rid, InternalError(
                f"request {rid}: coordinator fault ({type(exc).__name__})")).record)

    async def _slot_then_dispatch(self, entry: InflightRequest) -> None:
        if not entry.has_slot:
            entry.stage = "feature_slot"
            granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if not self.state.slots.acquire(granted):  # FIFO wait for one of the feature slots
                try:
                    await granted
                except asyncio.CancelledError:
                    if granted.cancelled():  # never handed a slot (a hand-over skips cancelled waiters)
                        self.state.slots.cancel(granted)
                    else:  # handed a slot just before the cancel reached this task
                        self._give_slot_back()
                    raise
            if entry.request_id not in self.state.inflight:  # finished (cancelled) while waiting
                self._give_slot_back()
                return
            entry.has_slot = True
        entry.dispatches += 1
        await self._dispatch_and_align(entry)

    def _give_slot_back(self) -> None:
        """Free a feature slot: the oldest waiter that still waits gets it."""
        waiter = self.state.next_slot_holder(gave_up=lambda w: w.done())
        if waiter is not None:
            waiter.set_result(None)

    # -- the one record -----------------------------------------------------------------
    async def _finish(self, rid: str, record: dict[str, Any]) -> None:
        """Write the one result of ``rid`` and free everything it holds; a second finish is ignored."""
        freed = self.state.finish(rid, record, time.monotonic())
        if freed is None:
            return
        self._act_on_freed(freed)
        metrics.request_done(bool(record.get("ok")))
        for stage, seconds in record.get("timings", {}).items():
            metrics.stage_seconds(stage.removesuffix("_s"), seconds)
        if not record.get("ok"):
            metrics.error(record["error"]["type"])
        waiter = self.waiters.pop(rid, None)
        if waiter is not None:  # its caller awaits it (submit_and_wait): not for take_results
            if not waiter.future.done():
                waiter.future.set_result(record)
            return
        self.state.results[rid] = record
        async with self.results_changed:
            self.results_changed.notify_all()

    def _act_on_freed(self, freed: Freed) -> None:
        task = freed.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        for call_id in freed.calls_to_cancel:  # media calls that only this request still wanted
            ref = self.call_refs.get(call_id)
            if ref is not None:
                try:
                    ray.cancel(ref, force=False)
                except Exception:
                    pass
        if freed.left_ready_queue:
            asyncio.get_running_loop().create_task(self._notify_ready())
        if freed.slot:
            self._give_slot_back()

    async def take_results(self, max_n: int = 256, wait_s: float = 0.5) -> tuple[int, list[dict[str, Any]]]:
        """This incarnation and up to ``max_n`` finished records (waits up to ``wait_s`` for one).
        The incarnation rides along so the driver notices a restart without another call."""
        results = self.state.results
        if not results:
            async with self.results_changed:
                try:
                    await asyncio.wait_for(self.results_changed.wait(), timeout=wait_s)
                except asyncio.TimeoutError:
                    return self.state.incarnation, []
        return self.state.incarnation, [results.pop(rid) for rid in list(results)[:max_n]]

    async def cancel(self, request_id: str) -> bool:
        """Finish ``request_id`` with a ``Cancelled`` record (status 499), freeing all it holds.
        False if the request is not in flight here."""
        if request_id not in self.state.inflight:
            return False
        self.state.counters["cancelled"] += 1
        await self._finish(request_id, {"request_id": request_id, "ok": False,
                                        "error": {"type": "Cancelled", "message": f"request {request_id}: cancelled", "status": 499}})
        return True

    # -- inspection ------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        return {**self.state.stats(), "waiters": len(self.waiters), "shard": self.shard, "pid": os.getpid(),
                "coordinator_cpu_s": self.cpu_s,  # its own code
                # Its whole process since start-up (Ray's per-call and per-object work, idle polling included).
                "coordinator_process_cpu_s": time.process_time() - self.process_cpu0}

    async def feature_locations(self) -> list[dict[str, Any]]:
        """Where the features of queued and leased requests live (node ids, size), for inspection."""
        payloads = [*self.state.ready, *(lease.payload for lease in self.state.leases.leases.values())]
        refs = [ref for r in payloads for ref, _ in await self._borrow(r.feature_refs) if ref is not None]
        found = ray.experimental.get_object_locations(refs) if refs else {}
        return [{"node_ids": list(v.get("node_ids", [])), "object_size": v.get("object_size")} for v in found.values()]

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def ready(self) -> str:
        """Answers once the constructor has run; the pool's bounded start-up wait calls it."""
        return self.node_id()

    def incarnation_id(self) -> int:
        return self.state.incarnation
