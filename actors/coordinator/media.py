"""The coordinator's media calls: a request's items go out in calls shared with other requests
(``ray_mm.pool.CallPlanner``), their metadata comes back, deaths are counted and re-dispatched,
and the answers are aligned into a ready request. The feature lists the media workers hold for
this coordinator (``ray_mm.pool.HeldFeatures``) are dropped with later calls."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray

from actors import metrics
from ray_mm.errors import InternalError
from ray_mm.pool import Call, CrashCounts, InflightRequest, Ticket, build_ready, first_error, holders_by_worker

logger = logging.getLogger("ray_mm.actors.coordinator")


_WORKER_DIED = object()  # answer of a ticket whose media worker died


class MediaCalls:
    """Mixin of :class:`~actors.coordinator.Coordinator` (its state is made there)."""

    async def _dispatch_and_align(self, entry: InflightRequest) -> None:
        """Send the request's media, collect the metadata, align, build the record, queue it."""
        assert entry.prepared is not None
        answers = await self._collect(entry, entry.prepared.request.items())
        t_cpu = time.thread_time()
        error = first_error(meta for meta, _, _ in answers)
        if error is not None:
            raise error
        entry.stage = "align"
        outcome = build_ready(self.pre, entry.request_id, entry.prepared, answers, self.media_tokens)
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
        wanted = holders_by_worker(feature_refs)
        handles = dict(zip(self.worker_names, self.workers))
        taken = await asyncio.gather(*(handles[name].take.remote(keys) for name, keys in wanted.items()))
        found = {(name, key): ref for (name, keys), refs in zip(wanted.items(), taken) for key, ref in zip(keys, refs)}
        return [(found[holder], pos) for holder, pos in feature_refs]
