"""The coordinator's waiting lines, without asyncio or Ray: the bounded ready queue, the feature
slots (the object-store bound) and the requests' deadlines.

The coordinator actor owns the waiting (asyncio conditions and futures); these classes own
the order and the counts, so each can be tested on its own.
"""

from __future__ import annotations

import collections
import heapq
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")
W = TypeVar("W")


class ReadyQueue(Generic[T]):
    """Aligned requests waiting for a GPU worker, oldest first, at most ``limit`` of them.

    A request handed back (lease expired or released, holder restarted) goes to the *front*
    and may exceed the limit: it was admitted to the queue once already and must not wait
    behind newer work, nor block the path that hands it back.
    """

    def __init__(self, limit: int, key: Callable[[T], str]) -> None:
        self.limit = limit
        self.key = key
        self.items: collections.deque[T] = collections.deque()
        self.max_seen = 0

    def has_room(self) -> bool:
        return len(self.items) < self.limit

    def push(self, item: T, front: bool = False) -> None:
        """Add ``item`` at the back (the caller checked :meth:`has_room`) or, handed back, at the front."""
        (self.items.appendleft if front else self.items.append)(item)
        self.max_seen = max(self.max_seen, len(self.items))

    def pop_batch(self, max_n: int, alive: Callable[[str], bool]) -> list[T]:
        """Up to ``max_n`` requests from the front; those no longer ``alive`` (finished while
        queued: timed out, cancelled) are dropped on the way."""
        batch: list[T] = []
        while self.items and len(batch) < max_n:
            item = self.items.popleft()
            if alive(self.key(item)):
                batch.append(item)
        return batch

    def remove(self, request_id: str) -> bool:
        """Drop ``request_id`` wherever it waits; whether it was there."""
        if not any(self.key(r) == request_id for r in self.items):
            return False
        self.items = collections.deque(r for r in self.items if self.key(r) != request_id)
        return True

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)


class FeatureSlots(Generic[W]):
    """At most ``limit`` requests may hold feature objects at once; the rest wait in FIFO order.

    ``acquire(waiter)`` takes a slot now (True) or queues ``waiter`` (False). ``release()``
    hands the freed slot straight to the oldest waiter and returns it (the caller wakes it), so
    a newcomer cannot overtake a waiter. A waiter that gives up leaves with :meth:`cancel`; one
    that was handed a slot it no longer wants gives it back with :meth:`release`.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.max_used = 0
        self.waiting: collections.deque[W] = collections.deque()

    def _take(self) -> None:
        self.used += 1
        self.max_used = max(self.max_used, self.used)

    def acquire(self, waiter: W) -> bool:
        if self.used < self.limit and not self.waiting:
            self._take()
            return True
        self.waiting.append(waiter)
        return False

    def release(self) -> W | None:
        """Free one slot; the waiter it was handed to, or None."""
        self.used -= 1
        if self.used < 0:
            raise RuntimeError("feature slot released more often than taken")
        if self.waiting and self.used < self.limit:
            self._take()
            return self.waiting.popleft()
        return None

    def cancel(self, waiter: W) -> bool:
        """Stop waiting; False if ``waiter`` is not waiting (it was handed a slot, or never waited)."""
        try:
            self.waiting.remove(waiter)
        except ValueError:
            return False
        return True


class Deadlines:
    """Requests' deadlines (monotonic seconds), earliest first.

    ``pop_due(now)`` removes and returns the requests whose deadline has passed; a caller
    that cannot finish one yet puts it back with :meth:`add`. Removal is lazy (a heap plus the
    current deadline per request), so ``discard`` is O(1).
    """

    def __init__(self) -> None:
        self.deadline: dict[str, float] = {}
        self.heap: list[tuple[float, str]] = []

    def add(self, request_id: str, deadline: float) -> None:
        self.deadline[request_id] = deadline
        heapq.heappush(self.heap, (deadline, request_id))

    def discard(self, request_id: str) -> None:
        self.deadline.pop(request_id, None)

    def _prune(self) -> None:
        while self.heap and self.deadline.get(self.heap[0][1]) != self.heap[0][0]:
            heapq.heappop(self.heap)  # discarded, or superseded by a later add

    def next_deadline(self) -> float | None:
        self._prune()
        return self.heap[0][0] if self.heap else None

    def pop_due(self, now: float) -> list[str]:
        out = []
        while (first := self.next_deadline()) is not None and first <= now:
            _, request_id = heapq.heappop(self.heap)
            del self.deadline[request_id]
            out.append(request_id)
        return out

    def __len__(self) -> int:
        return len(self.deadline)

    def __contains__(self, request_id: Any) -> bool:
        return request_id in self.deadline
