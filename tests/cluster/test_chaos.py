"""Fault tolerance of the pool on a simulated 4-node cluster (head + 2 CPU nodes + 1 GPU node).

- cancel frees a request's work, lease and feature refs, and gives one ``Cancelled`` record;
- a request that cannot finish gets a ``RequestTimeoutError`` 504 record, nothing hangs;
- chaos: 240 small requests while, in one run, a media worker is SIGKILLed mid-work, a CPU
  node is removed and another added, a GPU worker is SIGKILLed while it holds a lease, and
  the coordinator is killed once. Every request_id comes back exactly once, ok or with a
  typed error, within a bound, and every resource is free after shutdown.
"""

from __future__ import annotations

import base64
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import ray

from actors.local_cluster import LocalCluster
from actors.pool import Pool
from ray_mm.config import RayMMConfig
from ray_mm.media.synth import make_image
from ray_mm.models import make_model
from ray_mm.pool.config import PoolConfig

IMG = "<|vision_start|><|image_pad|><|vision_end|>"
RESOURCE_KEYS = ("CPU", "mm_cpu", "mm_gpu")
pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("model"), "qwen2_vl")


def tiny_uris(n: int = 8) -> list[str]:
    return ["data:image/jpeg;base64," + base64.b64encode(make_image(48, 40, seed=k)).decode() for k in range(n)]


def line(rid: str, uri: str) -> dict[str, Any]:
    return {"request_id": rid, "prompt": f"{rid}: {IMG}", "images": [uri]}


def wait_until(cond: Callable[[], Any], timeout_s: float, every_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"condition not met within {timeout_s} s")


def coord_stats(pool: Pool) -> dict[str, Any]:
    return ray.get(pool.coordinator.stats.remote(), timeout=60)


def resources_settled() -> None:
    def settled() -> bool:
        avail, total = ray.available_resources(), ray.cluster_resources()
        return all(abs(avail.get(k, 0) - total.get(k, 0)) < 1e-6 for k in RESOURCE_KEYS)

    try:
        wait_until(settled, 30, 0.5)
    except AssertionError:
        raise AssertionError(f"resources not freed: available {ray.available_resources()} vs {ray.cluster_resources()}") from None


def test_cancel_frees_work_lease_and_refs(cluster: LocalCluster, model_dir: Path) -> None:
    uris = tiny_uris(4)
    cfg = PoolConfig(cpu_workers=2, gpu_workers=1, consumer="noop", consumer_delay_s=1.5, pull_batch_size=1,
                     ready_queue_size=2, lease_s=30)
    with Pool(str(model_dir), RayMMConfig(), cfg) as pool:
        rids = [pool.submit(line(f"c{k}", uris[k % 4])) for k in range(6)]
        stats = wait_until(lambda: (s := coord_stats(pool))["leased"] and s["ready"] >= 1 and s, 60)
        leased = next(iter(stats["lease_holders"]))
        queued = next(r for r in rids if r != leased and r not in stats["lease_holders"])
        before = stats
        assert pool.cancel(leased) and pool.cancel(queued)
        assert not ray.get(pool.coordinator.cancel.remote(leased))  # second cancel: nothing to do
        after = coord_stats(pool)
        assert after["inflight"] == before["inflight"] - 2
        assert leased not in after["lease_holders"] and queued not in after["lease_holders"]
        # One image per request: only requests still in flight hold a ref (other requests may finish their
        # media between the two snapshots and take theirs, so the count is not compared with `before`).
        assert before["held_feature_refs"] >= 2 and after["held_feature_refs"] <= after["inflight"]
        assert after["feature_slots_used"] == before["feature_slots_used"] - 2
        records = list(pool.results(timeout_s=60))
        final = coord_stats(pool)
    by_id = Counter(r["request_id"] for r in records)
    assert by_id == Counter(rids)  # exactly once each
    got = {r["request_id"]: r for r in records}
    for rid in (leased, queued):
        assert got[rid]["ok"] is False and got[rid]["error"]["type"] == "Cancelled" and got[rid]["error"]["status"] == 499
    assert all(got[r]["ok"] for r in rids if r not in (leased, queued))
    assert final["inflight"] == final["leased"] == final["held_feature_refs"] == final["feature_slots_used"] == 0
    assert final["counters"].get("stale_ack", 0) >= 1  # the GPU worker's ack of the cancelled lease was ignored


