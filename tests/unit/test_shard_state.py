"""``ray_mm.pool.ShardState``: a coordinator shard's decisions, without a cluster or an event loop.

Each test drives a request the way the actor does (admit, plan and settle its media calls, queue
it, lease it, ack / nack / expire / cancel) and checks what the pool promises: one record per
request, nothing it held left behind, stale answers refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from ray_mm.errors import PoolSaturatedError, RequestError
from ray_mm.pool import InflightRequest, ReadyRequest, ShardState, Ticket
from ray_mm.pool.config import PoolConfig

WORKERS = ["media_0", "media_1"]


@dataclass
class _Spec:
    source: str


def _state(workers: int = 2, **cfg: Any) -> ShardState:
    return ShardState(PoolConfig(**{"max_inflight_requests": 8, "lease_s": 10.0, "request_timeout_s": 30.0, **cfg}),
                      WORKERS[:workers], incarnation=7)


def _admit(state: ShardState, rid: str, now: float = 0.0, prepared: Any = "prepared") -> InflightRequest:
    entry = state.admit(rid, now, None)
    entry.prepared = prepared  # the actor's Preprocessor.prepare result; opaque here
    return entry


def _ready(state: ShardState, rid: str, refs: list[Any] | None = None) -> ReadyRequest:
    req = ReadyRequest(rid, {"request_id": rid, "ok": True, "timings": {}}, refs or [], placeholder_tokens=4)
    state.ready.push(req)
    return req


def _dispatch(state: ShardState, rid: str, n: int) -> list[Any]:
    """Plan ``n`` items of ``rid`` into calls; the planned calls."""
    for k in range(n):
        state.planner.add(Ticket(rid, k, _Spec(f"http://127.0.0.1/{rid}/{k}.jpg")))
    return state.planner.plan()


def _answer(call: Any, items: int = 1, parked: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    return [{"parked": True} if k in parked else {"items": [object()] * items} for k in range(len(call.tickets))]


def test_admission_refuses_a_duplicate_id_and_past_the_limit() -> None:
    state = _state(max_inflight_requests=2)
    _admit(state, "a")
    with pytest.raises(RequestError) as dup:
        state.admit("a", 0.0, None)
    assert dup.value.status == 409
    _admit(state, "b")
    with pytest.raises(PoolSaturatedError):
        state.admit("c", 0.0, None)
    assert state.counters["saturated"] == 1 and set(state.inflight) == {"a", "b"}
    state.results["d"] = {"ok": True}  # finished, record not taken yet: the id is still in use
    with pytest.raises(RequestError):
        state.admit("d", 0.0, None)


def test_deadline_is_the_timeout_given_or_the_configured_one() -> None:
    state = _state(request_timeout_s=30.0)
    assert state.admit("a", 100.0, None).deadline == 130.0
    assert state.admit("b", 100.0, 2.5).deadline == 102.5
    assert state.admit("c", 100.0, -1.0).deadline == 100.0  # a resubmission with nothing left


def test_finish_once_times_the_record_and_frees_everything() -> None:
    state = _state()
    entry = _admit(state, "a", now=1.0)
    entry.has_slot = True
    [call] = _dispatch(state, "a", 1)
    state.settle(call, _answer(call, items=2))
    req = _ready(state, "a")
    record = dict(req.record)
    freed = state.finish("a", record, now=3.5)
    assert freed is not None and freed.slot and freed.left_ready_queue
    assert record["timings"]["pool_total_s"] == 2.5
    assert not state.inflight and not state.ready and not state.deadlines and entry.prepared is None
    assert len(state.held) == 0 and state.held.take_drops(call.worker) == [state.key_of(call)]
    assert state.finish("a", {"ok": True}, now=4.0) is None  # a second finish is ignored, and counted
    assert state.counters["ok"] == 1 and state.counters["late_finish"] == 1


def test_finish_names_media_calls_only_this_request_still_wants() -> None:
    state = _state(max_calls_per_worker=1, max_inflight_per_worker=16)
    _admit(state, "a")
    calls = _dispatch(state, "a", 2)
    assert calls
    freed = state.finish("a", {"request_id": "a", "ok": False, "error": {"type": "Cancelled"}}, now=1.0)
    assert freed is not None and sorted(freed.calls_to_cancel) == sorted(c.call_id for c in calls)
    assert state.counters["error:Cancelled"] == 1


def test_settle_hands_each_ticket_its_answer_and_keeps_a_shared_list_until_its_last_user() -> None:
    state = _state(workers=1)
    for rid in ("a", "b"):
        _admit(state, rid)
    # One worker's call carries both requests' items (they arrived in the same round).
    for rid in ("a", "b"):
        state.planner.add(Ticket(rid, 0, _Spec("http://127.0.0.1/same.jpg")))
    [call] = state.planner.plan()
    settled = state.settle(call, _answer(call, items=3))
    holder = (WORKERS[call.worker], (7, call.call_id))
    assert [(t.request_id, a[1], a[2]) for t, a in settled.answers] == [("a", holder, 0), ("b", holder, 3)]
    key = state.key_of(call)
    assert state.inflight["a"].refs == [(call.worker, key)] == state.inflight["b"].refs
    state.finish("a", {"ok": True}, now=1.0)
    assert state.held.take_drops(call.worker) == []  # b still uses the list
    state.finish("b", {"ok": True}, now=1.0)
    assert state.held.take_drops(call.worker) == [key]
    assert not state.planner.calls  # the call's load is freed


def test_settle_of_a_dead_worker_answers_none_and_holds_nothing() -> None:
    state = _state()
    _admit(state, "a")
    calls = _dispatch(state, "a", 2)
    for call in calls:
        settled = state.settle(call, None)
        assert all(answer is None for _, answer in settled.answers)
        assert settled.follow_up is None
    assert state.inflight["a"].refs == [] and len(state.held) == 0 and sum(state.selector.load) == 0


def test_parked_items_get_a_follow_up_unless_nobody_wants_them() -> None:
    state = _state(workers=1)
    _admit(state, "a")
    [call] = _dispatch(state, "a", 2)
    settled = state.settle(call, _answer(call, parked=(1,)))
    assert [t.spec_index for t, _ in settled.answers] == [0]  # the parked one is answered by the follow-up
    assert settled.follow_up is not None and settled.follow_up.collects == call.call_id
    assert [t.spec_index for t in settled.follow_up.tickets] == [1] and state.counters["slow_fetches"] == 1
    # Another request finishes before its call is settled: nobody waits for its parked item.
    _admit(state, "b")
    [call_b] = _dispatch(state, "b", 2)
    state.finish("b", {"ok": True}, now=1.0)
    settled_b = state.settle(call_b, _answer(call_b, parked=(1,)))
    assert settled_b.follow_up is None and settled_b.drop_parked
    assert call_b.call_id not in state.planner.calls


def test_lease_ack_and_a_stale_ack_refused() -> None:
    state = _state()
    _admit(state, "a")
    _ready(state, "a")
    [req] = state.lease_out("gpu0", 4, now=0.0)
    assert state.inflight["a"].stage == "gpu" and req.pulls == 1
    assert state.acked("gpu1", "a", {}, req.lease) is None  # not its holder
    assert state.acked("gpu0", "a", {}, req.lease + 1) is None  # not its lease
    assert state.acked("gpu0", "a", {}, None) is None
    assert state.counters["stale_ack"] == 2 and state.counters["ack_without_lease"] == 1
    got = state.acked("gpu0", "a", {"zero_copy": True}, req.lease)
    assert got is not None and got[1]["consumer"] == {"zero_copy": True} and "consumer" not in req.record
    assert state.acked("gpu0", "a", {}, req.lease) is None  # acknowledged once


def test_consumer_error_becomes_the_record() -> None:
    state = _state()
    _admit(state, "a")
    _ready(state, "a")
    [req] = state.lease_out("gpu0", 1, now=0.0)
    error = {"type": "InternalError", "message": "engine refused", "status": 500}
    got = state.acked("gpu0", "a", {"error": error}, req.lease)
    assert got is not None and got[1] == {"request_id": "a", "ok": False, "error": error}


def test_lease_out_skips_requests_that_finished_while_queued() -> None:
    state = _state()
    for rid in ("a", "b", "c"):
        _admit(state, rid)
        _ready(state, rid)
    state.inflight.pop("b")  # finished some other way while queued (the queue is cleaned lazily)
    assert [r.request_id for r in state.lease_out("gpu0", 8, now=0.0)] == ["a", "c"]


def test_restarted_holder_gives_back_only_its_live_leases_in_grant_order() -> None:
    state = _state()
    for rid in ("a", "b", "c"):
        _admit(state, rid)
        _ready(state, rid)
    state.lease_out("gpu0", 2, now=0.0)
    state.lease_out("gpu1", 1, now=0.0)
    state.inflight.pop("b")
    back = state.take_back("gpu0")
    assert [r.request_id for r in back] == ["a"] and state.inflight["a"].stage == "ready_queue"
    assert state.leases.holders() == {"c": "gpu1"} and state.counters["leases_released"] == 1


def test_renewal_keeps_a_lease_and_expiry_requeues_only_live_requests() -> None:
    state = _state(lease_s=10.0)
    for rid in ("a", "b", "c"):
        _admit(state, rid)
        _ready(state, rid)
    [a, b, c] = state.lease_out("gpu0", 3, now=0.0)
    assert state.renew("gpu0", [("a", a.lease), ("b", b.lease + 99)], now=8.0) == 1
    state.inflight.pop("c")
    requeue, late = state.due(12.0, running=lambda e: False)
    assert [r.request_id for r in requeue] == ["b"] and late == []
    assert state.leases.holders() == {"a": "gpu0"} and state.counters["lease_expired"] == 1
    assert state.last_contact["gpu0"] == 8.0


def test_deadlines_due_skip_requests_whose_task_times_itself_out() -> None:
    state = _state()
    a = state.admit("a", 0.0, 1.0)
    b = state.admit("b", 0.0, 2.0)
    state.admit("c", 0.0, 50.0)
    requeue, late = state.due(5.0, running=lambda e: e is a)
    assert requeue == [] and late == [b]
    assert "a" in state.deadlines and "b" not in state.deadlines  # a's own wait fires; kept in view
    record = state.timeout_record(b)
    assert record["ok"] is False and record["error"]["type"] == "RequestTimeoutError" and record["error"]["status"] == 504
    assert "deadline of 2 s" in record["error"]["message"] and state.counters["timed_out"] == 1


def test_nack_redispatches_only_a_live_request_under_its_lease() -> None:
    state = _state()
    _admit(state, "a")
    _ready(state, "a")
    [req] = state.lease_out("gpu0", 1, now=0.0)
    assert state.nacked("gpu0", "a", req.lease + 1, "lost") is None
    entry = state.nacked("gpu0", "a", req.lease, "lost")
    assert entry is state.inflight["a"] and state.counters["nack:lost"] == 1 and "a" not in state.leases
    assert state.nacked("gpu0", "a", req.lease, "lost") is None  # the lease ended with the first nack


def test_stats_count_what_is_held() -> None:
    state = _state()
    _admit(state, "a")
    [call] = _dispatch(state, "a", 1)
    state.settle(call, _answer(call))
    stats = state.stats()
    assert stats["inflight"] == 1 and stats["held_feature_refs"] == 1 and stats["held_feature_lists"] == 1
    assert stats["incarnation"] == 7 and stats["media_calls"] == 1


def test_worker_deaths_resend_until_an_item_reaches_its_limit() -> None:
    from ray_mm.errors import InternalError
    from ray_mm.pool import CrashCounts

    state = _state()
    crashes = CrashCounts(2)
    labels = ["image 0 of request a", "image 1 of request a"]
    state.worker_died("a", labels, [0, 1], crashes)  # first death: both go again, each alone
    assert crashes.suspect(0) and crashes.suspect(1) and state.counters["redispatched_items"] == 2
    with pytest.raises(InternalError, match="image 1 of request a: the media worker died processing this item \\(2 times\\)"):
        state.worker_died("a", labels, [1], crashes)
    assert state.counters["crash_looping_items"] == 1 and state.counters["redispatched_items"] == 2


def test_a_freed_slot_skips_waiters_that_gave_up() -> None:
    state = _state(max_inflight_requests=1, max_feature_requests=1)
    assert state.slots.limit == 1 and state.slots.acquire("holder")
    for waiter in ("gone", "waiting", "later"):
        assert not state.slots.acquire(waiter)
    assert state.next_slot_holder(gave_up=lambda w: w == "gone") == "waiting"
    assert state.next_slot_holder(gave_up=lambda w: False) == "later"
    assert state.next_slot_holder(gave_up=lambda w: False) is None and state.slots.used == 0


def test_health_counts_gpu_workers_heard_from_within_the_window() -> None:
    state = _state(lease_s=30.0, gpu_workers=3)  # window: 30 / 3 + 5 = 15 s
    state.renew("gpu0", [], now=100.0)
    state.last_contact["gpu1"] = 84.0
    health = state.health(now=110.0, media_alive=1, waiters=4)
    assert health["gpu_workers_alive"] == 1 and health["gpu_workers"] == 3
    assert health["media_workers"] == 2 and health["media_workers_alive"] == 1 and health["waiters"] == 4
