"""Media calls with no Ray in them: which waiting items go to which media worker, in which call.

Ray's per-call and per-object work lands on the coordinator, the one part of the pool that does
not scale out, so items of *several requests* share a call. Nothing waits to fill a call: an item
goes out at once when its worker has fewer than ``max_calls_per_worker`` calls in flight, so at a
light load every request gets its own calls (no added latency); under load the items that arrived
while a worker's calls ran go together in its next call, and calls grow with the load.

``CallPlanner`` keeps the waiting items (FIFO), the calls in flight and, through a
``WorkerSelector``, each worker's decode load (``max_inflight_per_worker`` items). An item
suspected of killing its worker goes alone to a worker held exclusively and idle
(``CrashCounts``). An item whose fetch is slow is *parked*: its call answers without it and a
follow-up call (not decode work) collects it later. The coordinator turns the planned calls into
Ray calls and tells the planner when each ends.
"""

from __future__ import annotations

import collections
import itertools
from dataclasses import dataclass, field
from typing import Any

from .scheduling import WorkerSelector, content_key


@dataclass(eq=False)
class Ticket:
    """One media entry (spec) of one request, waiting for a call or in one."""

    request_id: str
    spec_index: int
    spec: Any
    waiter: Any = None  # the coordinator's handle for the answer (an asyncio future)
    suspect: bool = False  # a worker died holding it: it goes alone, to an idle worker held exclusively
    live: bool = True  # False once its request finished: its answer is not wanted


@dataclass(eq=False)
class Call:
    """A media call: its worker and tickets (the worker's answer lists them in this order)."""

    call_id: int
    worker: int
    tickets: list[Ticket]
    exclusive: bool = False
    collects: int | None = None  # a follow-up: collects the parked items of this earlier call (not decode work)
    parked: list[int] = field(default_factory=list)  # positions of tickets parked (slow fetch)

    @property
    def follow_up(self) -> bool:
        return self.collects is not None