def test_requests_that_cannot_finish_time_out(cluster: LocalCluster, model_dir: Path) -> None:
    """The GPU side holds each lease past the deadline: 504 records, from the coordinator, on time."""
    uris = tiny_uris(3)
    cfg = PoolConfig(cpu_workers=2, gpu_workers=1, consumer="noop", consumer_delay_s=6.0, pull_batch_size=1,
                     lease_s=60, request_timeout_s=3.0)
    with Pool(str(model_dir), RayMMConfig(), cfg) as pool:
        t0 = time.monotonic()
        rids = [pool.submit(line(f"t{k}", uris[k])) for k in range(3)]
        records = list(pool.results(timeout_s=30))
        took = time.monotonic() - t0
        stats = coord_stats(pool)
    assert sorted(r["request_id"] for r in records) == sorted(rids)
    for rec in records:
        assert rec["ok"] is False and rec["error"]["type"] == "RequestTimeoutError" and rec["error"]["status"] == 504
        assert rec["request_id"] in rec["error"]["message"]
    assert took < 3.0 + 5.0
    assert stats["inflight"] == stats["leased"] == stats["ready"] == stats["feature_slots_used"] == 0
    resources_settled()


def test_media_worker_killed_while_it_holds_queued_features(cluster: LocalCluster, model_dir: Path) -> None:
    """Media workers hold the features they made (the coordinator only passes holders along). A worker
    killed while requests whose features it holds wait for (or are leased to) the GPU worker costs
    a re-dispatch of those requests: each comes back once, ok."""
    uris = tiny_uris(8)
    cfg = PoolConfig(cpu_workers=2, gpu_workers=1, consumer="noop", consumer_delay_s=0.4, pull_batch_size=1,
                     ready_queue_size=8, lease_s=30)
    with Pool(str(model_dir), RayMMConfig(), cfg) as pool:
        rids = [pool.submit(line(f"h{k}", uris[k % 8])) for k in range(12)]

        def held_by_worker0() -> Any:
            stats = ray.get(pool.media_workers[0].stats.remote(), timeout=60)
            queued = coord_stats(pool)["ready"]
            return stats["held_feature_lists"] > 0 and queued >= 2 and stats

        before = wait_until(held_by_worker0, 60)
        os.kill(before["pid"], signal.SIGKILL)
        records = list(pool.results(timeout_s=120))
        final = coord_stats(pool)
    by_id = Counter(r["request_id"] for r in records)
    assert by_id == Counter(rids)  # nothing lost, nothing twice
    assert all(r["ok"] for r in records), [r for r in records if not r["ok"]]
    counters = final["counters"]
    nacks = sum(v for k, v in counters.items() if k.startswith("nack:"))
    assert nacks >= 1 and counters.get("redispatched", 0) >= 1, counters
    assert final["inflight"] == final["held_feature_refs"] == 0


