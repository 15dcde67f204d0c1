"""The coordinator's side of the HTTP front end (``actors/serve.py``): one awaited record per
caller (``submit_and_wait``) and the pool's health as the coordinator sees it."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import ray

from ray_mm.errors import MMError, RequestError, RequestTimeoutError
from ray_mm.pipeline import RequestOutcome
from ray_mm.request import request_id_of

logger = logging.getLogger("ray_mm.actors.coordinator")


# How long ``submit_and_wait`` waits past the request's own deadline: the coordinator finishes every
# request at its deadline (504) by itself, so this only bounds a wait whose record was never written.
WAIT_GRACE_S = 5.0


@dataclass
class Waiter:
    """A caller of ``submit_and_wait``: ``_finish`` resolves its future instead of storing the record."""

    future: asyncio.Future[dict[str, Any]]
    keep_features: bool = False


async def _awaited(ref: Any) -> Any:
    """An ObjectRef as a coroutine (for asyncio.wait_for)."""
    return await ref


class Online:
    """Mixin of :class:`~actors.coordinator.Coordinator` (its state is made there)."""

    @ray.method(max_task_retries=0)  # not retried by Ray on a restarted coordinator: the caller resubmits itself
    async def submit_and_wait(
        self, line: Any, fallback_id: str = "?", timeout_s: float | None = None, keep_features: bool = False
    ) -> dict[str, Any]:
        """Admit one request and answer its record, for many concurrent callers each waiting on its own.

        Admission refusals come back as records too (``PoolSaturatedError`` 503, ``RequestError`` 409
        for an id in flight). The record is never stored for ``take_results``. A caller that gives up
        (cancelled, or no record ``WAIT_GRACE_S`` past the deadline) cancels its request, so neither
        the request nor its record outlives the wait. With ``keep_features``, a successful record
        carries the request's feature refs, ``[(ref to a media call's feature list, position)]`` per
        item in prompt order, under ``FEATURE_REFS_KEY``.
        """
        rid = request_id_of(line, fallback_id)
        if rid in self.waiters or self.state.known(rid):
            # Refused as admission would, but before a waiter is put in place: the one there (if any)
            # and the request in flight are someone else's.
            return RequestOutcome.failure(rid, RequestError(
                f"request {rid}: a request with this id is already in the pool", status=409)).record
        waiter = Waiter(asyncio.get_running_loop().create_future(), keep_features)
        self.waiters[rid] = waiter  # before admission: a request that fails there is finished inside it
        try:
            try:
                await self._admit(line, fallback_id, timeout_s)
            except MMError as exc:
                return RequestOutcome.failure(rid, exc).record
            limit = (self.cfg.request_timeout_s if timeout_s is None else max(0.0, timeout_s)) + WAIT_GRACE_S
            try:
                # shield: a timeout here must not cancel the future _finish resolves
                return await asyncio.wait_for(asyncio.shield(waiter.future), timeout=limit)
            except asyncio.TimeoutError:
                self.state.counters["waiter_timed_out"] += 1
                logger.error("request %s: no record %g s past its deadline; cancelling it", rid, WAIT_GRACE_S)
                return RequestOutcome.failure(rid, RequestTimeoutError(
                    f"request {rid}: no result within {limit:g} s")).record
        finally:
            if self.waiters.get(rid) is waiter:  # not finished: refused at admission, timed out, or caller gone
                if rid in self.state.inflight:  # ours: the id cannot be admitted twice while in flight
                    self.state.counters["waiter_gave_up"] += 1
                    await self.cancel(rid)  # _finish removes the waiter; the Cancelled record goes nowhere
                self.waiters.pop(rid, None)

    async def health(self, timeout_s: float = 1.0) -> dict[str, Any]:
        """Liveness of the pool as the coordinator sees it (``ShardState.health``): media workers that
        answer a ping within ``timeout_s``, GPU workers that pulled or renewed leases recently."""
        async def ping(worker: Any) -> bool:
            try:
                await asyncio.wait_for(_awaited(worker.ready.remote()), timeout=timeout_s)
                return True
            except Exception:
                return False

        alive = await asyncio.gather(*(ping(w) for w in self.workers))
        return self.state.health(time.monotonic(), sum(alive), len(self.waiters))
