"""The pool's pure bookkeeping (ray_mm.pool.scheduling): worker choice and leases, no Ray."""

from __future__ import annotations

import pytest

from ray_mm.pool.config import PoolConfig
from ray_mm.pool.scheduling import CrashCounts, LeaseTable, WorkerSelector, content_key

# --------------------------------------------------------------------------- WorkerSelector


def test_selector_needs_a_worker() -> None:
    with pytest.raises(ValueError):
        WorkerSelector(0, 4)


def test_selector_least_loaded_without_key() -> None:
    sel = WorkerSelector(3, 2)
    picks = []
    for _ in range(6):
        w = sel.pick(None)
        assert w is not None
        sel.started(w)
        picks.append(w)
    assert sorted(picks) == [0, 0, 1, 1, 2, 2]
    assert sel.pick(None) is None  # every worker at capacity
    sel.finished(1)
    assert sel.pick(None) == 1


def test_selector_capacity_is_never_exceeded() -> None:
    sel = WorkerSelector(2, 3)
    for k in range(100):
        w = sel.pick(f"key{k % 5}")
        if w is None:
            sel.finished(k % 2)
            continue
        sel.started(w)
        assert max(sel.load) <= 3


def test_selector_affinity_prefers_the_same_worker_within_slack() -> None:
    sel = WorkerSelector(4, 8, affinity_slack=1)
    pref = sel.preferred("http://x/a.jpg")
    assert pref == sel.preferred("http://x/a.jpg")  # stable
    assert sel.pick("http://x/a.jpg") == pref
    sel.started(pref)
    assert sel.pick("http://x/a.jpg") == pref  # one above the least loaded: still within slack
    sel.started(pref)
    assert sel.pick("http://x/a.jpg") != pref  # two above: goes to the least loaded
    # Keys spread over workers.
    assert len({sel.preferred(f"k{i}") for i in range(64)}) == 4


def test_selector_finished_never_goes_negative_and_ties_break_by_assigned() -> None:
    sel = WorkerSelector(2, 1)
    sel.finished(0)
    assert sel.load == [0, 0]
    sel.started(0)
    sel.finished(0)
    assert sel.pick(None) == 1  # same load; worker 1 has been given less work


# --------------------------------------------------------------------------- LeaseTable


def test_lease_grant_ack_with_token() -> None:
    table: LeaseTable[str] = LeaseTable(lease_s=10)
    token = table.grant("r1", "gpu0", "payload", now=0.0)
    assert "r1" in table and len(table) == 1 and table.holders() == {"r1": "gpu0"}
    assert table.ack("r1", "gpu1", token) is None  # wrong holder
    assert table.ack("r1", "gpu0", token + 1) is None  # wrong token
    lease = table.ack("r1", "gpu0", token)
    assert lease is not None and lease.payload == "payload" and len(table) == 0
    assert table.ack("r1", "gpu0", token) is None  # acked once only


def test_lease_expiry_returns_oldest_first_and_removes() -> None:
    table: LeaseTable[int] = LeaseTable(lease_s=5)
    table.grant("late", "g", 2, now=3.0)
    table.grant("early", "g", 1, now=1.0)
    table.grant("fresh", "g", 3, now=10.0)
    assert table.expired(now=5.9) == []
    assert table.expired(now=8.0) == [("early", 1), ("late", 2)]
    assert list(table.leases) == ["fresh"]


def test_stale_ack_after_regrant_to_same_holder_name_is_ignored() -> None:
    """A restarted GPU worker keeps its name; only the token tells its old lease from the new one."""
    table: LeaseTable[str] = LeaseTable(lease_s=1)
    old = table.grant("r", "gpu0", "x", now=0.0)
    assert table.expired(now=2.0) == [("r", "x")]
    new = table.grant("r", "gpu0", "x", now=2.0)
    assert new != old
    assert table.ack("r", "gpu0", old) is None
    assert table.ack("r", "gpu0", new) is not None


def test_lease_drop() -> None:
    table: LeaseTable[str] = LeaseTable(lease_s=1)
    table.grant("r", "g", "x", now=0.0)
    assert table.drop("r") is not None and table.drop("r") is None and len(table) == 0


# --------------------------------------------------------------------------- misc


def test_content_key() -> None:
    assert content_key("http://a/b.jpg") == "http://a/b.jpg"
    assert content_key(b"abc") == content_key(bytearray(b"abc")) and len(content_key(b"abc") or "") == 40
    assert len(content_key("x" * 5000) or "") == 40
    assert content_key(object()) is None


def test_feature_request_limit_default_and_override() -> None:
    cfg = PoolConfig(cpu_workers=2, gpu_workers=1, ready_queue_size=16, pull_batch_size=4, max_inflight_per_worker=4)
    assert cfg.feature_request_limit() == 16 + 4 + 8
    assert PoolConfig(max_feature_requests=5).feature_request_limit() == 5


def test_parked_items_stop_counting_as_decode_work() -> None:
    sel = WorkerSelector(1, max_inflight_per_worker=2, max_parked_per_worker=2)
    sel.started(0)
    sel.started(0)
    assert sel.pick(None) is None  # two items of decode work: full
    sel.park(0)  # one of them waits on a slow fetch
    assert sel.pick(None) == 0 and sel.load == [1] and sel.parked == [1]
    sel.started(0)
    sel.park(0)
    assert sel.parked == [2] and sel.load == [1]
    assert sel.pick(None) is None  # decode slots free, but the worker's fetch slots are full
    sel.finished(0, was_parked=True)
    assert sel.parked == [1] and sel.pick(None) == 0


def test_reserved_worker_gets_nothing_new_until_released() -> None:
    sel = WorkerSelector(2, max_inflight_per_worker=4)
    sel.started(0)
    reserved = sel.reserve()
    assert reserved == 1  # the least loaded one
    assert not sel.idle(0) and sel.idle(1)
    assert all(sel.pick(None) == 0 for _ in range(3))  # worker 1 is held
    sel.started(1)  # the suspect item goes alone
    assert sel.reserve() == 0 and sel.reserve() is None
    sel.unreserve(0)
    sel.finished(1, exclusive=True)
    assert not sel.exclusive[1] and sel.load[1] == 0


def test_crash_counts_limit() -> None:
    counts = CrashCounts(limit=2)
    assert not counts.suspect(3)
    assert counts.died(3) == 1 and counts.suspect(3) and not counts.exhausted(3)
    assert counts.died(3) == 2 and counts.exhausted(3)
    assert not counts.suspect(4)


def test_lease_renewal_keeps_a_slow_holder_and_ack_needs_the_token() -> None:
    table: LeaseTable[str] = LeaseTable(lease_s=1.0)
    token = table.grant("r", "gpu0", "payload", now=0.0)
    assert table.renew("r", "gpu0", token, now=0.9)
    assert table.expired(1.5) == []  # renewed at 0.9: good until 1.9
    assert not table.renew("r", "gpu1", token, now=1.0)  # not the holder
    assert not table.renew("r", "gpu0", token + 1, now=1.0)  # not this lease
    assert table.expired(2.0) == [("r", "payload")]  # not renewed again: gone
    token = table.grant("r", "gpu0", "payload", now=3.0)
    assert table.ack("r", "gpu0", None) is None  # an ack without a lease token is refused
    assert table.ack("r", "gpu0", token) is not None