class Chaos:
    """The four faults, each injected once the run has reached a given progress.

    Called from the loop that reads results, on the main thread: Ray's ``Cluster.add_node``
    installs signal handlers, which only the main thread may do. The pool keeps working
    meanwhile (results wait in the coordinator).
    """

    def __init__(self, pool: Pool, cluster: LocalCluster, total: int) -> None:
        self.pool, self.cluster, self.total = pool, cluster, total
        self.log: list[str] = []
        self.killed: dict[str, Any] = {}
        self.media = pool.stats()["media_workers"]
        self.steps = [(0.1, self._kill_media_worker), (0.3, self._replace_cpu_node),
                      (0.5, self._kill_gpu_worker), (0.7, self._kill_coordinator)]
        self.t0 = time.monotonic()

    def step(self, done: int) -> None:
        """Inject the next fault if its time has come and its precondition holds (else retry on the next record)."""
        if self.steps and done >= self.steps[0][0] * self.total and self.steps[0][1]() is not False:
            self.steps.pop(0)
            self.log.append(f"t={time.monotonic() - self.t0:.1f}s done={done}: {self.log.pop()}")

    def _kill_media_worker(self) -> bool:
        """SIGKILL a media worker while it has items in flight."""
        stats = coord_stats(self.pool)
        if stats["worker_load"][0] == 0:
            return False
        os.kill(self.media[0]["pid"], signal.SIGKILL)
        self.killed["media_pid"] = self.media[0]["pid"]
        self.log.append(f"SIGKILL media worker 0 (pid {self.media[0]['pid']}, {stats['worker_load'][0]} items in flight)")
        return True

    def _replace_cpu_node(self) -> None:
        """Remove the CPU node of media worker 1 mid-run, then add a fresh one."""
        node = next(n for n in self.cluster.cpu_nodes if n.node_id == self.media[1]["node_id"])
        self.cluster.remove_node(node)
        self.killed["removed_node"] = self.media[1]["node_id"]
        time.sleep(1.0)
        new = self.cluster.add_cpu_node(num_cpus=1)
        self.killed["added_node"] = new.node_id
        self.log.append(f"removed CPU node {self.media[1]['node_id'][:8]}, added {new.node_id[:8]}")

    def _kill_gpu_worker(self) -> bool:
        """SIGKILL a GPU worker between pull and ack (it sleeps in its consumer, holding a lease)."""
        holders = coord_stats(self.pool)["lease_holders"]
        if not holders:
            return False
        holder = next(iter(holders.values()))
        gpu = next(s for s in self.pool.stats()["gpu_workers"] if s.get("name") == holder)
        os.kill(gpu["pid"], signal.SIGKILL)
        self.killed["gpu_pid"] = gpu["pid"]
        # What the dead process held (it may have acked the snapshot's leases just before dying): leases
        # under its name now, well before a restarted one could pull.
        self.killed["dead_leases"] = sorted(r for r, h in coord_stats(self.pool)["lease_holders"].items() if h == holder)
        self.log.append(f"SIGKILL GPU worker {holder} (pid {gpu['pid']}) holding {sorted(holders)}")
        return True

    def _kill_coordinator(self) -> bool:
        """Kill the coordinator once; Ray restarts it and the driver resubmits. Not before the killed
        GPU worker's leases went back to the queue (released when it restarted, or expired once it
        stopped renewing them: within lease_s plus a restart), so the coordinator's counters can show
        it; the pool keeps working meanwhile."""
        deadline = time.monotonic() + 30.0
        while True:
            counters = coord_stats(self.pool)["counters"]
            returned = counters.get("leases_released", 0) + counters.get("lease_expired", 0)
            if returned > 0 or not self.killed.get("dead_leases") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.killed["counters_before"] = counters
        ray.kill(self.pool.coordinator, no_restart=False)
        self.log.append("killed the coordinator")
        return True


def test_chaos_all_faults_in_one_run(cluster: LocalCluster, model_dir: Path) -> None:
    total = 240
    uris = tiny_uris(8)
    lines = [(f"line{k}", line(f"r{k:03d}", uris[k % len(uris)])) for k in range(total)]
    cfg = PoolConfig(cpu_workers=2, gpu_workers=2, consumer="noop", consumer_delay_s=0.1, pull_batch_size=2,
                     ready_queue_size=8, max_inflight_requests=32, lease_s=4.0, request_timeout_s=90.0)
    bound_s = 240.0
    with Pool(str(model_dir), RayMMConfig(), cfg) as pool:
        chaos = Chaos(pool, cluster, total)
        t0 = time.monotonic()
        records = []
        for rec in pool.run(lines):
            records.append(rec)
            chaos.step(len(records))
            assert time.monotonic() - t0 < bound_s, f"run past {bound_s} s; chaos: {chaos.log}"
        took = time.monotonic() - t0
        assert not chaos.steps, f"faults not all injected: {chaos.log}"
        stats = pool.stats()
        print(f"\nchaos run: {total} requests in {took:.1f} s; {chaos.log}")
        before = chaos.killed["counters_before"]
        print(f"coordinator counters before its kill: {before}")
        # The killed GPU worker's leases went back to the queue: released when it restarted, or expired.
        # (If it died holding none, having acked its batch just before, there was nothing to give back.)
        print(f"leases held by the killed GPU worker when it died: {chaos.killed['dead_leases']}")
        if chaos.killed["dead_leases"]:
            assert before.get("leases_released", 0) + before.get("lease_expired", 0) >= 1
        print(f"coordinator counters after restart: {stats['counters']}; resubmitted {stats['resubmitted']}, "
              f"driver timeouts {stats['driver_timeouts']}, duplicates dropped {pool.duplicates_dropped}")

        # Restarted workers are back, the one from the removed node on the new node.
        cpu_ids = {n.node_id for n in cluster.cpu_nodes}
        media = stats["media_workers"]
        assert all("error" not in m for m in media), media
        assert {m["node_id"] for m in media} <= cpu_ids
        assert chaos.killed["added_node"] in {m["node_id"] for m in media}
        assert chaos.killed["media_pid"] not in {m["pid"] for m in media}
        assert chaos.killed["gpu_pid"] not in {g.get("pid") for g in stats["gpu_workers"]}
        assert pool.restarts_seen == 1 and pool.resubmitted > 0
        assert stats["inflight"] == stats["leased"] == 0
    # Every request_id exactly once, ok or with a clean typed error.
    counts = Counter(r["request_id"] for r in records)
    assert len(records) == total and set(counts) == {ln["request_id"] for _, ln in lines} and max(counts.values()) == 1
    errors = Counter((r["error"]["type"], r["error"]["status"]) for r in records if not r["ok"])
    assert set(errors) <= {("RequestTimeoutError", 504)}, errors
    assert sum(errors.values()) <= total // 20, errors
    print(f"chaos run: ok {sum(1 for r in records if r['ok'])}, errors {dict(errors)}")
    resources_settled()


