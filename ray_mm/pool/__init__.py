"""Pool bookkeeping and config with no Ray in it: the pool's config (``config``: ``PoolConfig``,
local cluster specs), worker choice, leases and crash counts (``scheduling``), coordinator shards
(routing, per-shard limits, merged stats) and the coordinator's queues (ready queue, feature slots,
deadlines).

The actors in ``actors/`` drive these; keeping them pure lets the pool's policy be tested
without a cluster. Nothing here imports Ray (``import ray_mm.pool`` stays Ray-free).
"""

from .config import PoolConfig, load_pool_config
from .queues import Deadlines, FeatureSlots, ReadyQueue
from .scheduling import CrashCounts, LeaseTable, WorkerSelector, content_key
from .shards import merge_stats, shard_config, shard_names, shard_of, split_by_shard

__all__ = ["CrashCounts", "Deadlines", "FeatureSlots", "LeaseTable", "PoolConfig", "ReadyQueue", "WorkerSelector",
           "content_key", "load_pool_config", "merge_stats", "shard_config", "shard_names", "shard_of",
           "split_by_shard"]
