"""Pool configuration: sizes, placement, limits and leases (pydantic, loaded from YAML).

The resource names here are the contract with ``cluster_configs/``: CPU nodes
carry ``cpu_node_resource`` slots, GPU-worker nodes carry ``gpu_node_resource``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ..config import RayMMConfig, load_config, read_yaml_mapping, validate_config

DEFAULT_CPU_RESOURCE = "mm_cpu"
DEFAULT_GPU_RESOURCE = "mm_gpu"


class PoolConfig(BaseModel):
    """How the pool is laid out on the cluster and how much work it holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu_workers: int = Field(default=2, ge=1, description="Media worker actors (one decode thread each).")
    gpu_workers: int = Field(default=1, ge=0, description="GPU worker actors pulling finished requests.")
    cpu_node_resource: str = Field(
        default=DEFAULT_CPU_RESOURCE, description="Custom resource that marks CPU nodes; each media worker takes one unit."
    )
    gpu_node_resource: str = Field(
        default=DEFAULT_GPU_RESOURCE,
        description="Custom resource that marks GPU-worker nodes; each GPU worker takes one unit. "
        "On real GPU nodes workers also ask for num_gpus.",
    )
    coordinators: int = Field(
        default=1, ge=1,
        description="Coordinator shards (K). Requests are spread over them by a stable hash of request_id "
        "(ray_mm.pool.shard_of); GPU workers pull from all of them; one shard's failure touches only its own "
        "requests. The limits below are pool totals, divided among the shards, except each worker's "
        "max_inflight_per_worker and max_calls_per_worker, which every shard keeps whole (ray_mm.pool.shards).",
    )
    coordinator_resources: dict[str, float] = Field(
        default_factory=lambda: {"node:__internal_head__": 0.001},
        description="Resources that place the coordinator; by default the head node, away from media workers.",
    )
    use_gpus: bool | None = Field(
        default=None, description="Ask Ray for num_gpus=1 per GPU worker. None: only if the cluster has GPUs."
    )
    worker_num_cpus: float = Field(default=1.0, ge=0, description="CPUs reserved per media worker.")
    freeze_gc_after_start: bool = Field(
        default=True,
        description="Each actor moves what is alive after its start-up (torch, transformers, the processor: "
        "about 440k objects) out of Python's cyclic garbage collector (gc.freeze). Ray triggers full "
        "collections in its workers, and one took about 200 ms of a worker's CPU here without it, under 1 ms with it.",
    )
    reuse_output_buffers: bool = Field(
        default=True,
        description="Media workers build each call's feature arrays in one reused, grow-only buffer (ray_mm.buffers) "
        "instead of fresh allocations whose pages fault in on first touch; Ray copies them into the object store "
        "before the next call. The buffer grows to the largest call's features.",
    )
    max_inflight_requests: int = Field(
        default=64, ge=1, description="Admission limit: requests held by the coordinator; past it submit raises."
    )
    max_inflight_per_worker: int = Field(
        default=4, ge=1,
        description="Items of decode work queued on one media worker at once (items waiting on a slow fetch are not "
        "counted). More room lets more requests' items share a call (less coordinator CPU for cheap items: "
        "cache hits, tiny images) but assigns work early, which unbalances the workers on mixed media "
        "(BENCHMARKS.md, Session 6: 16 cost the bench's mixed workload a third of its throughput). Per "
        "coordinator shard: with K shards a worker may hold K times this many (ray_mm.pool.shards).",
    )
    max_calls_per_worker: int = Field(
        default=2, ge=1,
        description="Media calls in flight to one worker. An item goes out at once while its worker has fewer; "
        "otherwise it waits and shares the worker's next call with the items of other requests "
        "(ray_mm.pool.calls): Ray's per-call cost on the coordinator is then paid per call, not per request. "
        "Per coordinator shard, like max_inflight_per_worker.",
    )
    max_items_per_call: int = Field(default=64, ge=1, description="Media items one media call carries at most.")
    max_fetches_per_worker: int = Field(
        default=16, ge=1,
        description="Fetches one media worker runs concurrently (async, off its decode thread); also how many "
        "slow-fetch items the coordinator parks on one worker.",
    )
    slow_fetch_s: float = Field(
        default=0.5, gt=0,
        description="A media worker tells the coordinator about a fetch still running after this long, which then "
        "stops counting that item as decode work, so slow servers do not hold a worker's decode slots.",
    )
    max_worker_deaths_per_item: int = Field(
        default=2, ge=1,
        description="An item during whose processing this many media workers died fails its request "
        "(InternalError 500) and is not dispatched again.",
    )
    ready_queue_size: int = Field(default=16, ge=1, description="Aligned requests waiting for a GPU worker.")
    pull_batch_size: int = Field(
        default=4, ge=1,
        description="Requests a GPU worker pulls at once; with coordinator shards, each of its pulls (one in flight "
        "per shard) asks for this divided among the shards, rounded up.",
    )
    pull_wait_s: float = Field(
        default=2.0, gt=0, le=5.0,
        description="How long a GPU worker's pull waits at a coordinator for a ready request before it answers "
        "empty (the worker then pulls again). These empty pulls are most of an idle coordinator's CPU: measured "
        "10 ms/s at 0.5 s, 5 ms/s at 2 s, 4 ms/s at 5 s (benchmarks/coordinator_shards_bench.py --idle-only). "
        "/healthz counts a GPU worker alive while it pulls at least every lease_s / 3 + 5 s; Pool.shutdown wakes "
        "waiting pulls, so this does not slow stopping.",
    )
    lease_s: float = Field(default=30.0, gt=0, description="A pulled request not acknowledged within this goes back to the queue.")
    request_timeout_s: float = Field(default=120.0, gt=0, description="End-to-end deadline of one request in the pool.")
    consumer: str = Field(
        default="vision_tower",
        description="GPU-side consumer: 'vision_tower' (the model's encoder from config.json), 'noop' (features "
        "read, nothing run on them, not even uint8 normalisation), 'digest' "
        "(noop plus a sha256 per item's features in the record, for checks), 'module:function' for an engine's "
        "own step (called with the request and its items' feature tensors), or an engine hand-off "
        "'sglang:module:function' / 'sglang-embeds:module:function' / 'vllm:module:function': the function gets "
        "the request in that engine's own form (ray_mm.handoff; the embedding forms run the model's encoder here).",
    )
    consumer_delay_s: float = Field(default=0.0, ge=0, description="Extra sleep per consumed request (tests of backpressure).")
    min_pool_wait_s: float = Field(default=60.0, gt=0, description="How long to wait for the minimum pool to be placed.")
    max_feature_requests: int | None = Field(
        default=None,
        ge=1,
        description="Object-store bound: requests whose features may be in the store at once (dispatched to media "
        "workers and not yet acknowledged or failed). A request waits for a slot before dispatch. Store use is then "
        "at most this times the largest request's feature bytes. None: ready_queue_size + gpu_workers * "
        "pull_batch_size + cpu_workers * max_inflight_per_worker (enough to keep every stage busy).",
    )
    driver_grace_s: float = Field(
        default=15.0,
        gt=0,
        description="Slack the driver allows past request_timeout_s before it writes a RequestTimeoutError record "
        "itself (for a request whose result was lost with the coordinator, for example).",
    )

    def feature_request_limit(self) -> int:
        """The effective ``max_feature_requests``."""
        if self.max_feature_requests is not None:
            return self.max_feature_requests
        return (
            self.ready_queue_size
            + self.gpu_workers * self.pull_batch_size
            + self.cpu_workers * self.max_inflight_per_worker
        )


