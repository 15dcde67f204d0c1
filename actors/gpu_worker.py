"""GPU worker actor: pull aligned requests, read features zero-copy, run a consumer, acknowledge.

Pull, not push: a worker asks for a batch only when it has room, which is the
backpressure toward the coordinator. The acknowledgement is what lets the
coordinator let the media workers drop a request's features; an unacknowledged lease expires
and the request is served again.

With K coordinator shards the worker keeps one pull in flight per shard (each asks for
``ceil(pull_batch_size / K)``), serves whichever answers, and sends each acknowledgement,
renewal and hand-back to the shard that leased the request: a shard with work is never
starved by an idle or restarting one.
"""

from __future__ import annotations

import collections
import gc
import hashlib
import importlib
import logging
import math
import os
import threading
import time
import warnings
from typing import Any

import numpy as np
import ray

from actors import metrics
from ray_mm.handoff.consumers import EngineConsumer, parse_consumer
from ray_mm.handoff.staging import HostStaging
from ray_mm.pool import holders_by_worker
from ray_mm.pool.config import PoolConfig

logger = logging.getLogger("ray_mm.actors.gpu_worker")


class VisionTowerConsumer:
    """Default consumer: the model's encoder built from ``config.json`` (random init)."""

    def __init__(self, model_dir: str, adapter: str | None, device: Any) -> None:
        import torch

        from ray_mm.models import load_adapter

        self.adapter = load_adapter(model_dir, adapter)
        self.module = self.adapter.build_encoder().to(device).eval()
        self.torch = torch

    def __call__(self, request: Any, features: list[dict[str, Any]]) -> int:
        return sum(int(e.shape[0]) for e in self.embed(features))

    def embed(self, features: list[dict[str, Any]]) -> list[Any]:
        """Each item's ``(num_tokens, hidden)`` embeddings; a precomputed_embedding item's are its own."""
        with self.torch.inference_mode():
            return [item["embedding"] if "embedding" in item else self.adapter.encode(self.module, item) for item in features]


