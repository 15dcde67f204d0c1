"""Coordinator actor (one shard of the pool's coordinators): admission, tokenization, media
calls, alignment, ready queue, leases, and the per-request waits of the HTTP front end
(``submit_and_wait``, ``health``: ``actors/serve.py``).

It awaits only item *metadata*; feature objects stay in the object store and travel as
ObjectRefs to the GPU workers. Every decision about a request is made by the pure
``ray_mm.pool.ShardState`` (built from ``calls``, ``scheduling``, ``queues`` and ``requests``,
unit-tested without a cluster); this actor holds only the asyncio waits, the Ray calls and the
metrics. With ``PoolConfig.coordinators = K`` there are K of these, each holding only the requests
whose id hashes to it (``ray_mm.pool.shard_of``) and the limits of its share (``shard_config``).
"""

from .actor import Coordinator

__all__ = ["Coordinator"]
