"""Pool start-up cost: wall time of ``Pool(...)`` and the CPU of the whole process tree while it starts
(not a timed test). Local simulated cluster on 127.0.0.1, the bench's tiny Qwen2-VL model, a noop
consumer, as ``ray-mm bench`` starts its pools.

    python benchmarks/pool_start_bench.py --starts 2 --coordinators 1
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from actors.pool import Pool
from ray_mm.bench.cpu import TreeCpu
from ray_mm.bench.micro_media import make_bench_model
from ray_mm.bench.phases import start_cluster
from ray_mm.config import RayMMConfig
from ray_mm.pool.config import PoolConfig

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--starts", type=int, default=2)
    parser.add_argument("--coordinators", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="media workers")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = str(make_bench_model(Path(tmp) / "model"))
        cluster = start_cluster()
        runs = []
        try:
            time.sleep(2.0)  # the cluster's own start-up settles
            for _ in range(args.starts):
                cpu = TreeCpu()
                c0, t0 = cpu.sample(), time.perf_counter()
                pool = Pool(model, RayMMConfig(), PoolConfig(cpu_workers=args.workers, gpu_workers=1, consumer="noop",
                                                              coordinators=args.coordinators))
                wall = time.perf_counter() - t0
                delta = TreeCpu.delta(c0, cpu.sample())
                pool.shutdown()
                runs.append({"wall_s": round(wall, 2), "cpu_s": {k: round(v, 2) for k, v in delta.items()}})
                print(json.dumps(runs[-1]), flush=True)
                time.sleep(1.0)
        finally:
            cluster.shutdown()
