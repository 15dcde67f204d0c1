"""Coordinator actor (one shard of the pool's coordinators): admission, tokenization, media
calls, alignment, ready queue, leases, and the per-request waits of the HTTP front end
(``submit_and_wait``, ``health``: ``actors/serve.py``).

It awaits only item *metadata*; feature objects stay in the object store and travel as
ObjectRefs to the GPU workers. Policy and bookkeeping live in pure classes in ``ray_mm.pool``
(media calls shared by several requests: ``calls``; worker choice, leases, crash counts:
``scheduling``; ready queue, feature slots, deadlines: ``queues``; a request from admission to
ready: ``requests``; shard routing: ``shards``); this actor holds the asyncio waits and the Ray
calls. With ``PoolConfig.coordinators = K`` there are K of these, each holding only the requests
whose id hashes to it (``ray_mm.pool.shard_of``) and the limits of its share (``shard_config``).
"""

from .actor import Coordinator

__all__ = ["Coordinator"]
