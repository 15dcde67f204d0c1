"""Faults that used to take the whole pool down (issue 9), on the simulated cluster:
slow-body servers holding media workers, an item that crashes its worker again and
again, and consumers slower than their lease."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.local_cluster import LocalCluster
from actors.pool import Pool
from ray_mm.config import MediaPolicy, RayMMConfig
from ray_mm.media.synth import make_image
from ray_mm.models import make_model
from ray_mm.pool.config import PoolConfig
from tests.cluster.crashing_adapter import ADAPTER, CRASH_LOG, MARKER_RGB
from tests.hostile_server import hostile_server

IMG = "<|vision_start|><|image_pad|><|vision_end|>"
N_HEALTHY = 24
N_SLOW = 4
FETCH_TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("model"), "qwen2_vl")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    d = tmp_path_factory.mktemp("media")
    for k in range(N_HEALTHY):
        (d / f"ok{k}.jpg").write_bytes(make_image(320, 240, seed=k))
    from PIL import Image

    Image.new("RGB", (64, 64), MARKER_RGB).save(d / "marker.png")
    with hostile_server(str(d), interval_s=0.25, max_hold_s=30.0) as base:
        yield d, base


def _config() -> RayMMConfig:
    # Media are served on 127.0.0.1 (refused by default); no cache, so both runs decode everything.
    return RayMMConfig(media=MediaPolicy(allow_private_addresses=True, fetch_timeout_s=FETCH_TIMEOUT_S), cache_bytes=0)


def _timed(pool: Pool, lines: list[dict[str, Any]], timeout_s: float) -> dict[str, tuple[dict[str, Any], float]]:
    """Submit every line at once; each id's records and the seconds from its submission to its record."""
    submitted = {}
    for line in lines:
        pool.submit(line)
        submitted[line["request_id"]] = time.monotonic()
    out: dict[str, list[tuple[dict[str, Any], float]]] = {}
    for record in pool.results(timeout_s=timeout_s):
        rid = record["request_id"]
        out.setdefault(rid, []).append((record, time.monotonic() - submitted[rid]))
    assert all(len(v) == 1 for v in out.values()), {k: len(v) for k, v in out.items() if len(v) != 1}
    assert set(out) == set(submitted)
    return {rid: v[0] for rid, v in out.items()}


def test_slow_bodies_do_not_hold_healthy_requests(cluster: LocalCluster, model_dir: Path, served: tuple[Path, str]) -> None:
    _, base = served
    healthy = [{"request_id": f"ok{k}", "prompt": f"{k}: {IMG}", "images": [f"{base}/ok{k}.jpg"]} for k in range(N_HEALTHY)]
    slow = [{"request_id": f"slow{k}", "prompt": f"{IMG}", "images": [f"{base}/trickle/{k}.jpg"]} for k in range(N_SLOW)]
    cfg = PoolConfig(cpu_workers=2, gpu_workers=1, consumer="noop", request_timeout_s=60)
    with Pool(str(model_dir), _config(), cfg) as pool:
        _timed(pool, [dict(line, request_id=f"warm-{line['request_id']}") for line in healthy[:4]], timeout_s=90)
        alone = _timed(pool, healthy, timeout_s=90)
        again = [dict(line, request_id=f"b-{line['request_id']}") for line in healthy]
        mixed = _timed(pool, slow + again, timeout_s=90)
        stats = pool.stats()
    assert all(rec["ok"] for rec, _ in alone.values())
    base_p50 = statistics.median(t for _, t in alone.values())
    mixed_p50 = statistics.median(mixed[f"b-ok{k}"][1] for k in range(N_HEALTHY))
    print(f"healthy p50 without slow URLs {base_p50:.2f} s, with {N_SLOW} slow-body URLs in front {mixed_p50:.2f} s")
    assert all(mixed[f"b-ok{k}"][0]["ok"] for k in range(N_HEALTHY))
    assert mixed_p50 <= base_p50 + 1.0
    for k in range(N_SLOW):
        record, seconds = mixed[f"slow{k}"]
        assert not record["ok"]
        assert record["error"]["type"] == "MediaFetchError" and record["error"]["status"] == 504, record
        assert seconds < FETCH_TIMEOUT_S + 5.0  # the fetch deadline held
    assert stats["counters"].get("slow_fetches", 0) >= N_SLOW  # workers parked them off their decode slots


