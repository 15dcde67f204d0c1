"""GPU worker actor: pull aligned requests, read features zero-copy, run a consumer, acknowledge.

Pull, not push: a worker asks for a batch only when it has room, which is the
backpressure toward the coordinator. The acknowledgement is what lets the
coordinator drop a request's feature refs; an unacknowledged lease expires
and the request is served again.
"""

from __future__ import annotations

import importlib
import threading
import time
import warnings
from typing import Any

import numpy as np
import ray

from actors import metrics
from ray_mm.pool_config import PoolConfig


class VisionTowerConsumer:
    """Default consumer: the model's encoder built from ``config.json`` (random init)."""

    def __init__(self, model_dir: str, adapter: str | None, device: Any) -> None:
        import torch

        from ray_mm.models import load_adapter

        self.adapter = load_adapter(model_dir, adapter)
        self.module = self.adapter.build_encoder().to(device).eval()
        self.torch = torch

    def __call__(self, request: Any, features: list[dict[str, Any]]) -> int:
        rows = 0
        with self.torch.inference_mode():
            for item in features:
                rows += int(self.adapter.encode(self.module, item).shape[0])
        return rows


def _noop_consumer(request: Any, features: list[dict[str, Any]]) -> int:
    return int(request.placeholder_tokens)


@ray.remote(max_restarts=-1, max_task_retries=-1, max_concurrency=4)
class GpuWorker:
    def __init__(self, coordinator_name: str, model_dir: str, pool_config: dict[str, Any], adapter: str | None, name: str) -> None:
        import torch

        torch.set_num_threads(1)
        self.torch = torch
        self.cfg = PoolConfig.model_validate(pool_config)
        self.coordinator = ray.get_actor(coordinator_name)
        self.name = name
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.node_id = ray.get_runtime_context().get_node_id()
        if self.cfg.consumer == "vision_tower":
            self.consumer: Any = VisionTowerConsumer(model_dir, adapter, self.device)
        elif self.cfg.consumer == "noop":
            self.consumer = _noop_consumer
        else:
            module, _, fn = self.cfg.consumer.partition(":")
            self.consumer = getattr(importlib.import_module(module), fn)
        self.stopping = threading.Event()
        self.consumed = 0
        self.zero_copy_checked = 0
        self.copies_seen = 0
        self.bytes_in = 0

    def ready(self) -> str:
        return self.node_id

    def run(self) -> int:
        """Pull and consume until ``stop``; retried on restart (max_task_retries=-1)."""
        while not self.stopping.is_set():
            batch = ray.get(self.coordinator.pull.remote(self.name, self.cfg.pull_batch_size, 0.5))
            for request in batch:
                summary = self._consume(request)
                ray.get(self.coordinator.ack.remote(self.name, request.request_id, summary))
        return self.consumed

    def _consume(self, request: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        groups = ray.get([ref for ref, _ in request.feature_refs])
        items = [group[k] for group, (_, k) in zip(groups, request.feature_refs)]
        arrays = [a for item in items for a in item.values() if isinstance(a, np.ndarray)]
        zero_copy = all(not a.flags.writeable for a in arrays if a.nbytes > 0)
        self.zero_copy_checked += len(arrays)
        self.copies_seen += sum(1 for a in arrays if a.flags.writeable)
        self.bytes_in += sum(a.nbytes for a in arrays)
        tensors = [{k: self._to_device(v) for k, v in item.items()} for item in items]
        embeddings = self.consumer(request, tensors)
        if self.cfg.consumer_delay_s:
            time.sleep(self.cfg.consumer_delay_s)
        self.consumed += 1
        metrics.stage_seconds("gpu_consume", time.perf_counter() - t0)
        summary: dict[str, Any] = {
            "worker": self.name,
            "node_id": self.node_id,
            "device": str(self.device),
            "embeddings": embeddings,
            "placeholder_tokens": request.placeholder_tokens,
            "zero_copy": zero_copy,
            "consume_s": round(time.perf_counter() - t0, 6),
        }
        if embeddings != request.placeholder_tokens:
            summary["error"] = {
                "type": "AlignmentError",
                "message": f"request {request.request_id}: consumer produced {embeddings} embeddings "
                f"for {request.placeholder_tokens} placeholder tokens",
                "status": 500,
            }
        return summary

    def _to_device(self, array: Any) -> Any:
        if not isinstance(array, np.ndarray):
            return array
        with warnings.catch_warnings():
            # Object-store arrays are read-only views; torch warns but reads them without a copy.
            warnings.simplefilter("ignore", UserWarning)
            tensor = self.torch.from_numpy(array)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    def stop(self) -> None:
        self.stopping.set()

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "node_id": self.node_id,
            "device": str(self.device),
            "consumed": self.consumed,
            "arrays_checked": self.zero_copy_checked,
            "writable_copies": self.copies_seen,
            "bytes_in": self.bytes_in,
        }