def test_one_coordinator_shard_killed_touches_only_its_own_requests(cluster: LocalCluster, model_dir: Path) -> None:
    """K=2 coordinator shards; one is killed while it holds requests. Every request_id still comes
    back exactly once; only the killed shard's pending requests are resubmitted; the other shard
    keeps its incarnation and admits each of its requests exactly once."""
    total, victim = 120, 1
    uris = tiny_uris(8)
    lines = [(f"line{k}", line(f"s{k:03d}", uris[k % len(uris)])) for k in range(total)]
    cfg = PoolConfig(coordinators=2, cpu_workers=2, gpu_workers=1, consumer="noop", consumer_delay_s=0.02,
                     pull_batch_size=2, ready_queue_size=8, max_inflight_requests=32, lease_s=4.0, request_timeout_s=90.0)
    from ray_mm.pool import shard_of

    mine = {ln["request_id"] for _, ln in lines if shard_of(ln["request_id"], 2) == victim}
    assert 0 < len(mine) < total
    with Pool(str(model_dir), RayMMConfig(), cfg) as pool:
        assert [pool.shard(rid) for rid in sorted(mine)] == [victim] * len(mine)  # the pool routes as shard_of
        survivor = pool.coordinators[1 - victim]
        incarnation_before = ray.get(survivor.incarnation_id.remote())
        records: list[dict[str, Any]] = []
        killed_holding = None
        t0 = time.monotonic()
        for rec in pool.run(lines):
            records.append(rec)
            if killed_holding is None and len(records) >= total // 4:
                held = ray.get(pool.coordinators[victim].stats.remote(), timeout=60)["inflight"]
                if held > 0:  # kill it while it holds requests (else retry on the next record)
                    ray.kill(pool.coordinators[victim], no_restart=False)
                    killed_holding = held
            assert time.monotonic() - t0 < 180, "run past 180 s"
        stats = pool.stats()
        print(f"\nshard kill: victim held {killed_holding} requests; resubmitted per shard {stats['resubmitted_per_shard']}, "
              f"restarts seen {pool.restarts_seen}, counters per shard {[s.get('counters') for s in stats['shards']]}")
        assert killed_holding is not None, "the victim shard never held a request when checked"
        assert pool.restarts_seen == 1
        assert stats["resubmitted_per_shard"][1 - victim] == 0
        assert 0 < stats["resubmitted_per_shard"][victim] <= len(mine)
        other = stats["shards"][1 - victim]
        assert ray.get(survivor.incarnation_id.remote()) == incarnation_before
        # Each of the survivor's requests was admitted there exactly once, and only those.
        assert other["counters"].get("submitted", 0) == total - len(mine)
        assert other["counters"].get("ok", 0) == total - len(mine)
        assert stats["inflight"] == stats["leased"] == 0
    counts = Counter(r["request_id"] for r in records)
    assert len(records) == total and set(counts) == {ln["request_id"] for _, ln in lines} and max(counts.values()) == 1
    assert all(r["ok"] for r in records if r["request_id"] not in mine)
    errors = Counter((r["error"]["type"], r["error"]["status"]) for r in records if not r["ok"])
    assert set(errors) <= {("RequestTimeoutError", 504)}, errors
    resources_settled()