def test_item_that_kills_its_worker_fails_alone_and_is_not_retried(
    cluster: LocalCluster, model_dir: Path, served: tuple[Path, str]
) -> None:
    _, base = served
    lines = [{"request_id": "crash", "prompt": f"{IMG} and {IMG}", "images": [f"{base}/ok0.jpg", f"{base}/marker.png"]}]
    lines += [{"request_id": f"fine{k}", "prompt": f"{IMG}", "images": [f"{base}/ok{k}.jpg"]} for k in range(1, 7)]
    cfg = PoolConfig(cpu_workers=2, gpu_workers=1, consumer="noop", request_timeout_s=90, max_worker_deaths_per_item=2)
    t0 = time.monotonic()
    with Pool(str(model_dir), _config(), cfg, adapter=ADAPTER) as pool:
        records = {}
        for line in lines:
            pool.submit(line)
        for record in pool.results(timeout_s=120):
            assert record["request_id"] not in records  # one record per request
            records[record["request_id"]] = record
        stats = pool.stats()
    elapsed = time.monotonic() - t0
    crash = records["crash"]
    assert not crash["ok"]
    assert crash["error"]["type"] == "InternalError" and crash["error"]["status"] == 500
    assert "image 1 of request crash" in crash["error"]["message"] and "died" in crash["error"]["message"]
    assert all(records[f"fine{k}"]["ok"] for k in range(1, 7))
    assert stats["counters"].get("crash_looping_items") == 1
    assert len((model_dir / CRASH_LOG).read_text().split()) == 2  # it killed a worker twice, never a third time
    assert elapsed < 80  # not held until the request deadline


def test_consumer_slower_than_its_lease_runs_each_request_once(
    cluster: LocalCluster, model_dir: Path, served: tuple[Path, str]
) -> None:
    _, base = served
    lines = [{"request_id": f"r{k}", "prompt": f"{IMG}", "images": [f"{base}/ok{k}.jpg"]} for k in range(6)]
    # A batch of 3 consumed one after another takes 4.5 s: three leases' worth.
    cfg = PoolConfig(cpu_workers=2, gpu_workers=2, consumer="noop", lease_s=1.5, consumer_delay_s=1.5, pull_batch_size=3)
    with Pool(str(model_dir), _config(), cfg) as pool:
        for line in lines:
            pool.submit(line)
        records = list(pool.results(timeout_s=60))
        stats = pool.stats()
    assert sorted(r["request_id"] for r in records) == sorted(line["request_id"] for line in lines)
    assert all(r["ok"] for r in records)
    assert sum(g["consumed"] for g in stats["gpu_workers"]) == len(lines)  # none consumed twice
    assert stats["counters"].get("lease_expired", 0) == 0
    assert stats["counters"].get("stale_ack", 0) == 0
    assert stats["counters"].get("lease_renewals", 0) > 0


def test_restarted_gpu_worker_gives_back_its_dead_predecessors_leases(
    cluster: LocalCluster, model_dir: Path, served: tuple[Path, str]
) -> None:
    """A GPU worker killed mid-consume: its restarted process hands the leases of the dead one back at once
    (no wait for lease_s, which is long here), and every request still gets exactly one record."""
    import os
    import signal

    import ray

    _, base = served
    lines = [{"request_id": f"k{k}", "prompt": f"{IMG}", "images": [f"{base}/ok{k}.jpg"]} for k in range(4)]
    cfg = PoolConfig(cpu_workers=2, gpu_workers=1, consumer="noop", consumer_delay_s=3.0, pull_batch_size=2, lease_s=120)
    with Pool(str(model_dir), _config(), cfg) as pool:
        for line in lines:
            pool.submit(line)
        deadline = time.monotonic() + 60
        while not ray.get(pool.coordinator.stats.remote())["lease_holders"] and time.monotonic() < deadline:
            time.sleep(0.2)
        held = ray.get(pool.coordinator.stats.remote())["lease_holders"]
        assert held, "no request was pulled"
        os.kill(pool.stats()["gpu_workers"][0]["pid"], signal.SIGKILL)
        records = list(pool.results(timeout_s=90))
        counters = pool.stats()["counters"]
    assert sorted(r["request_id"] for r in records) == sorted(line["request_id"] for line in lines)
    assert all(r["ok"] for r in records)
    assert counters.get("leases_released", 0) >= 1
    assert counters.get("lease_expired", 0) == 0  # given back, not waited out (lease_s is 120 s)
