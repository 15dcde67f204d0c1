"""Pool bookkeeping and config with no Ray in it: the pool's config (``config``: ``PoolConfig``,
local cluster specs), worker choice, leases and crash counts (``scheduling``), coordinator shards
(routing, per-shard limits, merged stats), the coordinator's queues (ready queue, feature slots,
deadlines), its media calls (``calls``: items of several requests per call) and a request's state
from admission to ready (``requests``), and a shard's whole bookkeeping built from them: every
decision about a request from admission to its one record (``shard_state``).

The actors in ``actors/`` drive these; keeping them pure lets the pool's policy be tested
without a cluster. Nothing here imports Ray (``import ray_mm.pool`` stays Ray-free).
"""

from .calls import Call, CallPlanner, HeldFeatures, Ticket
from .config import PoolConfig, load_pool_config
from .queues import Deadlines, FeatureSlots, ReadyQueue
from .requests import InflightRequest, ReadyOutcome, ReadyRequest, build_ready, first_error, holders_by_worker
from .scheduling import CrashCounts, LeaseTable, WorkerSelector, content_key
from .shard_state import Freed, Settled, ShardState
from .shards import merge_stats, shard_config, shard_names, shard_of, split_by_shard

__all__ = ["Call", "CallPlanner", "CrashCounts", "Deadlines", "FeatureSlots", "Freed", "HeldFeatures", "InflightRequest",
           "LeaseTable", "PoolConfig", "ReadyOutcome", "ReadyQueue", "ReadyRequest", "Settled", "ShardState", "Ticket", "WorkerSelector",
           "build_ready", "content_key", "first_error", "holders_by_worker", "load_pool_config", "merge_stats",
           "shard_config", "shard_names", "shard_of", "split_by_shard"]
