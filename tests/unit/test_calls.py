"""``ray_mm.pool.calls.CallPlanner``: media calls shared by several requests, without a cluster."""

from __future__ import annotations

from dataclasses import dataclass

from ray_mm.pool import CallPlanner, HeldFeatures, Ticket, WorkerSelector, holders_by_worker


@dataclass
class _Spec:
    source: str


def _tickets(rid: str, n: int, suspect: bool = False) -> list[Ticket]:
    return [Ticket(rid, k, _Spec(f"http://127.0.0.1/{rid}/{k}.jpg"), suspect=suspect) for k in range(n)]


def _planner(workers: int = 2, per_worker: int = 16, calls: int = 2, items: int = 64) -> CallPlanner:
    return CallPlanner(WorkerSelector(workers, per_worker), max_calls_per_worker=calls, max_items_per_call=items)


def test_light_load_sends_each_request_at_once() -> None:
    planner = _planner()
    for t in _tickets("a", 4):
        planner.add(t)
    calls = planner.plan()
    assert sum(len(c.tickets) for c in calls) == 4 and not planner.waiting
    assert {t.request_id for c in calls for t in c.tickets} == {"a"}
    assert sum(planner.selector.load) == 4 and min(planner.selector.load) > 0  # spread (affinity slack 1)


def test_under_load_requests_share_the_next_call() -> None:
    planner = _planner(workers=1, calls=1)
    for t in _tickets("a", 2):
        planner.add(t)
    [first] = planner.plan()
    for rid in ("b", "c", "d"):
        for t in _tickets(rid, 2):
            planner.add(t)
    assert planner.plan() == []  # the worker's one call is in flight: they wait
    planner.finished(first.call_id)
    [second] = planner.plan()
    assert [t.request_id for t in second.tickets] == ["b", "b", "c", "c", "d", "d"]
    assert planner.stats()["media_calls"] == 2 and planner.stats()["items_per_call"] == 4.0


def test_calls_respect_item_caps_and_fifo() -> None:
    planner = _planner(workers=1, per_worker=5, calls=2, items=3)
    for rid in ("a", "b", "c"):
        for t in _tickets(rid, 2):
            planner.add(t)
    calls = planner.plan()
    # one new call per worker per round, at most 3 items, decode load capped at 5 in all
    assert [[(t.request_id, t.spec_index) for t in c.tickets] for c in calls] == [[("a", 0), ("a", 1), ("b", 0)]]
    [nxt] = planner.plan()
    assert [(t.request_id, t.spec_index) for t in nxt.tickets] == [("b", 1), ("c", 0)]
    assert planner.selector.load == [5] and [t.request_id for t in planner.waiting] == ["c"]


def test_slow_items_park_and_a_follow_up_collects_them() -> None:
    planner = _planner(workers=1, per_worker=2, calls=1)
    for t in _tickets("a", 2):
        planner.add(t)
    [call] = planner.plan()
    follow = planner.park(call.call_id, [1])
    planner.finished(call.call_id)
    assert follow is not None and follow.collects == call.call_id and follow.tickets == [call.tickets[1]]
    assert planner.selector.load == [0] and planner.selector.parked == [1]
    for t in _tickets("b", 2):  # the parked item holds neither a decode slot nor a call slot
        planner.add(t)
    assert sum(len(c.tickets) for c in planner.plan()) == 2
    planner.finished(follow.call_id)
    assert planner.selector.parked == [0]


def test_suspect_goes_alone_to_an_idle_worker_held_exclusively() -> None:
    planner = _planner(workers=2, calls=2)
    for t in _tickets("busy", 1):
        planner.add(t)
    busy = planner.plan()
    [suspect] = _tickets("s", 1, suspect=True)
    planner.add(suspect)
    out = planner.plan()
    # the idle worker is held for the suspect and gets it alone
    assert [(c.exclusive, c.tickets) for c in out] == [(True, [suspect])]
    held = out[0].worker
    for t in _tickets("later", 4):
        planner.add(t)
    later = planner.plan()
    assert all(c.worker != held for c in later)  # nothing else goes to the held worker
    planner.finished(out[0].call_id)
    assert not planner.selector.exclusive[held]
    assert busy  # the busy worker's calls were unaffected


def test_suspect_waits_until_its_held_worker_is_idle() -> None:
    planner = _planner(workers=1, calls=2)
    for t in _tickets("a", 2):
        planner.add(t)
    [running] = planner.plan()
    [suspect] = _tickets("s", 1, suspect=True)
    planner.add(suspect)
    assert planner.plan() == []  # held, but still busy with a's call
    planner.finished(running.call_id)
    [alone] = planner.plan()
    assert alone.exclusive and alone.tickets == [suspect]


def test_dropped_request_frees_waiting_items_and_names_calls_nobody_needs() -> None:
    planner = _planner(workers=1, calls=1)
    for t in _tickets("a", 2):
        planner.add(t)
    [call_a] = planner.plan()
    for rid in ("b", "c"):
        for t in _tickets(rid, 1):
            planner.add(t)
    assert planner.drop_request("b") == []  # b was only waiting
    assert planner.drop_request("a") == [call_a.call_id]  # a's call has no other request in it
    planner.finished(call_a.call_id)
    [nxt] = planner.plan()
    assert [t.request_id for t in nxt.tickets] == ["c"]  # b's dropped item never goes out


def test_shared_call_is_kept_while_one_request_still_needs_it() -> None:
    planner = _planner(workers=1, calls=1)
    for rid in ("a", "b"):
        for t in _tickets(rid, 1):
            planner.add(t)
    [shared] = planner.plan()
    assert planner.drop_request("a") == []
    assert planner.drop_request("b") == [shared.call_id]


def test_held_feature_lists_are_dropped_when_their_last_request_finishes() -> None:
    held = HeldFeatures(2)
    held.hold(0, "shared", users=2)
    held.hold(1, "alone", users=1)
    held.hold(1, "unwanted", users=0)  # every request it answered finished before the answer came
    assert held.take_drops(1) == ["unwanted"] and held.take_drops(1) == []
    held.release(0, "shared")
    assert held.take_drops(0) == []  # one request still reads it
    held.release(0, "shared")
    held.release(1, "alone")
    assert held.take_drops(0) == ["shared"] and held.take_drops(1) == ["alone"]
    held.release(1, "alone")  # a second release of a dropped key changes nothing
    assert held.take_drops(1) == [] and len(held) == 0


def test_holders_are_grouped_per_worker_once_each() -> None:
    refs = [(("w0", "k1"), 0), (("w1", "k2"), 0), (("w0", "k1"), 3), (("w0", "k3"), 1)]
    assert holders_by_worker(refs) == {"w0": ["k1", "k3"], "w1": ["k2"]}
