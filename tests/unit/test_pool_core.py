"""The pool's pure bookkeeping in ``ray_mm.pool``: shard routing, per-shard limits, merged stats,
the ready queue, feature slots and deadlines; and the run summary's coordinator-CPU line. No Ray."""

from __future__ import annotations

import collections
from dataclasses import dataclass

import pytest

from ray_mm.cli.run import format_summary
from ray_mm.pool import Deadlines, FeatureSlots, ReadyQueue, merge_stats, shard_config, shard_names, shard_of, split_by_shard
from ray_mm.pool.config import PoolConfig

# --------------------------------------------------------------------------- shards


def test_shard_of_is_stable_and_known() -> None:
    # Fixed values: a change of hash would move every request of a running pool (and its driver).
    assert [shard_of(f"r{k}", 2) for k in range(8)] == [shard_of(f"r{k}", 2) for k in range(8)]
    assert shard_of("anything", 1) == 0
    assert all(0 <= shard_of(f"r{k}", 3) < 3 for k in range(100))
    # Not Python's hash(): the same in every process (PYTHONHASHSEED does not matter).
    import hashlib

    want = int.from_bytes(hashlib.blake2b(b"req-42", digest_size=8).digest(), "big") % 4
    assert shard_of("req-42", 4) == want


def test_shard_of_spreads_requests() -> None:
    counts = collections.Counter(shard_of(f"coord-{k:04d}", 2) for k in range(1000))
    assert 400 <= counts[0] <= 600 and counts[0] + counts[1] == 1000


def test_shard_names_keep_the_single_name() -> None:
    assert shard_names("c", 1) == ["c"]
    assert shard_names("c", 3) == ["c", "c_1", "c_2"]


def test_split_by_shard_keeps_order_and_positions() -> None:
    items = [f"id{k}" for k in range(20)]
    parts = split_by_shard(items, lambda x: x, 2)
    assert sorted(pos for part in parts.values() for pos, _ in part) == list(range(20))
    for shard, part in parts.items():
        assert [pos for pos, _ in part] == sorted(pos for pos, _ in part)
        assert all(shard_of(item, 2) == shard for _, item in part)


def test_shard_config_divides_the_totals() -> None:
    cfg = PoolConfig(coordinators=2, max_inflight_requests=65, ready_queue_size=16, max_inflight_per_worker=4,
                     max_fetches_per_worker=16, cpu_workers=2, gpu_workers=1, pull_batch_size=4)
    one = shard_config(cfg)
    assert one.max_inflight_requests == 33 and one.ready_queue_size == 8
    assert one.max_fetches_per_worker == 8
    # Each shard keeps a worker's whole item and call caps: its calls carry as many items as one
    # coordinator's would (divided, K=2 halved the items per call and each shard's capacity).
    assert one.max_inflight_per_worker == 4 and one.max_calls_per_worker == PoolConfig().max_calls_per_worker
    assert one.feature_request_limit() == (16 + 4 + 8) // 2
    assert one.coordinators == 2
    assert shard_config(PoolConfig()) == PoolConfig()  # one shard: unchanged
    tiny = shard_config(PoolConfig(coordinators=4, max_fetches_per_worker=1))
    assert tiny.max_fetches_per_worker == 1  # never below one


def test_merge_stats_sums_shards() -> None:
    a = {"inflight": 2, "counters": {"ok": 3, "x": 1}, "worker_load": [1, 0], "lease_holders": {"r1": "gpu0"},
         "coordinator_cpu_s": 0.5, "pid": 11, "shard": 0, "incarnation": 7}
    b = {"inflight": 1, "counters": {"ok": 2}, "worker_load": [0, 2], "lease_holders": {"r2": "gpu1"},
         "coordinator_cpu_s": 0.25, "pid": 12, "shard": 1, "incarnation": 9}
    out = merge_stats([a, b])
    assert out["inflight"] == 3 and out["counters"] == {"ok": 5, "x": 1}
    assert out["worker_load"] == [1, 2] and out["lease_holders"] == {"r1": "gpu0", "r2": "gpu1"}
    assert out["coordinator_cpu_s"] == 0.75 and out["coordinators"] == 2
    assert out["incarnation"] == 7 and "pid" not in out and out["shards"] == [a, b]
    assert a["counters"] == {"ok": 3, "x": 1}  # inputs untouched
    calls = merge_stats([{"media_calls": 2, "media_call_items": 16, "items_per_call": 8.0},
                         {"media_calls": 6, "media_call_items": 12, "items_per_call": 2.0}])
    assert calls["items_per_call"] == 3.5  # 28 items over 8 calls, not 8.0 + 2.0
    down = merge_stats([a, {"error": "RayActorError"}])
    assert down["inflight"] == 2 and down["shards"][1] == {"error": "RayActorError"}
    single = merge_stats([a])
    assert single["pid"] == 11 and single["coordinators"] == 1


