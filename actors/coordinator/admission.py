"""The coordinator's admission and a request's life in it: admit (parse, tokenize), wait for a
feature slot, run dispatch -> align within the deadline, finish with exactly one record (freeing
everything the request holds), cancel, and hand records to the driver (``take_results``)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray

from actors import metrics
from ray_mm.errors import InternalError, MMError, PoolSaturatedError, RequestError, RequestTimeoutError
from ray_mm.pipeline import RequestOutcome
from ray_mm.pool import InflightRequest
from ray_mm.request import request_id_of

logger = logging.getLogger("ray_mm.actors.coordinator")


class Admission:
    """Mixin of :class:`~actors.coordinator.Coordinator` (its state is made there)."""

    async def submit(self, line: Any, fallback_id: str = "?", timeout_s: float | None = None) -> str:
        """Admit one request. ``timeout_s`` (default ``request_timeout_s``) is its end-to-end deadline;
        the driver passes what is left of it when it resubmits after a coordinator restart."""
        return await self._admit(line, fallback_id, timeout_s)

    async def submit_many(self, lines: list[tuple[Any, str, float | None]]) -> list[str | MMError]:
        """Admit ``(line, fallback_id, timeout_s)`` in order, in one call: a request id per line.
        Stops at the first ``PoolSaturatedError`` (the rest are not admitted and not
        answered), so the driver retries exactly the tail; stops likewise at any other admission error
        (a duplicate id), which ``submit`` would raise."""
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
        if rid in self.inflight or rid in self.results:
            raise RequestError(f"request {rid}: a request with this id is already in the pool", status=409)
        if len(self.inflight) >= self.cfg.max_inflight_requests:
            self.counters["saturated"] += 1
            self.refusals_log.log("pool saturated: %d requests in flight (limit %d); refusing request %s",
                                  len(self.inflight), self.cfg.max_inflight_requests, rid)
            raise PoolSaturatedError(f"pool saturated: {len(self.inflight)} requests in flight (limit {self.cfg.max_inflight_requests})")
        now = time.monotonic()
        entry = InflightRequest(rid, now, now + (self.cfg.request_timeout_s if timeout_s is None else max(0.0, timeout_s)))
        self.inflight[rid] = entry
        self.deadlines.add(rid, entry.deadline)
        if self.reaper_wake is not None:
            self.reaper_wake.set()
        try:
            prepared = self.pre.prepare(line, fallback_id) if not isinstance(line, MMError) else None
            if prepared is None:
                raise line
        except MMError as exc:
            await self._finish(rid, RequestOutcome.failure(rid, exc).record)
            self.cpu_s += time.thread_time() - t_cpu
            return rid
        entry.prepared = prepared
        entry.task = asyncio.get_running_loop().create_task(self._run(entry))
        self.counters["submitted"] += 1
        self.cpu_s += time.thread_time() - t_cpu
        return rid

    async def _run(self, entry: InflightRequest) -> None:
        """Dispatch, await metadata, align and enqueue, all within the request's deadline."""
        rid = entry.request_id
        try:
            await asyncio.wait_for(self._slot_dispatch_align(entry), timeout=max(0.0, entry.deadline - time.monotonic()))
        except asyncio.TimeoutError:
            await self._finish(rid, self._timeout_record(entry))
        except asyncio.CancelledError:
            raise
        except MMError as exc:
            await self._finish(rid, RequestOutcome.failure(rid, exc).record)
        except Exception as exc:
            logger.exception("request %s: coordinator fault", rid)
            await self._finish(rid, RequestOutcome.failure(rid, InternalError(
                f"request {rid}: coordinator fault ({type(exc).__name__})")).record)

    def _timeout_record(self, entry: InflightRequest) -> dict[str, Any]:
        rid = entry.request_id
        self.counters["timed_out"] += 1
        return RequestOutcome.failure(rid, RequestTimeoutError(
            f"request {rid}: not finished within its deadline of {entry.deadline - entry.submitted:g} s "
            f"(stage: {entry.stage})")).record

    async def _slot_dispatch_align(self, entry: InflightRequest) -> None:
        if not entry.has_slot and not await self._take_slot(entry):
            return
        entry.dispatches += 1
        await self._dispatch_and_align(entry)

    async def _take_slot(self, entry: InflightRequest) -> bool:
        """Wait (FIFO) for one of the feature slots; False if the request finished meanwhile (cancelled)."""
        entry.stage = "feature_slot"
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self.slots.acquire(granted):
            try:
                await granted
            except asyncio.CancelledError:
                if granted.cancelled():  # never handed a slot (a hand-over skips cancelled waiters)
                    self.slots.cancel(granted)
                else:  # handed a slot just before the cancel reached this task
                    self._give_slot_back()
                raise
        if entry.request_id not in self.inflight:  # finished (cancelled) while waiting
            self._give_slot_back()
            return False
        entry.has_slot = True
        return True

    def _give_slot_back(self) -> None:
        """Free a feature slot: the oldest waiter that still waits gets it."""
        waiter = self.slots.release()
        while waiter is not None and waiter.done():  # gave up meanwhile: pass the slot on
            waiter = self.slots.release()
        if waiter is not None:
            waiter.set_result(None)

    async def _finish(self, rid: str, record: dict[str, Any]) -> None:
        """Write the one result of ``rid`` and free everything it holds (task, media calls, slot,
        queue place, lease, feature refs). A second finish of the same request is ignored."""
        entry = self.inflight.pop(rid, None)
        if entry is None:
            self.counters["late_finish"] += 1
            return
        self.deadlines.discard(rid)
        self._release(entry)
        if record.get("ok"):
            record.setdefault("timings", {})
            record["timings"]["pool_total_s"] = round(time.monotonic() - entry.submitted, 6)
        metrics.request_done(bool(record.get("ok")))
        for stage, seconds in record.get("timings", {}).items():
            metrics.stage_seconds(stage.removesuffix("_s"), seconds)
        if record.get("ok"):
            self.counters["ok"] += 1
        else:
            self.counters[f"error:{record['error']['type']}"] += 1
            metrics.error(record["error"]["type"])
        waiter = self.waiters.pop(rid, None)
        if waiter is not None:  # its caller awaits it (submit_and_wait): not for take_results
            if not waiter.future.done():
                waiter.future.set_result(record)
            return
        self.results[rid] = record
        async with self.results_changed:
            self.results_changed.notify_all()

    def _release(self, entry: InflightRequest) -> None:
        rid = entry.request_id
        if entry.task is not None and not entry.task.done() and entry.task is not asyncio.current_task():
            entry.task.cancel()
        for call_id in self.planner.drop_request(rid):  # media calls that only it still wanted: dropped
            ref = self.call_refs.get(call_id)
            if ref is not None:
                try:
                    ray.cancel(ref, force=False)
                except Exception:
                    pass
        self._release_held(entry)
        entry.prepared = None
        self.leases.drop(rid)
        if self.ready.remove(rid):
            asyncio.get_running_loop().create_task(self._notify_ready())
        if entry.has_slot:
            entry.has_slot = False
            self._give_slot_back()

    async def take_results(self, max_n: int = 256, wait_s: float = 0.5) -> tuple[int, list[dict[str, Any]]]:
        """This incarnation and up to ``max_n`` finished records (waits up to ``wait_s`` for one).
        The incarnation rides along so the driver notices a restart without another call."""
        if not self.results:
            async with self.results_changed:
                try:
                    await asyncio.wait_for(self.results_changed.wait(), timeout=wait_s)
                except asyncio.TimeoutError:
                    return self.incarnation, []
        out = []
        for rid in list(self.results)[:max_n]:
            out.append(self.results.pop(rid))
        return self.incarnation, out

    async def cancel(self, request_id: str) -> bool:
        """Finish ``request_id`` with a ``Cancelled`` record, freeing its media calls, slot, queue place,
        lease and feature refs. False if the request is not in flight here."""
        if request_id not in self.inflight:
            return False
        self.counters["cancelled"] += 1
        await self._finish(request_id, {"request_id": request_id, "ok": False,
                                        "error": {"type": "Cancelled", "message": f"request {request_id}: cancelled", "status": 499}})
        return True
