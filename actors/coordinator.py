"""Coordinator actor (one shard of the pool's coordinators): admission, tokenization, dispatch,
alignment, ready queue, leases, and the per-request waits of the HTTP front end
(``submit_and_wait``, ``health``: ``actors/serve.py``).

It awaits only item *metadata*; feature objects stay in the object store and
travel as ObjectRefs to the GPU workers. Policy and bookkeeping live in pure classes
(``ray_mm.pool.scheduling``: worker choice, leases, crash counts; ``ray_mm.pool``: ready queue,
feature slots, deadlines, shard routing); this actor holds the asyncio waits and the Ray calls.
With ``PoolConfig.coordinators = K`` there are K of these, each holding only the requests whose
id hashes to it (``ray_mm.pool.shard_of``) and the limits of its share (``shard_config``).
"""

from __future__ import annotations

import asyncio
import collections
import gc
import itertools
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import ray

from actors import metrics
from ray_mm.config import RayMMConfig
from ray_mm.errors import InternalError, MMError, PoolSaturatedError, RequestError, RequestTimeoutError
from ray_mm.logs import RateLimitedLog
from ray_mm.pipeline import Prepared, Preprocessor, RequestOutcome, success_record
from ray_mm.pool import Deadlines, FeatureSlots, ReadyQueue
from ray_mm.pool.config import PoolConfig
from ray_mm.pool.scheduling import CrashCounts, LeaseTable, WorkerSelector, content_key
from ray_mm.request import request_id_of
from ray_mm.serve.http_api import FEATURE_REFS_KEY

logger = logging.getLogger("ray_mm.actors.coordinator")


@dataclass
class ReadyRequest:
    """An aligned request waiting for (or leased to) a GPU worker."""

    request_id: str
    record: dict[str, Any]
    feature_refs: list[tuple[Any, int]]  # per item in prompt order: (ref to a media call's feature list, position)
    placeholder_tokens: int
    pulls: int = 0
    lease: int = 0  # token of the current lease; set on each pull, named in ack / nack


@dataclass
class _Call:
    """A media call in flight: its worker, its size, how many of its items were parked (slow fetch)."""

    worker: int
    n_specs: int
    exclusive: bool = False
    parked: int = 0


_WORKER_DIED = object()  # answer of a media call whose worker died

# How long ``submit_and_wait`` waits past the request's own deadline: the coordinator finishes every
# request at its deadline (504) by itself, so this only bounds a wait whose record was never written.
WAIT_GRACE_S = 5.0


@dataclass
class _Waiter:
    """A caller of ``submit_and_wait``: ``_finish`` resolves its future instead of storing the record."""

    future: asyncio.Future[dict[str, Any]]
    keep_features: bool = False


