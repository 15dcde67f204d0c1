"""Engine consumers for the pool tests: they send what the GPU worker hands them to a named actor.

The GPU worker imports these by name (``PoolConfig.consumer = "vllm:tests.cluster.handoff_sink:keep"``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import ray

from ray_mm import handoff

SINK = "ray_mm_test_handoff_sink"


@ray.remote(num_cpus=0)
class Sink:
    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []

    def put(self, payload: dict[str, Any]) -> None:
        self.payloads.append(payload)

    def take(self) -> list[dict[str, Any]]:
        return self.payloads


def keep(payload: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """Keep the payload, its arrays as numpy on the host (what an engine call would read), for the test to check."""
    ray.get(ray.get_actor(SINK).put.remote(_host(payload)))
    return {"seen": len(record["items"])}


def _host(value: Any) -> Any:
    if isinstance(value, handoff.PendingEmbeddings):
        return dict(value)
    if hasattr(value, "detach"):
        return np.array(value.detach().cpu().numpy())
    if isinstance(value, np.ndarray):
        return np.array(value)
    if isinstance(value, dict):
        return {k: _host(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_host(v) for v in value]
    return value
