"""The coordinator's GPU worker side: the bounded ready queue, pulls that lease requests, acks
(each naming its lease), renewals, nacks (media sent again), hand-backs of a restarted holder,
and the reaper that requeues expired leases and fails requests past their deadline."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray

from actors import metrics
from ray_mm.errors import InternalError
from ray_mm.pipeline import RequestOutcome
from ray_mm.pool import ReadyRequest
from ray_mm.serve.http_api import FEATURE_REFS_KEY

logger = logging.getLogger("ray_mm.actors.coordinator")


class Leases:
    """Mixin of :class:`~actors.coordinator.Coordinator` (its state is made there)."""

    async def _enqueue(self, ready: ReadyRequest, front: bool = False) -> None:
        async with self.ready_changed:
            if not front:
                while not self.ready.has_room():
                    await self.ready_changed.wait()
            self.ready.push(ready, front)
            self.ready_changed.notify_all()

    async def _notify_ready(self) -> None:
        async with self.ready_changed:
            self.ready_changed.notify_all()

    async def wake_pulls(self) -> None:
        """Answer every waiting pull now (empty if nothing is ready): stopping GPU workers then
        return from their pull at once instead of after ``pull_wait_s``."""
        await self._notify_ready()

    async def pull(
        self, holder: str, max_n: int, wait_s: float = 1.0, acks: list[tuple[str, dict[str, Any], int]] | None = None
    ) -> list[ReadyRequest]:
        """Up to ``max_n`` ready requests, leased to ``holder``; waits up to ``wait_s`` for the first.

        ``acks`` are ``(request_id, consumer summary, lease)`` of what ``holder`` finished since its
        last pull: acknowledging on the next pull saves the coordinator one call per request.
        """
        self._ensure_lease_reaper()
        self.last_contact[holder] = time.monotonic()
        for request_id, consumer, lease in acks or ():
            await self.ack(holder, request_id, consumer, lease)
        if max_n <= 0:
            return []
        async with self.ready_changed:
            if not self.ready:
                try:
                    await asyncio.wait_for(self.ready_changed.wait(), timeout=wait_s)
                except asyncio.TimeoutError:
                    return []
            # Requests finished while queued (timed out, cancelled) are dropped on the way.
            batch = self.ready.pop_batch(max_n, self.inflight.__contains__)
            now = time.monotonic()
            for req in batch:
                req.pulls += 1
                req.lease = self.leases.grant(req.request_id, holder, req, now)
                self.inflight[req.request_id].stage = "gpu"
            self.ready_changed.notify_all()
            return batch

    async def ack(self, holder: str, request_id: str, consumer: dict[str, Any], lease: int | None = None) -> bool:
        """Finish a pulled request. The ack must name the lease it was pulled under: one without a
        lease token, or for a lease taken back meanwhile, is refused (False)."""
        lease_ = self.leases.ack(request_id, holder, lease)
        if lease_ is None:
            self.counters["stale_ack" if lease is not None else "ack_without_lease"] += 1
            return False  # lease expired and the request went elsewhere (or it finished meanwhile)
        record = dict(lease_.payload.record)
        record["consumer"] = consumer
        if consumer.get("error"):
            record = {"request_id": request_id, "ok": False, "error": consumer["error"]}
        waiter = self.waiters.get(request_id)
        if waiter is not None and waiter.keep_features and record.get("ok"):
            # The caller borrows the refs through the returned record, which keeps the objects alive
            # after this request's refs are dropped here.
            try:
                record[FEATURE_REFS_KEY] = await self._borrow(lease_.payload.feature_refs)
            except ray.exceptions.RayError:  # the worker holding them died: the caller nacks nothing, so fail
                record = RequestOutcome.failure(request_id, InternalError(
                    f"request {request_id}: its features were lost with their media worker")).record
        await self._finish(request_id, record)
        return True

    async def release_holder(self, holder: str) -> int:
        """``holder`` (re)started and holds nothing: its leases (from a process that died) go back to
        the front of the queue now, instead of waiting out ``lease_s``. How many went back."""
        released = [(rid, lease.payload) for rid, lease in list(self.leases.leases.items()) if lease.holder == holder]
        for rid, req in released:
            self.leases.drop(rid)
            if rid in self.inflight:
                self.counters["leases_released"] += 1
                self.inflight[rid].stage = "ready_queue"
                await self._enqueue(req, front=True)
        if released:
            logger.warning("%s restarted: %d of its leases go back to the queue", holder, len(released))
        return len(released)

    async def renew(self, holder: str, leases: list[tuple[str, int]]) -> int:
        """Extend the leases ``holder`` still holds (``(request_id, lease)`` each) by ``lease_s``;
        how many were renewed. A GPU worker calls this while it consumes, so a slow consumer keeps
        its requests and only a holder that stopped renewing loses them."""
        now = time.monotonic()
        self.last_contact[holder] = now
        renewed = sum(1 for request_id, lease in leases if self.leases.renew(request_id, holder, lease, now))
        self.counters["lease_renewals"] += renewed
        return renewed

    async def nack(self, holder: str, request_id: str, lease: int, reason: str) -> bool:
        """A GPU worker could not read the features (object lost beyond lineage repair, owner gone,
        read timed out): dispatch the request's media again, within its deadline."""
        lease_ = self.leases.ack(request_id, holder, lease)
        entry = self.inflight.get(request_id)
        if lease_ is None or entry is None or entry.prepared is None:
            return False
        self.counters["redispatched"] += 1
        self.counters[f"nack:{reason}"] += 1
        logger.warning("request %s: %s could not read its features (%s); dispatching its media again",
                       request_id, holder, reason)
        entry.task = asyncio.get_running_loop().create_task(self._run(entry))
        return True

    def _ensure_lease_reaper(self) -> None:
        if self.lease_task is None or self.lease_task.done():
            if self.reaper_wake is None:
                self.reaper_wake = asyncio.Event()
            self.lease_task = asyncio.get_running_loop().create_task(self._reap_leases())

    async def _reap_leases(self) -> None:
        """Requeue expired leases; fail requests past their deadline wherever they wait. Sleeps
        without a timer while nothing is in flight (no lease nor deadline can be due then):
        admission wakes it."""
        assert self.reaper_wake is not None
        while True:
            self._flush_drops()
            if not self.inflight:
                self._sample_depths()
                self.reaper_wake.clear()
                await self.reaper_wake.wait()
            await asyncio.sleep(min(0.5, self.cfg.lease_s / 4))
            try:
                self._sample_depths()
                now = time.monotonic()
                for rid, req in self.leases.expired(now):
                    if rid in self.inflight:
                        self.counters["lease_expired"] += 1
                        logger.warning("request %s: its lease expired (not renewed within %g s); queued again",
                                       rid, self.cfg.lease_s)
                        self.inflight[rid].stage = "ready_queue"
                        await self._enqueue(req, front=True)
                for rid in self.deadlines.pop_due(now):
                    entry = self.inflight.get(rid)
                    if entry is None:
                        continue
                    if entry.task is not None and not entry.task.done():
                        self.deadlines.add(rid, entry.deadline)  # its own wait_for fires at the same deadline
                        continue
                    await self._finish(rid, self._timeout_record(entry))
            except Exception:  # never let the reaper die; it is restarted by the next call anyway
                self.counters["reaper_error"] += 1
                logger.exception("lease reaper fault")

    def _sample_depths(self) -> None:
        """Queue depths for the metrics, once per reaper tick (a metric call per change costs more)."""
        metrics.queue_depth("inflight", len(self.inflight))
        metrics.queue_depth("ready", len(self.ready))
