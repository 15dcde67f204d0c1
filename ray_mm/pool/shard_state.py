"""A coordinator shard's bookkeeping, with no Ray and no asyncio: every decision about a request.

Admitted or refused; which media answers it uses and which feature lists the workers keep for
it; queued, leased, renewed, acknowledged, handed back or requeued; timed out; finished exactly
once with everything it held freed. Each method takes the time and returns plain values saying
what the actor must do (cancel these calls, wake the pulls, hand a slot on). The coordinator
actor (``actors/coordinator``) owns only the waits (asyncio conditions and futures), the Ray
calls and the metrics, so the pool's policy is tested without a cluster
(``tests/unit/test_shard_state.py``).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InternalError, PoolSaturatedError, RequestError, RequestTimeoutError
from ..logs import RateLimitedLog
from .calls import Call, CallPlanner, HeldFeatures, Ticket
from .config import PoolConfig
from .queues import Deadlines, FeatureSlots, ReadyQueue
from .requests import Answer, InflightRequest, ReadyOutcome, ReadyRequest
from .scheduling import CrashCounts, LeaseTable, WorkerSelector

# The coordinator's logger: refusals are logged where they were before this bookkeeping left the actor.
logger = logging.getLogger("ray_mm.actors.coordinator")


@dataclass
class Freed:
    """What finishing a request freed that the actor acts on."""

    calls_to_cancel: list[int]  # media calls in flight that only it still wanted
    left_ready_queue: bool  # it was queued: waiting pulls and enqueuers should look again
    slot: bool  # it held a feature slot: hand it to the next waiter
    task: Any = None  # the actor's task that ran the request (cancelled unless it is the caller)


@dataclass
class Settled:
    """One media call's end: each ticket's answer (``None``: its worker died, send it again) and
    the follow-up call to send for parked (slow-fetch) tickets, if anyone still wants them."""

    answers: list[tuple[Ticket, Answer | None]]
    follow_up: Call | None
    drop_parked: bool  # parked tickets nobody wants any more: tell the worker to drop them


class ShardState:
    """A coordinator shard's requests, queues, leases and media calls (see the module docstring)."""

    def __init__(self, cfg: PoolConfig, worker_names: list[str], incarnation: int) -> None:
        self.cfg = cfg
        self.worker_names = list(worker_names)
        self.incarnation = incarnation
        n = len(worker_names)
        self.selector = WorkerSelector(n, cfg.max_inflight_per_worker, max_parked_per_worker=cfg.max_fetches_per_worker)
        self.planner = CallPlanner(self.selector, cfg.max_calls_per_worker, cfg.max_items_per_call)
        self.held = HeldFeatures(n)  # feature lists the media workers hold for this shard
        self.ready: ReadyQueue[ReadyRequest] = ReadyQueue(cfg.ready_queue_size, key=lambda r: r.request_id)
        self.leases: LeaseTable[ReadyRequest] = LeaseTable(cfg.lease_s)
        self.slots: FeatureSlots[Any] = FeatureSlots(cfg.feature_request_limit())  # the object-store bound
        self.deadlines = Deadlines()
        self.inflight: dict[str, InflightRequest] = {}
        self.results: dict[str, dict[str, Any]] = {}  # finished records the driver has not taken yet
        self.last_contact: dict[str, float] = {}  # GPU worker -> last pull or renewal (monotonic), for health
        self.counters: collections.Counter[str] = collections.Counter()
        self.items_per_node: collections.Counter[str] = collections.Counter()
        self.refusals_log = RateLimitedLog(logger, logging.WARNING, every_s=10.0)

    # -- admission and the one record ------------------------------------------------
    def known(self, request_id: str) -> bool:
        """In flight here, or finished with its record not taken yet."""
        return request_id in self.inflight or request_id in self.results

    def admit(self, request_id: str, now: float, timeout_s: float | None) -> InflightRequest:
        """Admit ``request_id`` with its deadline, or refuse it: 409 for an id already here,
        ``PoolSaturatedError`` (503) past ``max_inflight_requests``."""
        if self.known(request_id):
            raise RequestError(f"request {request_id}: a request with this id is already in the pool", status=409)
        limit = self.cfg.max_inflight_requests
        if len(self.inflight) >= limit:
            self.counters["saturated"] += 1
            self.refusals_log.log("pool saturated: %d requests in flight (limit %d); refusing request %s",
                                  len(self.inflight), limit, request_id)
            raise PoolSaturatedError(f"pool saturated: {len(self.inflight)} requests in flight (limit {limit})")
        entry = InflightRequest(request_id, now, now + (self.cfg.request_timeout_s if timeout_s is None else max(0.0, timeout_s)))
        self.inflight[request_id] = entry
        self.deadlines.add(request_id, entry.deadline)
        return entry

    def finish(self, request_id: str, record: dict[str, Any], now: float) -> Freed | None:
        """End ``request_id`` with ``record`` (counted, timed) and free what it holds; None (counted
        as a late finish) if it already ended."""
        entry = self.inflight.pop(request_id, None)
        if entry is None:
            self.counters["late_finish"] += 1
            return None
        self.deadlines.discard(request_id)
        freed = self.release(entry)
        if record.get("ok"):
            record.setdefault("timings", {})["pool_total_s"] = round(now - entry.submitted, 6)
            self.counters["ok"] += 1
        else:
            self.counters[f"error:{record['error']['type']}"] += 1
        return freed

    def release(self, entry: InflightRequest) -> Freed:
        """Free the request's media calls, held feature lists, lease, queue place and slot."""
        rid = entry.request_id
        calls = self.planner.drop_request(rid)
        self.release_held(entry)
        entry.prepared = None
        self.leases.drop(rid)
        slot, entry.has_slot = entry.has_slot, False
        return Freed(calls, self.ready.remove(rid), slot, entry.task)

    def next_slot_holder(self, gave_up: Callable[[Any], bool]) -> Any:
        """Free a feature slot: the oldest waiter that has not ``gave_up`` gets it (returned), or None."""
        waiter = self.slots.release()
        while waiter is not None and gave_up(waiter):  # gave up meanwhile: pass the slot on
            waiter = self.slots.release()
        return waiter

    def release_held(self, entry: InflightRequest) -> None:
        for worker, key in entry.refs:
            self.held.release(worker, key)
        entry.refs = []

    def timeout_record(self, entry: InflightRequest) -> dict[str, Any]:
        rid = entry.request_id
        self.counters["timed_out"] += 1
        error = RequestTimeoutError(f"request {rid}: not finished within its deadline of "
                                    f"{entry.deadline - entry.submitted:g} s (stage: {entry.stage})")
        return {"request_id": rid, "ok": False, "error": error.to_dict()}

    # -- media calls ---------------------------------------------------------------------
    def key_of(self, call: Call) -> tuple[int, int]:
        """The key a media worker keeps a call's feature list under: unique across this shard's restarts."""
        return (self.incarnation, call.call_id)

    def settle(self, call: Call, answer: list[dict[str, Any]] | None) -> Settled:
        """``call`` ended with ``answer`` (one metadata dict per ticket; None: its worker died).
        Each live request that got items keeps the call's feature list until it finishes."""
        parked = [k for k, meta in enumerate(answer or ()) if meta.get("parked")]
        follow_up = self.planner.park(call.call_id, parked)
        self.planner.finished(call.call_id)
        drop_parked = False
        if follow_up is not None:
            self.counters["slow_fetches"] += len(parked)
            if not any(t.live for t in follow_up.tickets):  # nobody waits for them any more
                self.planner.finished(follow_up.call_id)
                follow_up, drop_parked = None, True
        key = self.key_of(call)
        holder = (self.worker_names[call.worker], key)  # where a GPU worker takes these features from
        flat, users = 0, 0  # the worker holds the answered tickets' items as one flat list
        out: list[tuple[Ticket, Answer | None]] = []
        for k, ticket in enumerate(call.tickets):
            if answer is None:
                out.append((ticket, None))
                continue
            if k in parked:
                continue
            n_items = len(answer[k].get("items", ()))
            out.append((ticket, (answer[k], holder, flat)))
            flat += n_items
            entry = self.inflight.get(ticket.request_id) if ticket.live and n_items else None
            if entry is not None and (call.worker, key) not in entry.refs:
                entry.refs.append((call.worker, key))  # released when the request finishes
                users += 1
        if flat:
            self.held.hold(call.worker, key, users)
        return Settled(out, follow_up, drop_parked)

    def worker_died(self, request_id: str, labels: list[str], spec_ids: list[int], crashes: CrashCounts) -> None:
        """A media worker died holding the specs ``spec_ids`` of ``request_id`` (``labels``: every spec's):
        count it against each; raise ``InternalError`` (the request fails) for one at its limit, else
        they are sent again, each alone (``CrashCounts.suspect``)."""
        for s in spec_ids:
            deaths = crashes.died(s)
            if crashes.exhausted(s):
                self.counters["crash_looping_items"] += 1
                logger.error("request %s: %s: a media worker died processing it %d times; not dispatched again",
                             request_id, labels[s], deaths)
                raise InternalError(f"{labels[s]}: the media worker died processing this item "
                                    f"({deaths} times); it is not dispatched again")
        self.counters["redispatched_items"] += len(spec_ids)
        logger.warning("request %s: a media worker died holding %d of its item(s); dispatching them again, one per call",
                       request_id, len(spec_ids))

    def aligned(self, outcome: ReadyOutcome) -> None:
        """Count what aligning a request found (cache lookups, items per node)."""
        self.counters["cache_hits"] += outcome.cache_hits
        self.counters["cache_misses"] += outcome.cache_misses
        self.items_per_node.update(outcome.items_per_node)

    # -- the GPU worker side -------------------------------------------------------------
    def lease_out(self, holder: str, max_n: int, now: float) -> list[ReadyRequest]:
        """Up to ``max_n`` queued requests, leased to ``holder`` (finished ones dropped on the way)."""
        batch = self.ready.pop_batch(max_n, self.inflight.__contains__)
        for req in batch:
            req.pulls += 1
            req.lease = self.leases.grant(req.request_id, holder, req, now)
            self.inflight[req.request_id].stage = "gpu"
        return batch

    def acked(self, holder: str, request_id: str, consumer: dict[str, Any],
              lease: int | None) -> tuple[ReadyRequest, dict[str, Any]] | None:
        """The finished request and its record, or None (counted) for an ack that does not name
        the lease it holds (taken back meanwhile, or no token)."""
        held = self.leases.ack(request_id, holder, lease)
        if held is None:
            self.counters["stale_ack" if lease is not None else "ack_without_lease"] += 1
            return None
        if consumer.get("error"):
            return held.payload, {"request_id": request_id, "ok": False, "error": consumer["error"]}
        return held.payload, {**held.payload.record, "consumer": consumer}

    def take_back(self, holder: str) -> list[ReadyRequest]:
        """``holder`` restarted and holds nothing: its leases end; those still in flight go back to
        the front of the queue (returned, oldest grant first)."""
        back = []
        for rid, lease in list(self.leases.leases.items()):  # in grant order
            if lease.holder == holder:
                self.leases.drop(rid)
                if rid in self.inflight:
                    self.counters["leases_released"] += 1
                    self.inflight[rid].stage = "ready_queue"
                    back.append(lease.payload)
        return back

    def renew(self, holder: str, leases: list[tuple[str, int]], now: float) -> int:
        self.last_contact[holder] = now
        renewed = sum(1 for request_id, lease in leases if self.leases.renew(request_id, holder, lease, now))
        self.counters["lease_renewals"] += renewed
        return renewed

    def nacked(self, holder: str, request_id: str, lease: int, reason: str) -> InflightRequest | None:
        """A GPU worker could not read the features: the request to dispatch again, or None."""
        held = self.leases.ack(request_id, holder, lease)
        entry = self.inflight.get(request_id)
        if held is None or entry is None or entry.prepared is None:
            return None
        self.counters["redispatched"] += 1
        self.counters[f"nack:{reason}"] += 1
        return entry

    def due(self, now: float, running: Callable[[InflightRequest], bool]) -> tuple[list[ReadyRequest], list[InflightRequest]]:
        """Expired leases of requests still in flight (to requeue at the front), and requests past
        their deadline to time out here (one whose task is still ``running`` times itself out)."""
        requeue = []
        for rid, req in self.leases.expired(now):
            if rid in self.inflight:
                self.counters["lease_expired"] += 1
                self.inflight[rid].stage = "ready_queue"
                requeue.append(req)
        late = []
        for rid in self.deadlines.pop_due(now):
            entry = self.inflight.get(rid)
            if entry is None:
                continue
            if running(entry):
                self.deadlines.add(rid, entry.deadline)  # its own wait_for fires at the same deadline
            else:
                late.append(entry)
        return requeue, late

    def health(self, now: float, media_alive: int, waiters: int) -> dict[str, Any]:
        """The pool's liveness as this shard sees it: ``media_alive`` media workers answered a ping; a
        GPU worker counts as alive if it pulled or renewed within ``lease_s / 3 + 5`` s (it pulls at
        least every second when idle and renews every ``lease_s / 3`` while consuming)."""
        window = self.cfg.lease_s / 3 + 5.0
        return {
            "incarnation": self.incarnation,
            "media_workers": len(self.worker_names),
            "media_workers_alive": media_alive,
            "gpu_workers": self.cfg.gpu_workers,
            "gpu_workers_alive": sum(1 for t in self.last_contact.values() if now - t <= window),
            "inflight": len(self.inflight),
            "max_inflight_requests": self.cfg.max_inflight_requests,
            "waiters": waiters,
        }

    def stats(self) -> dict[str, Any]:
        return {
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
        }
