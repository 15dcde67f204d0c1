"""The coordinator's GPU worker side: the bounded ready queue's waits, pulls that lease requests,
acks (each naming its lease), renewals, nacks (media sent again), hand-backs of a restarted
holder, and the reaper that requeues expired leases and fails requests past their deadline.
The decisions are ``ray_mm.pool.ShardState``'s."""

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
            while not front and not self.state.ready.has_room():
                await self.ready_changed.wait()
            self.state.ready.push(ready, front)
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
        self.state.last_contact[holder] = time.monotonic()
        for request_id, consumer, lease in acks or ():
            await self.ack(holder, request_id, consumer, lease)
        if max_n <= 0:
            return []
        async with self.ready_changed:
            if not self.state.ready:
                try:
                    await asyncio.wait_for(self.ready_changed.wait(), timeout=wait_s)
                except asyncio.TimeoutError:
                    return []
            batch = self.state.lease_out(holder, max_n, time.monotonic())
            self.ready_changed.notify_all()
            return batch

    async def ack(self, holder: str, request_id: str, consumer: dict[str, Any], lease: int | None = None) -> bool:
        """Finish a pulled request. The ack must name the lease it was pulled under: one without a
        lease token, or for a lease taken back meanwhile, is refused (False)."""
        acked = self.state.acked(holder, request_id, consumer, lease)
        if acked is None:
            return False  # lease expired and the request went elsewhere (or it finished meanwhile)
        ready, record = acked
        waiter = self.waiters.get(request_id)
        if waiter is not None and waiter.keep_features and record.get("ok"):
            # The caller borrows the refs through the returned record, which keeps the objects alive
            # after this request's refs are dropped here.
            try:
                record[FEATURE_REFS_KEY] = await self._borrow(ready.feature_refs)
            except ray.exceptions.RayError:  # the worker holding them died: the caller nacks nothing, so fail
                record = RequestOutcome.failure(request_id, InternalError(
                    f"request {request_id}: its features were lost with their media worker")).record
        await self._finish(request_id, record)
        return True

    async def release_holder(self, holder: str) -> int:
        """``holder`` (re)started and holds nothing: its leases (from a process that died) go back to
        the front of the queue now, instead of waiting out ``lease_s``. How many went back."""
        back = self.state.take_back(holder)
        for req in back:
            await self._enqueue(req, front=True)
        if back:
            logger.warning("%s restarted: %d of its leases go back to the queue", holder, len(back))
        return len(back)

    async def renew(self, holder: str, leases: list[tuple[str, int]]) -> int:
        """Extend the leases ``holder`` still holds (``(request_id, lease)`` each) by ``lease_s``;
        how many were renewed. A GPU worker calls this while it consumes, so a slow consumer keeps
        its requests and only a holder that stopped renewing loses them."""
        return self.state.renew(holder, leases, time.monotonic())

    async def nack(self, holder: str, request_id: str, lease: int, reason: str) -> bool:
        """A GPU worker could not read the features (object lost beyond lineage repair, owner gone,
        read timed out): dispatch the request's media again, within its deadline."""
        entry = self.state.nacked(holder, request_id, lease, reason)
        if entry is None:
            return False
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
            if not self.state.inflight:
                self._sample_depths()
                self.reaper_wake.clear()
                await self.reaper_wake.wait()
            await asyncio.sleep(min(0.5, self.cfg.lease_s / 4))
            try:
                self._sample_depths()
                requeue, late = self.state.due(time.monotonic(), lambda e: e.task is not None and not e.task.done())
                for req in requeue:
                    logger.warning("request %s: its lease expired (not renewed within %g s); queued again",
                                   req.request_id, self.cfg.lease_s)
                    await self._enqueue(req, front=True)
                for entry in late:
                    await self._finish(entry.request_id, self.state.timeout_record(entry))
            except Exception:  # never let the reaper die; it is restarted by the next call anyway
                self.state.counters["reaper_error"] += 1
                logger.exception("lease reaper fault")

    def _sample_depths(self) -> None:
        """Queue depths for the metrics, once per reaper tick (a metric call per change costs more)."""
        metrics.queue_depth("inflight", len(self.state.inflight))
        metrics.queue_depth("ready", len(self.state.ready))
