"""CPU cost of moving one request's features from a CPU node to a GPU node (not a timed test).

On the local simulated cluster (every node on 127.0.0.1, the same cores): an actor on a CPU
node returns a float32 array of ``--mb`` MB (58 MB: the mean vision request of ``ray-mm bench``
as float32; 15 MB as uint8), an actor on the GPU node ``ray.get``s it. Reports wall time per
transfer and CPU per transfer split as ``ray-mm bench`` splits it: ``ray_workers`` (the put in
the producer, the read in the consumer) and ``ray_system`` (raylets and object managers moving
the bytes). Set ``RAY_object_manager_default_chunk_size`` to try other chunk sizes.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from actors.local_cluster import start_local_cluster
from ray_mm.bench.cpu import TreeCpu as _TreeCpu
from ray_mm.pool.config import LocalClusterSpec

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=float, default=58.4)
    parser.add_argument("--n", type=int, default=30)
    args = parser.parse_args()
    cluster = start_local_cluster(LocalClusterSpec(), object_store_bytes=1 << 30)
    import ray

    @ray.remote(resources={"mm_cpu": 1})
    class Producer:
        def make(self, k: int) -> np.ndarray:
            return np.full((int(args.mb * 1e6) // 4,), k, dtype=np.float32)

    @ray.remote(num_cpus=0, resources={"mm_gpu": 1})
    class Consumer:
        def read(self, refs: list) -> float:  # type: ignore[type-arg]
            return float(ray.get(refs[0])[0])

    try:
        producer, consumer = Producer.remote(), Consumer.remote()  # type: ignore[attr-defined]
        ray.get(consumer.read.remote([producer.make.remote(0)]))
        cpu = _TreeCpu()
        c0, t0 = cpu.sample(), time.perf_counter()
        for k in range(args.n):
            assert ray.get(consumer.read.remote([producer.make.remote(k)])) == k
        wall = time.perf_counter() - t0
        spent = _TreeCpu.delta(c0, cpu.sample())
    finally:
        cluster.shutdown()
    out = {"mb": args.mb, "n": args.n, "wall_ms_per_transfer": wall / args.n * 1e3,
           "cpu_ms_per_transfer": {k: v / args.n * 1e3 for k, v in spent.items()}}
    print(json.dumps(out, indent=2))
