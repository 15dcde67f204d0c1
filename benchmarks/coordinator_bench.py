"""Coordinator CPU per 4-image request on the local simulated cluster (not a timed test).

Runs only the pool's coordinator-CPU phase of ``ray-mm bench``: small 640x480 JPEG requests, so
the media workers are not the bottleneck and the coordinator's share is visible.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from ray_mm.bench.micro_media import make_bench_model
from ray_mm.bench.phases import start_cluster as _start_cluster
from ray_mm.bench.pool import run_pool
from ray_mm.bench.workload import Workload, coordinator_lines, write_bench_media
from ray_mm.cli.demo import serve_directory
from ray_mm.config import RayMMConfig

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        names = write_bench_media(work / "media", audio=False)
        model = str(make_bench_model(work / "model"))
        core = RayMMConfig()
        core = core.model_copy(update={"media": core.media.model_copy(update={"allow_private_addresses": True})})
        with serve_directory(work / "media") as base:
            lines = coordinator_lines(base, names, args.requests)
            cluster = _start_cluster()
            try:
                warm = Workload("coord", model, core, [(f"w{r}", {**line, "request_id": f"w{r}"}) for r, line in lines[:8]])
                result = run_pool(warm, args.workers, "coordinator", lines, idle_s=3.0).summary()
            finally:
                cluster.shutdown()
    keys = [k for k in result if k.startswith("coordinator")]
    print(json.dumps({k: result[k] for k in keys}, indent=2))
