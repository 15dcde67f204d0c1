"""Pool bookkeeping with no Ray calls: worker choice, leases, crash counts per item.

The coordinator actor drives these; keeping them pure lets most of the
pool's policy be tested without a cluster (as Ray Data does for its actor pool).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


class WorkerSelector:
    """Least-loaded choice among media workers, with affinity by content key.

    A key's preferred worker is found by rendezvous hashing, so repeats of the
    same media land on the same worker (warm cache) while that worker is not
    busier than the least-loaded one by more than ``affinity_slack``.

    ``load`` counts decode work: an item whose fetch is slow is *parked* (the
    worker says so) and then counts against ``max_parked_per_worker`` instead, so
    slow servers do not take a worker's decode slots. A worker can also be held
    *exclusively* (nothing else sent to it) for an item suspected of crashing its
    worker, so that a second death is blamed on that item alone.
    """

    def __init__(self, n_workers: int, max_inflight_per_worker: int, affinity_slack: int = 1,
                 max_parked_per_worker: int = 16) -> None:
        if n_workers < 1:
            raise ValueError("at least one worker is needed")
        self.capacity = max_inflight_per_worker
        self.parked_capacity = max_parked_per_worker
        self.slack = affinity_slack
        self.load = [0] * n_workers
        self.parked = [0] * n_workers
        self.assigned = [0] * n_workers
        self.exclusive = [False] * n_workers

    def preferred(self, key: str) -> int:
        scores = [hashlib.blake2b(f"{key}|{w}".encode(), digest_size=8).digest() for w in range(len(self.load))]
        return max(range(len(self.load)), key=scores.__getitem__)

    def _open(self, w: int) -> bool:
        return not self.exclusive[w] and self.load[w] < self.capacity and self.parked[w] < self.parked_capacity

    def pick(self, key: str | None, allowed: Iterable[int] | None = None) -> int | None:
        """A worker with room (among ``allowed``, default all), or None when every one is at capacity."""
        candidates = range(len(self.load)) if allowed is None else allowed
        open_ = [w for w in candidates if self._open(w)]
        if not open_:
            return None
        least = min(open_, key=lambda w: (self.load[w], self.assigned[w]))
        if key is not None:
            pref = self.preferred(key)
            if pref in open_ and self.load[pref] <= self.load[least] + self.slack:
                return pref
        return least

    def reserve(self) -> int | None:
        """Hold the least-loaded worker exclusively (nothing new is sent to it); None if all are held.
        The holder waits until :meth:`idle`, then sends its one item, then calls
        ``finished(..., exclusive=True)`` (or :meth:`unreserve` if it gives up)."""
        free = [w for w in range(len(self.load)) if not self.exclusive[w]]
        if not free:
            return None
        worker = min(free, key=lambda w: (self.load[w] + self.parked[w], self.assigned[w]))
        self.exclusive[worker] = True
        return worker

    def idle(self, worker: int) -> bool:
        return self.load[worker] == 0 and self.parked[worker] == 0

    def unreserve(self, worker: int) -> None:
        self.exclusive[worker] = False

    def started(self, worker: int) -> None:
        self.load[worker] += 1
        self.assigned[worker] += 1

    def park(self, worker: int) -> None:
        """One of ``worker``'s items is waiting on a slow fetch: it stops counting as decode work."""
        if self.load[worker] > 0:
            self.load[worker] -= 1
            self.parked[worker] += 1

    def finished(self, worker: int, was_parked: bool = False, exclusive: bool = False) -> None:
        """One item done on ``worker`` (counted among the parked ones if it was parked)."""
        if was_parked:
            self.parked[worker] = max(0, self.parked[worker] - 1)
        else:
            self.load[worker] = max(0, self.load[worker] - 1)
        if exclusive:
            self.exclusive[worker] = False


class CrashCounts:
    """How many media workers died while holding each item, and which items must go alone.

    The coordinator cannot see which item of a call killed its worker, so every item
    of a call that died gets a count. From then on it is dispatched alone, to an idle
    worker held exclusively, so a second death names it unambiguously. An item that
    reaches ``limit`` deaths fails its request and is not dispatched again.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counts: dict[int, int] = {}

    def died(self, spec_index: int) -> int:
        self.counts[spec_index] = self.counts.get(spec_index, 0) + 1
        return self.counts[spec_index]

    def suspect(self, spec_index: int) -> bool:
        return spec_index in self.counts

    def exhausted(self, spec_index: int) -> bool:
        return self.counts.get(spec_index, 0) >= self.limit


@dataclass
class Lease(Generic[T]):
    holder: str
    deadline: float
    payload: T
    token: int = 0


@dataclass
class LeaseTable(Generic[T]):
    """Requests pulled by GPU workers and not yet acknowledged.

    Every grant gets a fresh ``token``. An ack, nack or renewal must name both the
    holder and the token, so a late answer for a lease that was taken back (and maybe
    granted again, even to a restarted worker of the same name) is ignored. A holder
    renews what it holds while it consumes, so only a holder that stopped renewing
    (dead, hung, partitioned) loses its leases.
    """

    lease_s: float
    leases: dict[str, Lease[T]] = field(default_factory=dict)
    next_token: int = 1

    def grant(self, request_id: str, holder: str, payload: T, now: float) -> int:
        token = self.next_token
        self.next_token += 1
        self.leases[request_id] = Lease(holder, now + self.lease_s, payload, token)
        return token

    def _held(self, request_id: str, holder: str, token: int | None) -> Lease[T] | None:
        lease = self.leases.get(request_id)
        if lease is None or lease.holder != holder or token is None or lease.token != token:
            return None
        return lease

    def ack(self, request_id: str, holder: str, token: int | None) -> Lease[T] | None:
        """Release a lease; an ack without the lease's token, or from a holder whose lease was
        taken back, is refused (None)."""
        if self._held(request_id, holder, token) is None:
            return None
        return self.leases.pop(request_id)

    def renew(self, request_id: str, holder: str, token: int | None, now: float) -> bool:
        """Push the lease's deadline to ``now + lease_s``; False if it is not held under that token."""
        lease = self._held(request_id, holder, token)
        if lease is None:
            return False
        lease.deadline = now + self.lease_s
        return True

    def expired(self, now: float) -> list[tuple[str, T]]:
        """Remove and return leases past their deadline, oldest first."""
        gone = sorted((lease.deadline, rid) for rid, lease in self.leases.items() if lease.deadline <= now)
        return [(rid, self.leases.pop(rid).payload) for _, rid in gone]

    def drop(self, request_id: str) -> Lease[T] | None:
        return self.leases.pop(request_id, None)

    def holders(self) -> dict[str, str]:
        """request_id -> holder, for inspection."""
        return {rid: lease.holder for rid, lease in self.leases.items()}

    def __contains__(self, request_id: object) -> bool:
        return request_id in self.leases

    def __len__(self) -> int:
        return len(self.leases)


def content_key(source: object) -> str | None:
    """Affinity key of a media source: the URL or path text, or a digest of inline bytes."""
    if isinstance(source, str):
        return source if len(source) <= 2048 else hashlib.sha1(source.encode()).hexdigest()
    if isinstance(source, (bytes, bytearray)):
        return hashlib.sha1(bytes(source)).hexdigest()
    return None
