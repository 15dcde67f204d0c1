"""Pool bookkeeping with no Ray in it: coordinator shards (routing, per-shard limits, merged
stats) and the coordinator's queues (ready queue, feature slots, deadlines).

The actors in ``actors/`` drive these; keeping them pure lets the pool's policy be tested
without a cluster (as ``ray_mm.scheduling`` does for worker choice and leases).
"""

from .queues import Deadlines, FeatureSlots, ReadyQueue
from .shards import merge_stats, shard_config, shard_names, shard_of, split_by_shard

__all__ = ["Deadlines", "FeatureSlots", "ReadyQueue", "merge_stats", "shard_config", "shard_names", "shard_of",
           "split_by_shard"]
