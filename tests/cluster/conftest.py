"""One simulated multi-node cluster per test module (Ray start-up costs seconds)."""

from __future__ import annotations

import os

# Before anything imports Ray: every node and this driver on 127.0.0.1.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402

from actors.local_cluster import LocalCluster, start_local_cluster  # noqa: E402
from ray_mm.pool.config import LocalClusterSpec, NodeGroup  # noqa: E402


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """Head + 2 CPU nodes (one media-worker slot each) + 1 GPU-worker node, all on 127.0.0.1."""
    spec = LocalClusterSpec(
        cpu_nodes=NodeGroup(count=2, num_cpus=1, resources={"mm_cpu": 1}),
        gpu_nodes=NodeGroup(count=1, num_cpus=1, resources={"mm_gpu": 4}),
    )
    local = start_local_cluster(spec)
    try:
        yield local
    finally:
        local.shutdown()
