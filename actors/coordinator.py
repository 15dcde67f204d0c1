"""Coordinator actor (one shard of the pool's coordinators): admission, tokenization, media
calls, alignment, ready queue, leases, and the per-request waits of the HTTP front end
(``submit_and_wait``, ``health``: ``actors/serve.py``).

It awaits only item *metadata*; feature objects stay in the object store and travel as
ObjectRefs to the GPU workers. Policy and bookkeeping live in pure classes in ``ray_mm.pool``
(media calls shared by several requests: ``calls``; worker choice, leases, crash counts:
``scheduling``; ready queue, feature slots, deadlines: ``queues``; a request from admission to
ready: ``requests``; shard routing: ``shards``); this actor holds the asyncio waits and the Ray
calls. With ``PoolConfig.coordinators = K`` there are K of these, each holding only the requests
whose id hashes to it (``ray_mm.pool.shard_of``) and the limits of its share (``shard_config``).
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import ray

from actors import metrics
from ray_mm.config import RayMMConfig
from ray_mm.errors import InternalError, MMError, PoolSaturatedError, RequestError, RequestTimeoutError
from ray_mm.logs import RateLimitedLog
from ray_mm.pipeline import Preprocessor, RequestOutcome
from ray_mm.pool import (
    Call,
    CallPlanner,
    CrashCounts,
    Deadlines,
    FeatureSlots,
    HeldFeatures,
    InflightRequest,
    LeaseTable,
    ReadyQueue,
    ReadyRequest,
    Ticket,
    WorkerSelector,
    build_ready,
    first_error,
)
from ray_mm.pool.config import PoolConfig
from ray_mm.request import request_id_of
from ray_mm.serve.http_api import FEATURE_REFS_KEY

logger = logging.getLogger("ray_mm.actors.coordinator")

_WORKER_DIED = object()  # answer of a ticket whose media worker died

# How long ``submit_and_wait`` waits past the request's own deadline: the coordinator finishes every
# request at its deadline (504) by itself, so this only bounds a wait whose record was never written.
WAIT_GRACE_S = 5.0


@dataclass
class _Waiter:
    """A caller of ``submit_and_wait``: ``_finish`` resolves its future instead of storing the record."""

    future: asyncio.Future[dict[str, Any]]
    keep_features: bool = False


async def _awaited(ref: Any) -> Any:
    """An ObjectRef as a coroutine (for asyncio.wait_for)."""
    return await ref


@ray.remote(max_restarts=-1, max_task_retries=-1, num_cpus=0)
class Coordinator:
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
        self.waiters: dict[str, _Waiter] = {}
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

    # -- admission ----------------------------------------------------------
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

    async def _dispatch_and_align(self, entry: InflightRequest) -> None:
        """Send the request's media, collect the metadata, align, build the record, queue it."""
        assert entry.prepared is not None
        answers = await self._collect(entry, entry.prepared.request.items())
        t_cpu = time.thread_time()
        error = first_error(meta for meta, _, _ in answers)
        if error is not None:
            raise error
        entry.stage = "align"
        outcome = build_ready(self.pre, entry.request_id, entry.prepared, answers, self.media_tokens, time.perf_counter)
        self.counters["cache_hits"] += outcome.cache_hits
        self.counters["cache_misses"] += outcome.cache_misses
        metrics.cache_lookups(outcome.cache_hits, outcome.cache_misses)
        self.items_per_node.update(outcome.items_per_node)
        self.cpu_s += time.thread_time() - t_cpu
        entry.stage = "ready_queue"
        await self._enqueue(outcome.ready)

    async def _collect(self, entry: InflightRequest, specs: list[Any]) -> list[tuple[dict[str, Any], Any, int]]:
        """Every spec's answer, in spec order: ``(metadata, ref of its call's feature list, where its
        items start in it)``. Specs whose worker died are counted against (``CrashCounts``) and sent
        again; from then on each goes alone, to an idle worker held exclusively."""
        entry.stage = "media"
        self._release_held(entry)  # sent again (nack): what the first dispatch left is not needed
        crashes = CrashCounts(self.cfg.max_worker_deaths_per_item)
        answered: dict[int, tuple[dict[str, Any], Any, int]] = {}
        todo = list(range(len(specs)))
        loop = asyncio.get_running_loop()
        while todo:
            tickets = [Ticket(entry.request_id, s, specs[s], loop.create_future(), crashes.suspect(s)) for s in todo]
            for ticket in tickets:
                self.planner.add(ticket)
            self._pump()
            answers = await asyncio.gather(*(ticket.waiter for ticket in tickets))
            todo = [t.spec_index for t, answer in zip(tickets, answers) if answer is _WORKER_DIED]
            for ticket, answer in zip(tickets, answers):
                if answer is not _WORKER_DIED:
                    answered[ticket.spec_index] = answer
            if todo:
                self._count_deaths(entry, specs, todo, crashes)
        return [answered[s] for s in range(len(specs))]

    def _count_deaths(self, entry: InflightRequest, specs: list[Any], spec_ids: list[int], crashes: CrashCounts) -> None:
        """A media worker died holding ``spec_ids``: count it against each; one at its limit fails the request."""
        for s in spec_ids:
            deaths = crashes.died(s)
            if crashes.exhausted(s):
                self.counters["crash_looping_items"] += 1
                logger.error("request %s: %s: a media worker died processing it %d times; not dispatched again",
                             entry.request_id, specs[s].label, deaths)
                raise InternalError(f"{specs[s].label}: the media worker died processing this item "
                                    f"({deaths} times); it is not dispatched again")
        self.counters["redispatched_items"] += len(spec_ids)
        logger.warning("request %s: a media worker died holding %d of its item(s); dispatching them again, one per call",
                       entry.request_id, len(spec_ids))

    # -- media calls (planned by ray_mm.pool.CallPlanner) ------------------------
    def _pump(self) -> None:
        """Plan and send calls once the event loop's current round is done: requests admitted together
        (``submit_many``, concurrent callers) add their items first, then share calls."""
        if not self.pump_scheduled:
            self.pump_scheduled = True
            asyncio.get_running_loop().call_soon(self._pump_now)

    def _pump_now(self) -> None:
        self.pump_scheduled = False
        for call in self.planner.plan():
            self._send(call)

    def _send(self, call: Call) -> None:
        worker = self.workers[call.worker]
        key = (self.incarnation, call.call_id)  # unique across this shard's restarts
        if call.collects is not None:
            meta_ref = worker.collect_parked.remote(call.collects, key)
        else:
            meta_ref = worker.process_batch.remote([t.spec for t in call.tickets], call.call_id, key,
                                                   self.held.take_drops(call.worker))
        self.call_refs[call.call_id] = meta_ref
        asyncio.get_running_loop().create_task(self._await_call(call, meta_ref, key))

    async def _await_call(self, call: Call, meta_ref: Any, key: Any) -> None:
        """Await one media call and hand each ticket its answer. Media workers return bad media as a
        value and Ray does not retry their calls, so an exception here is a dead worker (its tickets
        are sent again by their requests) or a failed or cancelled call."""
        answer: list[dict[str, Any]] | None
        try:
            answer = list(await meta_ref)
        except (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError):
            self.counters["media_calls_lost"] += 1
            answer = None
        except ray.exceptions.RayError as exc:  # TaskCancelledError included
            self.counters["media_call_failed"] += 1
            error = InternalError(f"media worker {call.worker} failed ({type(exc).__name__})")
            answer = [{"error": error}] * len(call.tickets)
        finally:
            self.call_refs.pop(call.call_id, None)
        parked = [k for k, meta in enumerate(answer or ()) if meta.get("parked")]
        follow_up = self.planner.park(call.call_id, parked)
        self.planner.finished(call.call_id)
        if follow_up is not None:
            self.counters["slow_fetches"] += len(parked)
            if any(t.live for t in follow_up.tickets):
                self._send(follow_up)
            else:  # nobody waits for them any more
                self.planner.finished(follow_up.call_id)
                self.workers[call.worker].drop_parked.remote(call.call_id)
        holder = (self.worker_names[call.worker], key)  # where a GPU worker takes these features from
        flat, held, users = 0, False, 0  # the worker holds the answered specs' items as one flat list
        for k, ticket in enumerate(call.tickets):
            if answer is not None and k in parked:
                continue
            result: Any = _WORKER_DIED
            if answer is not None:
                n_items = len(answer[k].get("items", ()))
                result, flat, held = (answer[k], holder, flat), flat + n_items, held or n_items > 0
                entry = self.inflight.get(ticket.request_id) if ticket.live and n_items else None
                if entry is not None and (call.worker, key) not in entry.refs:
                    entry.refs.append((call.worker, key))  # released when the request finishes
                    users += 1
            if not ticket.waiter.done():
                ticket.waiter.set_result(result)
        if held:
            self.held.hold(call.worker, key, users)
        self._pump()

    def _release_held(self, entry: InflightRequest) -> None:
        for worker, key in entry.refs:
            self.held.release(worker, key)
        entry.refs = []

    def _flush_drops(self) -> None:
        """Send the drops that no call carried (the pool went quiet, or a worker got no new call)."""
        for worker, handle in enumerate(self.workers):
            drops = self.held.take_drops(worker)
            if drops:
                handle.drop.remote(drops)

    async def _borrow(self, feature_refs: list[tuple[tuple[str, Any], int]]) -> list[tuple[Any, int]]:
        """``(ref, position)`` per item, the refs borrowed from the media workers that hold them (for a
        caller that reads the features after the request is finished here)."""
        holders = list(dict.fromkeys(holder for holder, _ in feature_refs))
        by_name = {name: self.workers[self.worker_names.index(name)] for name, _ in holders}
        refs = await asyncio.gather(*(by_name[name].take.remote([key]) for name, key in holders))
        found = {holder: ref[0] for holder, ref in zip(holders, refs)}
        return [(found[holder], pos) for holder, pos in feature_refs]

    async def _enqueue(self, ready: ReadyRequest, front: bool = False) -> None:
        async with self.ready_changed:
            if not front:
                while not self.ready.has_room():
                    await self.ready_changed.wait()
            self.ready.push(ready, front)
            self.ready_changed.notify_all()

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

    async def _notify_ready(self) -> None:
        async with self.ready_changed:
            self.ready_changed.notify_all()

    async def wake_pulls(self) -> None:
        """Answer every waiting pull now (empty if nothing is ready): stopping GPU workers then
        return from their pull at once instead of after ``pull_wait_s``."""
        await self._notify_ready()

    # -- GPU worker side ---------------------------------------------------
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

    # -- driver side ---------------------------------------------------------
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

    # -- online front end (actors/serve.py) --------------------------------------
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
        if rid in self.waiters or rid in self.inflight or rid in self.results:
            # Refused as admission would, but before a waiter is put in place: the one there (if any)
            # and the request in flight are someone else's.
            return RequestOutcome.failure(rid, RequestError(
                f"request {rid}: a request with this id is already in the pool", status=409)).record
        waiter = _Waiter(asyncio.get_running_loop().create_future(), keep_features)
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
                self.counters["waiter_timed_out"] += 1
                logger.error("request %s: no record %g s past its deadline; cancelling it", rid, WAIT_GRACE_S)
                return RequestOutcome.failure(rid, RequestTimeoutError(
                    f"request {rid}: no result within {limit:g} s")).record
        finally:
            if self.waiters.get(rid) is waiter:  # not finished: refused at admission, timed out, or caller gone
                if rid in self.inflight:  # ours: the id cannot be admitted twice while in flight
                    self.counters["waiter_gave_up"] += 1
                    await self.cancel(rid)  # _finish removes the waiter; the Cancelled record goes nowhere
                self.waiters.pop(rid, None)

    async def health(self, timeout_s: float = 1.0) -> dict[str, Any]:
        """Liveness of the pool as the coordinator sees it: media workers that answer a ping within
        ``timeout_s``, and GPU workers that pulled or renewed leases recently (they pull at least
        every second when idle and renew every ``lease_s / 3`` while consuming)."""
        async def ping(worker: Any) -> bool:
            try:
                await asyncio.wait_for(_awaited(worker.ready.remote()), timeout=timeout_s)
                return True
            except Exception:
                return False

        alive = await asyncio.gather(*(ping(w) for w in self.workers))
        now, window = time.monotonic(), self.cfg.lease_s / 3 + 5.0
        return {
            "incarnation": self.incarnation,
            "media_workers": len(self.workers),
            "media_workers_alive": sum(alive),
            "gpu_workers": self.cfg.gpu_workers,
            "gpu_workers_alive": sum(1 for t in self.last_contact.values() if now - t <= window),
            "inflight": len(self.inflight),
            "max_inflight_requests": self.cfg.max_inflight_requests,
            "waiters": len(self.waiters),
        }

    async def cancel(self, request_id: str) -> bool:
        """Finish ``request_id`` with a ``Cancelled`` record, freeing its media calls, slot, queue place,
        lease and feature refs. False if the request is not in flight here."""
        if request_id not in self.inflight:
            return False
        self.counters["cancelled"] += 1
        await self._finish(request_id, {"request_id": request_id, "ok": False,
                                        "error": {"type": "Cancelled", "message": f"request {request_id}: cancelled", "status": 499}})
        return True

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
