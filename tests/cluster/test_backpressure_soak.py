"""Backpressure and soak on the simulated 4-node cluster (head + 2 CPU nodes + 1 GPU node).

- Backpressure: slow GPU workers, 1000 tiny requests, object-store use sampled during the run
  stays under the bound the pool config implies: ``feature_request_limit()`` requests may
  hold features at once (dispatched, not acknowledged), so store use is at most that many
  times one request's feature object, above the idle baseline.
- Soak: 2000 tiny requests; each media worker's resident memory (VmRSS) at the end is within
  20% of its value after the first 200. The feature cache is off (``cache_bytes=0``) so every
  request is decoded and processed, and a cache filling up is not mistaken for a leak.
"""

from __future__ import annotations

import base64
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
from ray._private.internal_api import get_memory_info_reply, get_state_from_address

from actors.local_cluster import LocalCluster
from actors.pool import Pool
from ray_mm.config import RayMMConfig
from ray_mm.media.synth import make_image
from ray_mm.models import make_model
from ray_mm.pool.config import PoolConfig

IMG = "<|vision_start|><|image_pad|><|vision_end|>"
pytestmark = pytest.mark.cluster
OBJECT_OVERHEAD = 32 << 10  # pickle framing and plasma alignment per feature object (measured about 13 KiB)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("model"), "qwen2_vl")


def lines(n: int, prefix: str, distinct: int = 50) -> Iterator[tuple[str, dict[str, Any]]]:
    uris = ["data:image/jpeg;base64," + base64.b64encode(make_image(48, 40, seed=k)).decode() for k in range(distinct)]
    for k in range(n):
        yield f"line{k}", {"request_id": f"{prefix}{k:04d}", "prompt": f"{k}: {IMG}", "images": [uris[k % distinct]]}


class StoreSampler:
    """Samples the cluster-wide object store (every raylet's plasma store) in a thread.

    ``primary``: bytes of primary copies, the objects pinned because an owner still holds a
    reference (what the pool holds). ``used``: all bytes in plasma, including secondary copies
    (a GPU node's copy of a feature it read), which Ray evicts lazily, only under memory
    pressure: they show the store's cache, not what the pool holds.
    """

    def __init__(self, address: str, every_s: float = 0.05) -> None:
        self.state = get_state_from_address(address)
        self.every_s = every_s
        self.samples: list[int] = []  # primary-copy bytes
        self.used_samples: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def read(self) -> tuple[int, int]:
        stats = get_memory_info_reply(self.state).store_stats
        return int(stats.object_store_bytes_primary_copy), int(stats.object_store_bytes_used)

    def _loop(self) -> None:
        while not self.stop.is_set():
            primary, used = self.read()
            self.samples.append(primary)
            self.used_samples.append(used)
            time.sleep(self.every_s)

    def __enter__(self) -> StoreSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def feature_bytes(record: dict[str, Any]) -> int:
    return sum(math.prod(it["feature_shape"]) * np.dtype(it["feature_dtype"]).itemsize for it in record["items"])


def test_backpressure_object_store_bounded(cluster: LocalCluster, model_dir: Path) -> None:
    total = 1000
    cfg = PoolConfig(cpu_workers=2, gpu_workers=1, consumer="noop", consumer_delay_s=0.01, pull_batch_size=1,
                     ready_queue_size=4, max_inflight_per_worker=2, max_inflight_requests=64)
    limit = cfg.feature_request_limit()  # 4 + 1 * 1 + 2 * 2 = 9 requests with features, of 64 admitted
    assert limit == 9 < cfg.max_inflight_requests
    with Pool(str(model_dir), RayMMConfig(), cfg) as pool:
        sampler = StoreSampler(cluster.address)
        baseline = max(sampler.read()[0] for _ in range(3))
        t0 = time.monotonic()
        with sampler:
            records = list(pool.run(lines(total, "bp")))
        took = time.monotonic() - t0
        stats = pool.stats()
    assert len(records) == total and all(r["ok"] for r in records)
    assert len({r["request_id"] for r in records}) == total
    per_request = max(feature_bytes(r) for r in records) + OBJECT_OVERHEAD  # one item per request
    bound = baseline + limit * per_request
    peak = max(sampler.samples)
    print(f"\nbackpressure: {total} requests in {took:.1f} s ({total / took:.0f}/s); object store peak "
          f"{peak - baseline} B above baseline {baseline} B, bound {bound - baseline} B "
          f"({limit} requests x {per_request} B); {len(sampler.samples)} samples; "
          f"max feature slots used {stats['max_feature_slots_used']}, max ready {stats['max_ready_seen']}; "
          f"all plasma bytes incl. lazily evicted secondary copies: peak {max(sampler.used_samples)} B")
    assert len(sampler.samples) >= 20
    assert peak <= bound, f"object store peak {peak} above bound {bound}"
    assert peak > baseline + per_request  # the sampler did see features held in the store
    assert stats["max_feature_slots_used"] <= limit and stats["max_ready_seen"] <= cfg.ready_queue_size


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def test_soak_media_worker_memory_is_flat(cluster: LocalCluster, model_dir: Path) -> None:
    total, warm = 2000, 200
    cfg = PoolConfig(cpu_workers=2, gpu_workers=1, consumer="noop", pull_batch_size=8, max_inflight_requests=64)
    config = RayMMConfig(cache_bytes=0)
    with Pool(str(model_dir), config, cfg) as pool:
        pids = [m["pid"] for m in pool.stats()["media_workers"]]
        t0 = time.monotonic()
        records: list[dict[str, Any]] = []
        rss_warm: list[int] = []
        for rec in pool.run(lines(total, "soak")):
            records.append(rec)
            if len(records) == warm:
                rss_warm = [rss_kb(p) for p in pids]
        took = time.monotonic() - t0
        rss_end = [rss_kb(p) for p in pids]
        assert [m["pid"] for m in pool.stats()["media_workers"]] == pids  # no worker restarted
    assert len(records) == total and all(r["ok"] for r in records)
    growth = [(end - w) / w for w, end in zip(rss_warm, rss_end)]
    print(f"\nsoak: {total} requests in {took:.1f} s ({total / took:.0f}/s); media worker VmRSS after {warm}: "
          f"{rss_warm} kB, after {total}: {rss_end} kB, growth {[f'{g:+.1%}' for g in growth]}")
    assert all(abs(g) <= 0.20 for g in growth), growth
    assert ray.is_initialized()