# --------------------------------------------------------------------------- ready queue


@dataclass
class Req:
    request_id: str


def test_ready_queue_order_limit_front_and_removal() -> None:
    q: ReadyQueue[Req] = ReadyQueue(2, key=lambda r: r.request_id)
    q.push(Req("a"))
    q.push(Req("b"))
    assert not q.has_room()
    q.push(Req("back"), front=True)  # handed back: past the limit, at the front
    assert [r.request_id for r in q] == ["back", "a", "b"] and q.max_seen == 3
    assert q.remove("a") and not q.remove("a")
    alive = {"b"}
    assert [r.request_id for r in q.pop_batch(5, alive.__contains__)] == ["b"]  # "back" finished: dropped
    assert not q and q.has_room()


def test_ready_queue_pop_batch_stops_at_max() -> None:
    q: ReadyQueue[Req] = ReadyQueue(10, key=lambda r: r.request_id)
    for k in range(5):
        q.push(Req(str(k)))
    assert [r.request_id for r in q.pop_batch(2, lambda _: True)] == ["0", "1"]
    assert len(q) == 3


# --------------------------------------------------------------------------- feature slots


def test_feature_slots_fifo_hand_over() -> None:
    slots: FeatureSlots[str] = FeatureSlots(2)
    assert slots.acquire("a") and slots.acquire("b")
    assert not slots.acquire("c") and not slots.acquire("d")
    assert slots.used == 2 and slots.max_used == 2
    assert slots.release() == "c"  # the slot goes straight to the oldest waiter
    assert slots.used == 2
    assert slots.cancel("d") and not slots.cancel("d")
    assert slots.release() is None and slots.release() is None
    assert slots.used == 0
    with pytest.raises(RuntimeError):
        slots.release()


def test_feature_slots_newcomer_does_not_overtake() -> None:
    slots: FeatureSlots[str] = FeatureSlots(1)
    assert slots.acquire("a")
    assert not slots.acquire("b")
    assert slots.release() == "b"
    assert not slots.acquire("c")  # b holds it now


# --------------------------------------------------------------------------- deadlines


def test_deadlines_due_in_order_discard_and_readd() -> None:
    d = Deadlines()
    d.add("late", 5.0)
    d.add("early", 1.0)
    d.add("gone", 2.0)
    d.discard("gone")
    assert d.next_deadline() == 1.0
    assert d.pop_due(0.5) == []
    assert d.pop_due(3.0) == ["early"]
    assert "early" not in d and "late" in d and len(d) == 1
    d.add("early", 1.0)  # put back by a caller that cannot finish it yet
    d.add("late", 9.0)  # a later add supersedes the earlier deadline
    assert d.pop_due(6.0) == ["early"]
    assert d.pop_due(10.0) == ["late"] and d.next_deadline() is None


# --------------------------------------------------------------------------- run summary


def _ok(rid: str) -> dict[str, object]:
    return {"request_id": rid, "ok": True, "path": "fast", "items": [{}], "timings": {}}


def test_summary_reports_process_cpu_with_own_share() -> None:
    stats = [{"coordinator_cpu_s": 0.01, "coordinator_process_cpu_s": 0.1, "coordinators": 2}]
    text = format_summary([_ok("a"), _ok("b")], stats, 1.0)
    line = next(x for x in text.splitlines() if x.startswith("coordinator CPU"))
    assert "50.00 ms per request process CPU" in line and "2 coordinator processes" in line
    assert "own code 5.00 ms (10% of it)" in line


def test_summary_says_not_measured_without_process_cpu() -> None:
    text = format_summary([_ok("a")], [{"coordinator_cpu_s": 0.002}], 1.0)
    assert "process CPU not measured; own code 2.00 ms per request" in text
