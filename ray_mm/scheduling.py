"""Pool bookkeeping with no Ray calls: worker choice, admission, leases.

The coordinator actor drives these; keeping them pure lets most of the
pool's policy be tested without a cluster (as Ray Data does for its actor pool).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


class WorkerSelector:
    """Least-loaded choice among media workers, with affinity by content key.

    A key's preferred worker is found by rendezvous hashing, so repeats of the
    same media land on the same worker (warm cache) while that worker is not
    busier than the least-loaded one by more than ``affinity_slack``.
    """

    def __init__(self, n_workers: int, max_inflight_per_worker: int, affinity_slack: int = 1) -> None:
        if n_workers < 1:
            raise ValueError("at least one worker is needed")
        self.capacity = max_inflight_per_worker
        self.slack = affinity_slack
        self.load = [0] * n_workers
        self.assigned = [0] * n_workers

    def preferred(self, key: str) -> int:
        scores = [hashlib.blake2b(f"{key}|{w}".encode(), digest_size=8).digest() for w in range(len(self.load))]
        return max(range(len(self.load)), key=scores.__getitem__)

    def pick(self, key: str | None) -> int | None:
        """A worker with room, or None when every worker is at capacity."""
        least = min(range(len(self.load)), key=lambda w: (self.load[w], self.assigned[w]))
        if self.load[least] >= self.capacity:
            return None
        if key is not None:
            pref = self.preferred(key)
            if self.load[pref] < self.capacity and self.load[pref] <= self.load[least] + self.slack:
                return pref
        return least

    def started(self, worker: int) -> None:
        self.load[worker] += 1
        self.assigned[worker] += 1

    def finished(self, worker: int) -> None:
        self.load[worker] = max(0, self.load[worker] - 1)


@dataclass
class Lease(Generic[T]):
    holder: str
    deadline: float
    payload: T
    token: int = 0


@dataclass
class LeaseTable(Generic[T]):
    """Requests pulled by GPU workers and not yet acknowledged.

    Every grant gets a fresh ``token``. An ack or nack must name both the holder and
    the token, so a late answer for a lease that was taken back (and maybe granted
    again, even to a restarted worker of the same name) is ignored.
    """

    lease_s: float
    leases: dict[str, Lease[T]] = field(default_factory=dict)
    next_token: int = 1

    def grant(self, request_id: str, holder: str, payload: T, now: float) -> int:
        token = self.next_token
        self.next_token += 1
        self.leases[request_id] = Lease(holder, now + self.lease_s, payload, token)
        return token

    def ack(self, request_id: str, holder: str, token: int | None = None) -> Lease[T] | None:
        """Release a lease; an ack from a holder whose lease was taken back is ignored."""
        lease = self.leases.get(request_id)
        if lease is None or lease.holder != holder or (token is not None and lease.token != token):
            return None
        return self.leases.pop(request_id)

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