class _FeaturesUnavailable(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _first_shape_mismatch(items: list[dict[str, Any]], described: list[dict[str, Any]]) -> int | None:
    """The first item whose arrays include none of the shape its record names (features routed to
    the wrong item), or None."""
    if len(items) != len(described):
        return min(len(items), len(described))
    for k, (item, rec) in enumerate(zip(items, described)):
        want = rec.get("feature_shape")
        if want is not None and tuple(want) not in {tuple(a.shape) for a in item.values() if isinstance(a, np.ndarray)}:
            return k
    return None


def feature_digest(item: dict[str, Any]) -> str:
    """sha256 of one item's feature arrays (names, dtypes, shapes and bytes), to compare with in-process output."""
    digest = hashlib.sha256()
    for key in sorted(item):
        value = item[key]
        if isinstance(value, np.ndarray):
            digest.update(f"{key}|{value.dtype}|{value.shape}|".encode())
            digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def _noop_consumer(request: Any, features: list[dict[str, Any]]) -> int:
    return int(request.placeholder_tokens)


@ray.remote(max_restarts=-1, max_task_retries=-1, max_concurrency=4)
class GpuWorker:
    def __init__(self, coordinator_name: str | list[str], model_dir: str, pool_config: dict[str, Any], adapter: str | None,
                 name: str) -> None:
        import torch

        torch.set_num_threads(1)
        self.torch = torch
        self.cfg = PoolConfig.model_validate(pool_config)
        names = [coordinator_name] if isinstance(coordinator_name, str) else list(coordinator_name)
        self.coordinators = [ray.get_actor(n) for n in names]  # one per shard, in shard order
        self.name = name
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.staging = HostStaging(self.device) if self.device.type == "cuda" else None
        self.node_id = ray.get_runtime_context().get_node_id()
        self.model_dir, self.adapter_name = model_dir, adapter
        self._adapter: Any = None  # loaded on first use (see the adapter property)
        self.engine: EngineConsumer | None = None
        engine = parse_consumer(self.cfg.consumer)
        if engine is not None:  # "sglang:module:fn" and friends: the engine's own form, to the user's function
            form, target = engine
            tower = VisionTowerConsumer(model_dir, adapter, self.device) if form != "sglang" else None
            self.engine = EngineConsumer(form, target, self.adapter, tower)
            self.consumer: Any = None
        elif self.cfg.consumer == "vision_tower":
            self.consumer = VisionTowerConsumer(model_dir, adapter, self.device)
        elif self.cfg.consumer in ("noop", "digest"):
            self.consumer = _noop_consumer  # not called: see _consume
        else:
            module, _, fn = self.cfg.consumer.partition(":")
            self.consumer = getattr(importlib.import_module(module), fn)
        self.stopping = threading.Event()
        self.held: dict[str, tuple[int, int]] = {}  # request_id -> (shard, lease token), for renewal
        self.media_workers: dict[str, Any] = {}  # name -> handle, looked up when first needed
        self.held_lock = threading.Lock()
        self.consumed = 0
        self.zero_copy_checked = 0
        self.copies_seen = 0
        self.bytes_in = 0
        self.faults = 0
        if self.cfg.freeze_gc_after_start:
            gc.freeze()  # see PoolConfig.freeze_gc_after_start

    @property
    def adapter(self) -> Any:
        """The model's adapter, loaded on first use: the engine, vision-tower and user consumers need it
        (``finish_features``); a ``noop`` or ``digest`` consumer never does, and loading it is the
        processor's imports, about 1.8 CPU-s of the worker's start-up."""
        if self._adapter is None:
            from ray_mm.models import load_adapter

            self._adapter = load_adapter(self.model_dir, self.adapter_name)
        return self._adapter

    def ready(self) -> str:
        return self.node_id

    def run(self) -> int:
        """Pull and consume until ``stop``; retried on restart (max_task_retries=-1).

        Leases of what it holds are renewed from a side thread while it consumes.
        Faults never end the loop: a coordinator that is restarting is waited for (its shard only;
        the others go on), features that cannot be read within the lease are handed back
        (``nack``: the coordinator dispatches the request's media again), and a consumer that
        raises gives an InternalError record for that request only. Acknowledgements ride on the
        next pull to the shard that leased the request, sent once everything that shard's last
        pull brought is served (kept and sent again if that pull fails; the coordinator ignores a
        repeated one). With one shard this is: pull, serve the batch, pull again with its acks.
        """
        shards = len(self.coordinators)
        per_pull = max(1, math.ceil(self.cfg.pull_batch_size / shards))
        acks: list[list[tuple[str, dict[str, Any], int]]] = [[] for _ in range(shards)]
        sent: dict[Any, tuple[int, list[tuple[str, dict[str, Any], int]]]] = {}  # pull ref -> (shard, acks on it)
        todo: collections.deque[tuple[int, Any]] = collections.deque()  # (shard, request) pulled, not served
        unserved = [0] * shards
        retry_at = [0.0] * shards
        # This process holds nothing yet: leases under this name are a dead predecessor's.
        for coordinator in self.coordinators:
            self._tell(coordinator.release_holder.remote(self.name))
        renewer = threading.Thread(target=self._renew_leases, name="ray-mm-lease-renewal", daemon=True)
        renewer.start()

        def read(timeout: float) -> None:
            """Take in the pulls that answered (waiting up to ``timeout`` for the first)."""
            refs = list(sent)
            done, _ = ray.wait(refs, num_returns=1, timeout=timeout) if timeout > 0 else ([], refs)
            if len(refs) > 1 or timeout <= 0:  # and any other that answered meanwhile
                done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in done:
                shard, its_acks = sent.pop(ref)
                try:
                    batch = ray.get(ref)
                except ray.exceptions.RayError:
                    self.faults += 1
                    acks[shard][:0] = its_acks  # sent again with the next pull to that shard
                    retry_at[shard] = time.monotonic() + 0.2
                    continue
                with self.held_lock:  # the acks went with that pull; what it brought is held from now on
                    for request_id, _, _ in its_acks:
                        self.held.pop(request_id, None)
                    self.held.update((request.request_id, (shard, request.lease)) for request in batch)
                todo.extend((shard, request) for request in batch)
                unserved[shard] += len(batch)

        while True:
            stopping = self.stopping.is_set()
            now = time.monotonic()
            busy = {shard for shard, _ in sent.values()}
            for shard in range(shards):
                if not stopping and shard not in busy and not unserved[shard] and now >= retry_at[shard]:
                    ref = self.coordinators[shard].pull.remote(self.name, per_pull, self.cfg.pull_wait_s, acks[shard])
                    sent[ref] = (shard, acks[shard])
                    acks[shard] = []
            if todo:
                shard, request = todo.popleft()
                unserved[shard] -= 1
                if (ack := self._serve(shard, request)) is not None:
                    acks[shard].append(ack)
                if shards > 1 and sent:
                    read(0.0)  # pulls of other shards that answered: held (renewed) from now on
            elif sent:
                waits = [t - now for t in retry_at if t > now]
                read(min([self.cfg.lease_s, *waits]))
            elif stopping:
                break
            else:
                time.sleep(max(0.0, min(retry_at) - now))
        for shard, its_acks in enumerate(acks):
            if its_acks:
                self._tell(self.coordinators[shard].pull.remote(self.name, 0, 0.0, its_acks))
        return self.consumed

    def _renew_leases(self) -> None:
        """Renew the leases of everything held (being consumed, or acked but the ack not yet sent)
        three times per ``lease_s``, each at the shard that granted it, so a consumer slower than
        the lease keeps its requests; a worker that dies or hangs stops renewing and its leases expire."""
        period = self.cfg.lease_s / 3
        while not self.stopping.wait(period):
            with self.held_lock:
                held = list(self.held.items())
            if not held:
                continue
            by_shard: dict[int, list[tuple[str, int]]] = {}
            for request_id, (shard, lease) in held:
                by_shard.setdefault(shard, []).append((request_id, lease))
            for shard, leases in by_shard.items():
                try:
                    ray.get(self.coordinators[shard].renew.remote(self.name, leases), timeout=period)
                except (ray.exceptions.RayError, TimeoutError):
                    self.faults += 1
                    logger.warning("%s: could not renew %d lease(s) at coordinator shard %d", self.name, len(leases), shard)

    def _serve(self, shard: int, request: Any) -> tuple[str, dict[str, Any], int] | None:
        """Consume one request (leased by coordinator ``shard``); its acknowledgement, or None when
        it was handed back."""
        try:
            summary = self._consume(request)
        except _FeaturesUnavailable as exc:
            self.faults += 1
            logger.warning("request %s: features unavailable (%s); handing it back", request.request_id, exc.reason)
            self._tell(self.coordinators[shard].nack.remote(self.name, request.request_id, request.lease, exc.reason))
            with self.held_lock:
                self.held.pop(request.request_id, None)
            return None
        except Exception as exc:  # a consumer fault fails this request only
            self.faults += 1
            logger.exception("request %s: GPU consumer fault", request.request_id)
            summary = {"worker": self.name, "node_id": self.node_id, "error": {
                "type": "InternalError", "status": 500,
                "message": f"request {request.request_id}: GPU consumer fault ({type(exc).__name__})"}}
        return request.request_id, summary, request.lease

    def _tell(self, ref: Any) -> None:
        """Best effort: a lost ack only means the lease expires and the request is served again."""
        try:
            ray.get(ref, timeout=self.cfg.lease_s)
        except (ray.exceptions.RayError, TimeoutError):
            self.faults += 1

    def _fetch(self, request: Any) -> list[Any]:
        """The request's items' feature dicts, read zero-copy: the refs of each media call's list are
        taken from the media worker that holds them (one ``take`` per worker), then read (one
        ``ray.get``). A worker that died or restarted since (its lists are gone with it), or a read
        that does not finish within the lease, sends the request back (``nack``)."""
        by_worker = holders_by_worker(request.feature_refs)
        holders = [(name, key) for name, keys in by_worker.items() for key in keys]
        try:
            taken = ray.get([self._media_worker(name).take.remote(keys) for name, keys in by_worker.items()],
                            timeout=self.cfg.lease_s)
            refs = {(name, key): ref for (name, keys), got in zip(by_worker.items(), taken) for key, ref in zip(keys, got)}
            if any(ref is None for ref in refs.values()):
                raise _FeaturesUnavailable("features_gone")
            lists = dict(zip(holders, ray.get([refs[h] for h in holders], timeout=self.cfg.lease_s)))
        except (ray.exceptions.GetTimeoutError, TimeoutError):
            raise _FeaturesUnavailable("fetch_timeout") from None
        except (ray.exceptions.OwnerDiedError, ray.exceptions.RayActorError):
            raise _FeaturesUnavailable("owner_died") from None
        except ray.exceptions.ObjectLostError:
            raise _FeaturesUnavailable("object_lost") from None
        except ray.exceptions.RayError:  # the holding media worker failed for good
            raise _FeaturesUnavailable("producer_failed") from None
        return [lists[holder][k] for holder, k in request.feature_refs]

    def _media_worker(self, name: str) -> Any:
        if name not in self.media_workers:
            self.media_workers[name] = ray.get_actor(name)
        return self.media_workers[name]

    def _consume(self, request: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        items = self._fetch(request)
        mismatch = _first_shape_mismatch(items, request.record.get("items", []))
        if mismatch is not None:  # the features read are not the ones the record describes
            return {"worker": self.name, "node_id": self.node_id, "error": {
                "type": "AlignmentError", "status": 500,
                "message": f"request {request.request_id}: item {mismatch} features do not have the aligned item's shape"}}
        arrays = [a for item in items for a in item.values() if isinstance(a, np.ndarray)]
        zero_copy = all(not a.flags.writeable for a in arrays if a.nbytes > 0)
        self.zero_copy_checked += len(arrays)
        self.copies_seen += sum(1 for a in arrays if a.flags.writeable)
        self.bytes_in += sum(a.nbytes for a in arrays)
        if self.cfg.consumer in ("noop", "digest"):
            # Pulled and read, nothing run on them, not even finishing uint8 pixels: that is GPU work,
            # and on a simulated GPU node it would take CPU from the media workers it is measured against.
            embeddings = _noop_consumer(request, [])
        else:
            # uint8 transport: the resized pixels are rescaled, normalised and patchified here, on the
            # device, into the processor's float32 values (identity for float32 features).
            tensors = [self.adapter.finish_features(item) for item in self._to_device(items)]
            engine_answer = None
            if self.engine is not None:
                embeddings, engine_answer = self.engine(request.record, tensors)
            else:
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
        if self.cfg.consumer == "digest":
            summary["feature_digests"] = [feature_digest(item) for item in items]
        if self.engine is not None:
            summary["engine"] = {"form": self.engine.form, "answer": engine_answer}
        if embeddings != request.placeholder_tokens:
            summary["error"] = {
                "type": "AlignmentError",
                "message": f"request {request.request_id}: consumer produced {embeddings} embeddings "
                f"for {request.placeholder_tokens} placeholder tokens",
                "status": 500,
            }
        return summary

    def _to_device(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The items' arrays as tensors on the device: staged through one reused pinned buffer on
        CUDA; zero-copy views of the object store on CPU."""
        if self.staging is None:
            with warnings.catch_warnings():
                # Object-store arrays are read-only views; torch warns but reads them without a copy.
                warnings.simplefilter("ignore", UserWarning)
                return [{k: self.torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in item.items()}
                        for item in items]
        keys = [(i, k) for i, item in enumerate(items) for k, v in item.items() if isinstance(v, np.ndarray)]
        moved = self.staging.to_device([items[i][k] for i, k in keys])
        out = [dict(item) for item in items]
        for (i, k), tensor in zip(keys, moved):
            out[i][k] = tensor
        return out

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
            "staging_allocations": None if self.staging is None else self.staging.allocations,
            "faults": self.faults,
            "pid": os.getpid(),
        }
