"""The bad-input corpus (tests/bad_input_corpus.py) through the Ray pool.

Every case gets its documented error type and status via ``Pool.run``, the good requests
interleaved with the bad ones succeed, no request is lost or written twice, and no worker
process dies (pids before and after). The corpus's network cases need the test resolver in
every Ray worker: this module starts its own cluster whose job ``runtime_env`` carries the
shim (``Corpus.shim_env()`` and ``install_net_shim_from_env`` as the worker setup hook).
The address policy stays default-deny (``allow_private_addresses: false``).
"""

from __future__ import annotations

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray is imported (conftest does it too)

from collections import Counter  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import ray  # noqa: E402

from actors.local_cluster import LocalCluster, start_local_cluster  # noqa: E402
from actors.pool import Pool  # noqa: E402
from ray_mm.config import RayMMConfig  # noqa: E402
from ray_mm.pool.config import LocalClusterSpec, NodeGroup, PoolConfig  # noqa: E402
from ray_mm.request.jsonl import read_requests  # noqa: E402
from tests.bad_input_corpus import AUDIO, VL, Case, Corpus, build_corpus, check_record, serve_corpus_media, write_requests  # noqa: E402

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Any, Corpus]]:
    tmp = tmp_path_factory.mktemp("bad_input_pool")
    with serve_corpus_media(tmp) as server:
        yield tmp, server, build_corpus(tmp, server.base_url)


@pytest.fixture(scope="module")
def cluster(corpus_env: tuple[Path, Any, Corpus]) -> Iterator[LocalCluster]:
    """Head + 2 CPU nodes + 1 GPU node on 127.0.0.1; every worker gets the corpus's network shim."""
    _, _, corpus = corpus_env
    spec = LocalClusterSpec(
        cpu_nodes=NodeGroup(count=2, num_cpus=1, resources={"mm_cpu": 1}),
        gpu_nodes=NodeGroup(count=1, num_cpus=1, resources={"mm_gpu": 4}),
    )
    local = start_local_cluster(spec, connect=False)
    runtime_env = {
        "env_vars": {**corpus.shim_env(), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)},
        "worker_process_setup_hook": "tests.bad_input_corpus.install_net_shim_from_env",
    }
    ray.init(address=local.address, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             runtime_env=runtime_env)
    local.cluster.wait_for_nodes()
    try:
        yield local
    finally:
        local.shutdown()


def pool_lines(tmp: Path, family: str, cases: list[Case]) -> list[tuple[str, Any]]:
    """(fallback id, line) per case, read from one JSONL file exactly as the CLI reads it
    (a line that is not JSON becomes its RequestError, which the pool turns into the record)."""
    lines = list(read_requests(write_requests(tmp / f"pool_{family}.jsonl", cases)))
    assert len(lines) == len(cases)
    return lines


def worker_pids(pool: Pool) -> list[int]:
    stats = pool.stats()
    return [m["pid"] for m in stats["media_workers"]] + [g["pid"] for g in stats["gpu_workers"]]


@pytest.mark.parametrize("family", [VL, AUDIO])
def test_corpus_through_pool(
    family: str, cluster: LocalCluster, corpus_env: tuple[Path, Any, Corpus], qwen2_vl_dir: Path, qwen2_audio_dir: Path
) -> None:
    tmp, server, corpus = corpus_env
    model = {VL: qwen2_vl_dir, AUDIO: qwen2_audio_dir}[family]
    cases = corpus.select(family)
    lines = pool_lines(tmp, family, cases)
    config = RayMMConfig.model_validate(corpus.config_dict())
    assert config.media.allow_private_addresses is False
    cfg = PoolConfig(cpu_workers=2, gpu_workers=1, consumer="noop", max_inflight_requests=16, request_timeout_s=60)
    with Pool(str(model), config, cfg) as pool:
        before = worker_pids(pool)
        server.reset()
        records = list(pool.run(lines))
        after = worker_pids(pool)
        stats = pool.stats()
    assert before == after, "a worker process died (pids changed)"
    assert all(w.get("faults", 0) == 0 for w in stats["gpu_workers"])
    # No request lost or written twice.
    want = [case.request_id or fallback for case, (fallback, _) in zip(cases, lines)]
    counts = Counter(r["request_id"] for r in records)
    assert sorted(counts) == sorted(want) and max(counts.values()) == 1
    by_id = {r["request_id"]: r for r in records}
    problems = []
    for case, (fallback, _), rid in zip(cases, lines, want):
        problems += [f"{case.name}: {p}" for p in check_record(case, by_id[rid], fallback)]
    # Refused SSRF targets on the loopback server got no request; other routes the expected count.
    problems += [f"{c.name}: {prefix} requested {server.hits(prefix)} times, expected {n}"
                 for c in cases for prefix, n in c.expect_hits if server.hits(prefix) != n]
    assert not problems, "\n".join(problems)
    good = [c for c in cases if c.ok]
    assert good and all(by_id[c.request_id or ""]["ok"] for c in good if c.request_id)
    assert stats["inflight"] == stats["leased"] == stats["feature_slots_used"] == 0
