"""A simulated multi-node Ray cluster on one machine, bound to 127.0.0.1.

Head (coordinator, driver), ``cpu_nodes`` CPU nodes carrying the pool's CPU
resource, and ``gpu_nodes`` GPU-worker nodes carrying the simulated GPU
resource. Used by tests and by ``ray-mm run`` without an address.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ray_mm.pool_config import DEFAULT_CPU_RESOURCE, LocalClusterSpec

LOOPBACK = "127.0.0.1"
# Features above this many bytes go to the shared object store instead of being
# returned inline to the caller, so feature bytes never pass through the coordinator.
INLINE_OBJECT_LIMIT = 4096


def loopback_env() -> None:
    """Make Ray pick 127.0.0.1 for every node it starts from this process."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["RAY_max_direct_call_object_size"] = str(INLINE_OBJECT_LIMIT)


@dataclass
class LocalCluster:
    cluster: Any
    cpu_nodes: list[Any]
    gpu_nodes: list[Any]

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    def add_cpu_node(self, num_cpus: int = 1, slots: int = 1, resource: str = DEFAULT_CPU_RESOURCE) -> Any:
        node = self.cluster.add_node(
            num_cpus=num_cpus, resources={resource: slots}, node_ip_address=LOOPBACK, include_dashboard=False
        )
        self.cpu_nodes.append(node)
        return node

    def remove_node(self, node: Any) -> None:
        self.cluster.remove_node(node)
        for nodes in (self.cpu_nodes, self.gpu_nodes):
            if node in nodes:
                nodes.remove(node)

    def shutdown(self) -> None:
        import ray

        ray.shutdown()
        self.cluster.shutdown()


def start_local_cluster(
    spec: LocalClusterSpec | None = None, object_store_bytes: int = 256 << 20, connect: bool = True
) -> LocalCluster:
    """Start the head and nodes of ``spec``, all on 127.0.0.1, and connect this driver to it."""
    spec = spec or LocalClusterSpec()
    loopback_env()
    import ray
    from ray.cluster_utils import Cluster

    common = {"node_ip_address": LOOPBACK, "include_dashboard": False, "object_store_memory": object_store_bytes}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            **common,
            "num_cpus": spec.head.get("num_cpus", 1),
            "_system_config": {"max_direct_call_object_size": INLINE_OBJECT_LIMIT},
        },
    )
    local = LocalCluster(cluster, [], [])
    for _ in range(spec.cpu_nodes.count):
        node = cluster.add_node(**common, num_cpus=spec.cpu_nodes.num_cpus, resources=dict(spec.cpu_nodes.resources))
        local.cpu_nodes.append(node)
    for _ in range(spec.gpu_nodes.count):
        node = cluster.add_node(**common, num_cpus=spec.gpu_nodes.num_cpus, resources=dict(spec.gpu_nodes.resources))
        local.gpu_nodes.append(node)
    if connect:
        ray.init(address=cluster.address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        cluster.wait_for_nodes()
    return local
