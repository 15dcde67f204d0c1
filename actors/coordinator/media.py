"""The coordinator's media calls: a request's items go out in calls shared with other requests
(``ray_mm.pool.CallPlanner``), their metadata comes back (``ShardState.settle``), deaths are
counted and re-dispatched, and the answers are aligned into a ready request."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import ray

from actors import metrics
from ray_mm.errors import InternalError
from ray_mm.pool import Call, CrashCounts, InflightRequest, Ticket, build_ready, first_error, holders_by_worker


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
        self.state.aligned(outcome)
        metrics.cache_lookups(outcome.cache_hits, outcome.cache_misses)
        self.cpu_s += time.thread_time() - t_cpu
        entry.stage = "ready_queue"
        await self._enqueue(outcome.ready)

    async def _collect(self, entry: InflightRequest, specs: list[Any]) -> list[tuple[dict[str, Any], Any, int]]:
        """Every spec's answer, in spec order: ``(metadata, holder of its call's feature list, where its
        items start in it)``. Specs whose worker died are counted against (``CrashCounts``) and sent
        again; from then on each goes alone, to an idle worker held exclusively."""
        entry.stage = "media"
        self.state.release_held(entry)  # sent again (nack): what the first dispatch left is not needed
        crashes = CrashCounts(self.cfg.max_worker_deaths_per_item)
        answered: dict[int, tuple[dict[str, Any], Any, int]] = {}
        todo = list(range(len(specs)))
        loop = asyncio.get_running_loop()
        while todo:
            tickets = [Ticket(entry.request_id, s, specs[s], loop.create_future(), crashes.suspect(s)) for s in todo]
            for ticket in tickets:
                self.state.planner.add(ticket)
            self._pump()
            answers = await asyncio.gather(*(ticket.waiter for ticket in tickets))
            answered.update((t.spec_index, a) for t, a in zip(tickets, answers) if a is not None)
            todo = [t.spec_index for t, a in zip(tickets, answers) if a is None]
            if todo:  # their worker died: counted against each, sent again alone (or the request fails)
                self.state.worker_died(entry.request_id, [spec.label for spec in specs], todo, crashes)
        return [answered[s] for s in range(len(specs))]

    def _pump(self) -> None:
        """Plan and send calls once the event loop's current round is done: requests admitted together
        (``submit_many``, concurrent callers) add their items first, then share calls."""
        if not self.pump_scheduled:
            self.pump_scheduled = True
            asyncio.get_running_loop().call_soon(self._pump_now)

    def _pump_now(self) -> None:
        self.pump_scheduled = False
        for call in self.state.planner.plan():
            self._send(call)

    def _send(self, call: Call) -> None:
        worker, key = self.workers[call.worker], self.state.key_of(call)
        if call.collects is not None:
            meta_ref = worker.collect_parked.remote(call.collects, key)
        else:
            meta_ref = worker.process_batch.remote([t.spec for t in call.tickets], call.call_id, key,
                                                   self.state.held.take_drops(call.worker))
        self.call_refs[call.call_id] = meta_ref
        asyncio.get_running_loop().create_task(self._await_call(call, meta_ref))

    async def _await_call(self, call: Call, meta_ref: Any) -> None:
        """Await one media call and hand each ticket its answer. Media workers return bad media as a
        value and Ray does not retry their calls, so an exception here is a dead worker (its tickets
        are sent again by their requests) or a failed or cancelled call."""
        answer: list[dict[str, Any]] | None
        try:
            answer = list(await meta_ref)
        except (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError):
            self.state.counters["media_calls_lost"] += 1
            answer = None
        except ray.exceptions.RayError as exc:  # TaskCancelledError included
            self.state.counters["media_call_failed"] += 1
            answer = [{"error": InternalError(f"media worker {call.worker} failed ({type(exc).__name__})")}] * len(call.tickets)
        finally:
            self.call_refs.pop(call.call_id, None)
        settled = self.state.settle(call, answer)
        if settled.follow_up is not None:
            self._send(settled.follow_up)
        elif settled.drop_parked:
            self.workers[call.worker].drop_parked.remote(call.call_id)
        for ticket, result in settled.answers:
            if not ticket.waiter.done():
                ticket.waiter.set_result(result)
        self._pump()

    def _flush_drops(self) -> None:
        """Send the drops that no call carried (the pool went quiet, or a worker got no new call)."""
        for worker, handle in enumerate(self.workers):
            drops = self.state.held.take_drops(worker)
            if drops:
                handle.drop.remote(drops)

    async def _borrow(self, feature_refs: list[tuple[tuple[str, Any], int]]) -> list[tuple[Any, int]]:
        """``(ref, position)`` per item, the refs borrowed from the media workers that hold them (for a
        caller that reads the features after the request is finished here)."""
        wanted = holders_by_worker(feature_refs)
        handles = dict(zip(self.state.worker_names, self.workers))
        taken = await asyncio.gather(*(handles[name].take.remote(keys) for name, keys in wanted.items()))
        found = {(name, key): ref for (name, keys), refs in zip(wanted.items(), taken) for key, ref in zip(keys, refs)}
        return [(found[holder], pos) for holder, pos in feature_refs]