class CallPlanner:
    """Plans media calls over ``selector``'s workers; no Ray, no asyncio."""

    def __init__(self, selector: WorkerSelector, max_calls_per_worker: int = 2, max_items_per_call: int = 64) -> None:
        self.selector = selector
        self.max_calls = max_calls_per_worker
        self.max_items = max_items_per_call
        self.waiting: collections.deque[Ticket] = collections.deque()
        self.suspects: collections.deque[Ticket] = collections.deque()
        self.reserved: dict[int, Ticket] = {}  # worker held exclusively -> the suspect it waits to run
        self.calls: dict[int, Call] = {}
        self.calls_per_worker = [0] * len(selector.load)
        self._ids = itertools.count()
        self.sent_calls = 0
        self.sent_items = 0

    def add(self, ticket: Ticket) -> None:
        (self.suspects if ticket.suspect else self.waiting).append(ticket)

    def plan(self) -> list[Call]:
        """The calls to send now (already counted as in flight)."""
        calls = self._plan_suspects()
        batches: dict[int, list[Ticket]] = {}
        while self.waiting:
            ticket = self.waiting[0]
            if not ticket.live:
                self.waiting.popleft()
                continue
            allowed = [w for w in range(len(self.calls_per_worker))
                       if (w in batches and len(batches[w]) < self.max_items)
                       or (w not in batches and self.calls_per_worker[w] < self.max_calls)]
            worker = self.selector.pick(content_key(ticket.spec.source), allowed) if allowed else None
            if worker is None:
                break  # FIFO: what waits longest goes first once a worker has room
            self.waiting.popleft()
            self.selector.started(worker)
            batches.setdefault(worker, []).append(ticket)
        calls += [self._open(worker, tickets) for worker, tickets in batches.items()]
        return calls

    def _plan_suspects(self) -> list[Call]:
        calls = []
        while self.suspects:  # hold a worker for each waiting suspect while there is one to hold
            ticket = self.suspects[0]
            if not ticket.live:
                self.suspects.popleft()
                continue
            worker = self.selector.reserve()
            if worker is None:
                break
            self.suspects.popleft()
            self.reserved[worker] = ticket
        for worker, ticket in list(self.reserved.items()):
            if not ticket.live:
                del self.reserved[worker]
                self.selector.unreserve(worker)
            elif self.selector.idle(worker) and self.calls_per_worker[worker] == 0:
                del self.reserved[worker]
                self.selector.started(worker)
                calls.append(self._open(worker, [ticket], exclusive=True))
        return calls

    def _open(self, worker: int, tickets: list[Ticket], exclusive: bool = False, collects: int | None = None) -> Call:
        call = Call(next(self._ids), worker, tickets, exclusive, collects)
        self.calls[call.call_id] = call
        if collects is None:
            self.calls_per_worker[worker] += 1
            self.sent_calls += 1
            self.sent_items += len(tickets)
        return call

    def park(self, call_id: int, positions: list[int]) -> Call | None:
        """The call answered without the tickets at ``positions`` (their fetch is slow): they stop
        counting as decode work, and a follow-up call on the same worker collects them."""
        call = self.calls[call_id]
        if not positions:
            return None
        call.parked = list(positions)
        for _ in positions:
            self.selector.park(call.worker)
        return self._open(call.worker, [call.tickets[k] for k in positions], collects=call_id)

    def finished(self, call_id: int) -> Call:
        """The call ended (answered, failed or its worker died): its decode load is freed."""
        call = self.calls.pop(call_id)
        parked = set(call.parked)
        for k in range(len(call.tickets)):
            if k not in parked:  # parked ones are freed by their follow-up call
                self.selector.finished(call.worker, was_parked=call.follow_up, exclusive=call.exclusive and k == 0)
        if not call.follow_up:
            self.calls_per_worker[call.worker] -= 1
        return call

    def drop_request(self, request_id: str) -> list[int]:
        """Forget ``request_id``'s tickets; the ids of calls in flight that no live ticket needs now."""
        dead = []
        for call in self.calls.values():
            hit = False
            for ticket in call.tickets:
                if ticket.request_id == request_id:
                    ticket.live, hit = False, True
            if hit and not any(t.live for t in call.tickets):
                dead.append(call.call_id)
        for queue in (self.waiting, self.suspects):
            for ticket in queue:
                if ticket.request_id == request_id:
                    ticket.live = False
        for ticket in self.reserved.values():
            if ticket.request_id == request_id:
                ticket.live = False
        return dead

    def stats(self) -> dict[str, Any]:
        return {"media_calls": self.sent_calls, "media_call_items": self.sent_items,
                "items_per_call": round(self.sent_items / self.sent_calls, 3) if self.sent_calls else None,
                "media_calls_open": len(self.calls), "items_waiting": len(self.waiting) + len(self.suspects)}


class HeldFeatures:
    """Feature lists that media workers hold for this coordinator, one per answered call, by
    ``(worker, key)``: how many unfinished requests still use each, and the keys to drop.

    A call's list can serve several requests (a shared call); it is dropped when the last of
    them finishes. Drops wait per worker and ride along with the next call to that worker (or
    are flushed when the pool goes quiet), so dropping costs no call of its own under load.
    """

    def __init__(self, n_workers: int) -> None:
        self.users: dict[tuple[int, Any], int] = {}
        self.drops: list[list[Any]] = [[] for _ in range(n_workers)]

    def hold(self, worker: int, key: Any, users: int) -> None:
        """``key`` on ``worker`` now holds a list used by ``users`` requests (dropped at once if none)."""
        if users > 0:
            self.users[(worker, key)] = users
        else:
            self.drops[worker].append(key)

    def release(self, worker: int, key: Any) -> None:
        """One request using ``key`` finished."""
        left = self.users.get((worker, key), 0) - 1
        if left > 0:
            self.users[(worker, key)] = left
        elif self.users.pop((worker, key), None) is not None:
            self.drops[worker].append(key)

    def take_drops(self, worker: int) -> list[Any]:
        out, self.drops[worker] = self.drops[worker], []
        return out

    def __len__(self) -> int:
        return len(self.users)
