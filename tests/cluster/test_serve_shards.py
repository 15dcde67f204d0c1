"""The Serve front end in front of a pool with two coordinator shards: each request goes to the
shard its id hashes to (as the driver routes), answers come back from there, and ``/healthz``
asks every shard."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import pytest
import ray

from actors.local_cluster import LOOPBACK, LocalCluster, free_port
from actors.pool import Pool
from actors.serve import build_app, coordinator_name, start, stop
from ray_mm.config import RayMMConfig
from ray_mm.media.synth import make_image
from ray_mm.models import make_model
from ray_mm.pool import shard_of
from ray_mm.pool.config import PoolConfig
from ray_mm.serve import http_api

IMG = "<|vision_start|><|image_pad|><|vision_end|>"
pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def served(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Pool]]:
    model_dir = make_model(tmp_path_factory.mktemp("model"), "qwen2_vl")
    cfg = PoolConfig(coordinators=2, cpu_workers=2, gpu_workers=1, consumer="noop", request_timeout_s=30)
    settings = http_api.ServeSettings(graceful_shutdown_timeout_s=1)
    with Pool(str(model_dir), RayMMConfig(), cfg) as pool:
        names = coordinator_name(pool)
        assert names == pool.coordinator_names and len(names) == 2
        url = start(build_app(names, model_dir, None, settings, cfg.request_timeout_s), LOOPBACK, free_port())
        try:
            yield url, pool
        finally:
            stop()


def test_requests_go_to_their_shard_and_health_asks_all(served: tuple[str, Pool]) -> None:
    url, pool = served
    uri = "data:image/jpeg;base64," + base64.b64encode(make_image(48, 40, seed=3)).decode()
    ids = [f"sh-{k}" for k in range(12)]
    per_shard = [sum(1 for rid in ids if shard_of(rid, 2) == s) for s in (0, 1)]
    assert min(per_shard) > 0  # both shards get requests
    before = [ray.get(c.stats.remote(), timeout=30)["counters"].get("submitted", 0) for c in pool.coordinators]
    with httpx.Client(base_url=url, timeout=60) as client:
        for rid in ids:
            r = client.post("/v1/preprocess", json={"request_id": rid, "prompt": f"{rid}: {IMG}", "images": [uri]})
            assert r.status_code == 200, r.text
            assert r.json()["request_id"] == rid and r.json()["ok"]
        health = client.get("/healthz")
    after = [ray.get(c.stats.remote(), timeout=30)["counters"].get("submitted", 0) for c in pool.coordinators]
    assert [a - b for a, b in zip(after, before)] == per_shard
    assert health.status_code == 200, health.text
    body = health.json()
    assert body["ok"] and len(body["shards"]) == 2
    assert body["media_workers_alive"] == 2 and body["gpu_workers_alive"] == 1
    assert {h["incarnation"] for h in body["shards"]} == set(ray.get([c.incarnation_id.remote() for c in pool.coordinators]))