def load_pool_config(path: str | Path | None) -> tuple[RayMMConfig, PoolConfig]:
    """Read one YAML file holding the core sections and a ``pool:`` section.

    Raises ``ConfigError`` with one line naming the file and the problem (a misspelt pool key
    as ``pool.<key>``, with the nearest valid name).
    """
    if path is None:
        return RayMMConfig(), PoolConfig()
    core = load_config(path)
    return core, validate_config(PoolConfig, core.pool, path, prefix="pool.")


class NodeGroup(BaseModel):
    """A group of identical simulated nodes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    count: int = Field(default=1, ge=0, description="Number of nodes in the group.")
    num_cpus: int = Field(default=1, ge=0, description="Fixed CPU count of each node.")
    resources: dict[str, float] = Field(default_factory=dict, description="Custom resources of each node.")


class LocalClusterSpec(BaseModel):
    """The simulated cluster of ``ray-mm run`` without an address (``cluster_configs/local.yaml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    head: dict[str, int] = Field(default_factory=lambda: {"num_cpus": 1}, description="Head node: its num_cpus.")
    cpu_nodes: NodeGroup = Field(
        default_factory=lambda: NodeGroup(count=2, num_cpus=1, resources={DEFAULT_CPU_RESOURCE: 1}),
        description="CPU nodes carrying the media-worker resource.",
    )
    gpu_nodes: NodeGroup = Field(
        default_factory=lambda: NodeGroup(count=1, num_cpus=1, resources={DEFAULT_GPU_RESOURCE: 4}),
        description="GPU-worker nodes carrying the simulated GPU resource.",
    )
    pool: PoolConfig = Field(default_factory=PoolConfig, description="Pool settings used with this cluster.")


def load_local_cluster_spec(path: str | Path | None) -> LocalClusterSpec:
    """Read a simulated-cluster spec; ``ConfigError`` (one line) for a file or key it cannot use."""
    if path is None:
        return LocalClusterSpec()
    return validate_config(LocalClusterSpec, read_yaml_mapping(path), path)