@dataclass
class _Entry:
    request_id: str
    submitted: float
    deadline: float
    prepared: Prepared | None = None
    task: asyncio.Task[None] | None = None
    refs: list[Any] = field(default_factory=list)  # feature refs of the current dispatch
    calls: list[Any] = field(default_factory=list)  # metadata refs of media calls not yet answered
    stage: str = "dispatch"
    has_slot: bool = False  # holds one of the max_feature_requests slots
    dispatches: int = 0


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
        name: str | None = None,
    ) -> None:
        self.cfg = PoolConfig.model_validate(pool_config)  # this shard's share (ray_mm.pool.shard_config)
        self.shard = shard
        self.name = name  # named in media calls, so slow-fetch reports come back to this shard
        self.pre = Preprocessor(model_dir, RayMMConfig.model_validate(core_config), adapter)
        self.workers = [ray.get_actor(name) for name in worker_names]
        self.media_tokens = frozenset(self.pre.adapter.feature_token_ids.values())
        self.selector = WorkerSelector(len(self.workers), self.cfg.max_inflight_per_worker,
                                       max_parked_per_worker=self.cfg.max_fetches_per_worker)
        self.call_ids = itertools.count()
        self.open_calls: dict[int, _Call] = {}
        self.slot_freed = asyncio.Condition()
        self.ready: ReadyQueue[ReadyRequest] = ReadyQueue(self.cfg.ready_queue_size, key=lambda r: r.request_id)
        self.ready_changed = asyncio.Condition()
        self.leases: LeaseTable[ReadyRequest] = LeaseTable(self.cfg.lease_s)
        self.inflight: dict[str, _Entry] = {}
        self.results: dict[str, dict[str, Any]] = {}
        self.results_changed = asyncio.Condition()
        # Requests admitted by submit_and_wait: their records go to their own caller, never to take_results.
        self.waiters: dict[str, _Waiter] = {}
        self.last_contact: dict[str, float] = {}  # GPU worker -> last pull or renewal (monotonic), for health
        self.incarnation = time.time_ns()
        self.counters: collections.Counter[str] = collections.Counter()
        self.stage_times: dict[str, list[float]] = collections.defaultdict(list)
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
        entry = _Entry(rid, now, now + (self.cfg.request_timeout_s if timeout_s is None else max(0.0, timeout_s)))
        self.inflight[rid] = entry
        self.deadlines.add(rid, entry.deadline)
        if self.reaper_wake is not None:
            self.reaper_wake.set()
        metrics.queue_depth("inflight", len(self.inflight))
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

    async def _run(self, entry: _Entry) -> None:
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

    def _timeout_record(self, entry: _Entry) -> dict[str, Any]:
        rid = entry.request_id
        self.counters["timed_out"] += 1
        return RequestOutcome.failure(rid, RequestTimeoutError(
            f"request {rid}: not finished within its deadline of {entry.deadline - entry.submitted:g} s "
            f"(stage: {entry.stage})")).record

    async def _slot_dispatch_align(self, entry: _Entry) -> None:
        if not entry.has_slot and not await self._take_slot(entry):
            return
        assert entry.prepared is not None
        entry.dispatches += 1
        await self._dispatch_and_align(entry, entry.prepared)

    async def _take_slot(self, entry: _Entry) -> bool:
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

    async def _dispatch_and_align(self, entry: _Entry, prepared: Prepared) -> None:
        """Dispatch the request's media, collect the metadata, align, build the record, queue it."""
        specs = prepared.request.items()
        answered = await self._collect(entry, specs)
        t_cpu = time.thread_time()
        metas = [answered[s][0] for s in range(len(specs))]
        errors = [m["error"] for m in metas if "error" in m]
        if errors:
            raise errors[0]
        entry.stage = "align"
        per_spec = [m["items"] for m in metas]
        alignment, align_s, refs = self._align(prepared, per_spec, answered.values())
        record, placeholders = self._record(entry.request_id, prepared, per_spec, alignment, align_s)
        self.cpu_s += time.thread_time() - t_cpu
        entry.stage = "ready_queue"
        await self._enqueue(ReadyRequest(entry.request_id, record, refs, placeholders))

    async def _collect(self, entry: _Entry, specs: list[Any]) -> dict[int, tuple[dict[str, Any], Any, int]]:
        """Dispatch rounds until every spec is answered: per spec its metadata, the ref of its call's
        feature list, and where its items start in that list. Items of a call whose worker died are
        counted against and dispatched again (``_count_deaths``)."""
        entry.stage = "dispatch"
        entry.refs, entry.calls = [], []
        crashes = CrashCounts(self.cfg.max_worker_deaths_per_item)
        answered: dict[int, tuple[dict[str, Any], Any, int]] = {}
        todo = list(range(len(specs)))
        while todo:
            rounds = await self._dispatch_round(entry, specs, todo, crashes)
            todo = []
            for spec_ids, feat_ref, answer in rounds:
                if answer is _WORKER_DIED:
                    todo.extend(self._count_deaths(entry, specs, spec_ids, crashes))
                    continue
                flat = 0  # the worker returns the features of all its specs' items as one flat list
                for s, meta in zip(spec_ids, answer):
                    answered[s] = (meta, feat_ref, flat)
                    flat += len(meta.get("items", ()))
            todo.sort()
        entry.calls = []
        return answered

    def _align(
        self, prepared: Prepared, per_spec: list[list[Any]], answered: Any
    ) -> tuple[Any, float, list[tuple[Any, int]]]:
        """The alignment, its time, and per aligned item (prompt order) where its features are:
        ``(ref to its call's feature list, position)``."""
        location: dict[int, tuple[Any, int]] = {}
        for meta, feat_ref, start in answered:
            for k, item in enumerate(meta["items"]):
                location[id(item)] = (feat_ref, start + k)
        t0 = time.perf_counter()
        alignment = self.pre.align_request(prepared, per_spec)
        align_s = time.perf_counter() - t0
        return alignment, align_s, [location[id(item.meta)] for item in alignment.items]

    def _record(
        self, rid: str, prepared: Prepared, per_spec: list[list[Any]], alignment: Any, align_s: float
    ) -> tuple[dict[str, Any], int]:
        """The success record (stage timings summed over items) and the number of placeholder tokens;
        counts cache hits and items per node."""
        timings = dict(prepared.timings, align_s=align_s)
        for stage in ("fetch_s", "decode_s", "process_s"):
            timings[stage] = sum(m.timings.get(stage, 0.0) for ms in per_spec for m in ms)
        for ms in per_spec:
            for m in ms:
                self.items_per_node[m.node_id or "?"] += 1
                hit = bool(m.timings.get("cache_hit"))
                self.counters["cache_hits" if hit else "cache_misses"] += 1
                metrics.cache_hit(hit)
        record = success_record(rid, alignment, timings)
        # Counted from the ids, not from the items, so the GPU-side check is independent of alignment.
        placeholders = sum(1 for tok in alignment.input_ids if tok in self.media_tokens)
        return record, placeholders

    def _count_deaths(self, entry: _Entry, specs: list[Any], spec_ids: list[int], crashes: CrashCounts) -> list[int]:
        """A media worker died during a call: count it against each of the call's items; the
        items to dispatch again (alone, from now on). An item at its limit fails the request."""
        self.counters["media_calls_lost"] += 1
        for s in spec_ids:
            deaths = crashes.died(s)
            if crashes.exhausted(s):
                self.counters["crash_looping_items"] += 1
                logger.error("request %s: %s: a media worker died processing it %d times; not dispatched again",
                             entry.request_id, specs[s].label, deaths)
                raise InternalError(f"{specs[s].label}: the media worker died processing this item "
                                    f"({deaths} times); it is not dispatched again")
        self.counters["redispatched_items"] += len(spec_ids)
        logger.warning("request %s: media worker died during a call; dispatching %d item(s) again, one per call",
                       entry.request_id, len(spec_ids))
        return list(spec_ids)

    async def _dispatch_round(
        self, entry: _Entry, specs: list[Any], todo: list[int], crashes: CrashCounts
    ) -> list[tuple[list[int], Any, Any]]:
        """Send ``todo`` to media workers and await the metadata: ``(spec ids, feature ref, answer)``
        per call, the answer being the per-spec metadata or ``_WORKER_DIED``. Items suspected of
        killing a worker go alone, each to a worker held exclusively."""
        pending: dict[int, list[int]] = {}  # worker -> spec indices picked for it, not yet sent
        sent: list[tuple[list[int], Any, asyncio.Future[Any]]] = []
        reserved: list[int] = []  # workers held for a suspect, not yet sent to

        def send(worker: int, spec_ids: list[int], exclusive: bool = False) -> None:
            call_id = next(self.call_ids)
            self.open_calls[call_id] = _Call(worker, len(spec_ids), exclusive)
            meta_ref, feat_ref = self.workers[worker].process_batch.options(num_returns=2).remote(
                [specs[s] for s in spec_ids], call_id, self.name)
            entry.refs.append(feat_ref)
            entry.calls.append(meta_ref)
            sent.append((spec_ids, feat_ref, asyncio.ensure_future(self._await_metas(call_id, len(spec_ids), meta_ref))))

        def send_pending() -> None:
            # One call per (request, worker): Ray's per-call and per-object costs are paid here.
            for worker, spec_ids in pending.items():
                send(worker, spec_ids)
            pending.clear()

        try:
            for s in todo:
                if crashes.suspect(s):
                    send_pending()
                    worker = await self._reserve_idle_worker(reserved)
                    self.selector.started(worker)
                    reserved.remove(worker)
                    send(worker, [s], exclusive=True)
                    continue
                key = content_key(specs[s].source)
                worker = self.selector.pick(key)
                if worker is None:
                    send_pending()  # what is picked must run before a slot can free up
                    worker = await self._acquire_worker(key)
                else:
                    self.selector.started(worker)
                pending.setdefault(worker, []).append(s)
            send_pending()
            entry.stage = "media"
            answers = await asyncio.gather(*(call for _, _, call in sent))
        finally:
            for _, _, call in sent:
                call.cancel()  # no-op for finished ones; frees the worker slots of the others
            for worker in reserved:  # held for a suspect, given up (cancelled while waiting)
                self.selector.unreserve(worker)
            if pending:  # picked but never sent (cancelled while waiting for a slot)
                for worker, spec_ids in pending.items():
                    for _ in spec_ids:
                        self.selector.finished(worker)
            if pending or reserved:
                asyncio.get_running_loop().create_task(self._notify_slot())
        return [(spec_ids, feat_ref, answer) for (spec_ids, feat_ref, _), answer in zip(sent, answers)]

    async def _await_metas(self, call_id: int, n_specs: int, meta_ref: Any) -> Any:
        """The metadata of one media call, per spec, or ``_WORKER_DIED``. Media workers return bad
        media as a value, and Ray does not retry their calls (the coordinator re-dispatches after a
        death, counting it against the items), so an exception here is a dead worker or a cancelled call."""
        call = self.open_calls[call_id]
        try:
            return list(await meta_ref)
        except (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError):
            return _WORKER_DIED
        except ray.exceptions.RayError as exc:  # TaskCancelledError included
            self.counters["media_call_failed"] += 1
            return [{"error": InternalError(f"media worker {call.worker} failed ({type(exc).__name__})")}] * n_specs
        finally:
            del self.open_calls[call_id]
            for k in range(n_specs):
                self.selector.finished(call.worker, was_parked=k < call.parked, exclusive=call.exclusive and k == 0)
            # Not awaited here: this finally may run in a task being cancelled.
            asyncio.get_running_loop().create_task(self._notify_slot())

    async def fetch_parked(self, worker: int, call_id: int) -> None:
        """A media worker says one item of ``call_id`` waits on a slow fetch: stop counting it as decode work."""
        call = self.open_calls.get(call_id)
        if call is None or call.parked >= call.n_specs:
            return  # the call finished meanwhile
        call.parked += 1
        self.counters["slow_fetches"] += 1
        self.selector.park(call.worker)
        asyncio.get_running_loop().create_task(self._notify_slot())

    async def _notify_slot(self) -> None:
        async with self.slot_freed:
            self.slot_freed.notify_all()

    async def _reserve_idle_worker(self, reserved: list[int]) -> int:
        """Hold a worker exclusively and wait until nothing else runs on it (for a suspect item)."""
        async with self.slot_freed:
            while (worker := self.selector.reserve()) is None:
                await self.slot_freed.wait()
            reserved.append(worker)
            while not self.selector.idle(worker):
                await self.slot_freed.wait()
            return worker

    async def _acquire_worker(self, key: str | None) -> int:
        async with self.slot_freed:
            while (worker := self.selector.pick(key)) is None:
                await self.slot_freed.wait()
            self.selector.started(worker)
            return worker

    async def _enqueue(self, ready: ReadyRequest, front: bool = False) -> None:
        async with self.ready_changed:
            if not front:
                while not self.ready.has_room():
                    await self.ready_changed.wait()
            self.ready.push(ready, front)
            metrics.queue_depth("ready", len(self.ready))
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
        metrics.queue_depth("inflight", len(self.inflight))
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

    def _release(self, entry: _Entry) -> None:
        rid = entry.request_id
        if entry.task is not None and not entry.task.done() and entry.task is not asyncio.current_task():
            entry.task.cancel()
        for ref in entry.calls:  # media calls still queued or running: drop them (queued ones never run)
            try:
                ray.cancel(ref, force=False)
            except Exception:
                pass
        entry.calls, entry.refs, entry.prepared = [], [], None
        self.leases.drop(rid)
        if self.ready.remove(rid):
            metrics.queue_depth("ready", len(self.ready))
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
            metrics.queue_depth("ready", len(self.ready))
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
            record[FEATURE_REFS_KEY] = list(lease_.payload.feature_refs)
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
        entry.refs = []
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
            if not self.inflight:
                self.reaper_wake.clear()
                await self.reaper_wake.wait()
            await asyncio.sleep(min(0.5, self.cfg.lease_s / 4))
            try:
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
            "media_calls_open": sum(len(e.calls) for e in self.inflight.values()),
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

    def feature_locations(self) -> list[dict[str, Any]]:
        """Where the features of queued and leased requests live (node ids, size), for inspection."""
        refs = [ref for r in [*self.ready, *(lease.payload for lease in self.leases.leases.values())]
                for ref, _ in r.feature_refs]
        found = ray.experimental.get_object_locations(refs) if refs else {}
        return [{"node_ids": list(v.get("node_ids", [])), "object_size": v.get("object_size")} for v in found.values()]

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def ready(self) -> str:
        """Answers once the constructor has run; the pool's bounded start-up wait calls it."""
        return self.node_id()

    def incarnation_id(self) -> int:
        return self.incarnation
