"""Pool with and without ``freeze_gc_after_start``, side by side on one cluster (not a timed test).

Alternates the two settings for ``--rounds`` rounds on the bench's image and video workload and
prints, per setting, the median of requests/s and of the coordinator's CPU per request (process
CPU less its idle rate), plus their ratios. Ray triggers full garbage collections in its workers;
with the start-up heap frozen they skip about 440k objects.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from ray_mm.bench.micro_media import make_bench_model
from ray_mm.bench.phases import start_cluster as _start_cluster
from ray_mm.bench.pool import run_pool
from ray_mm.bench.workload import Workload, coordinator_lines, vision_lines, write_bench_media
from ray_mm.cli.demo import serve_directory
from ray_mm.config import RayMMConfig

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image-requests", type=int, default=24)
    parser.add_argument("--video-requests", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"frozen": [], "not_frozen": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        names = write_bench_media(work / "media", audio=False)
        model = str(make_bench_model(work / "model"))
        core = RayMMConfig(cache_bytes=0)
        core = core.model_copy(update={"media": core.media.model_copy(update={"allow_private_addresses": True})})
        with serve_directory(work / "media") as base:
            w = Workload("vision", model, core, vision_lines(base, names, args.image_requests, args.video_requests))
            coord = coordinator_lines(base, names, 24)
            cluster = _start_cluster()
            try:
                for _ in range(args.rounds):
                    for label, freeze in (("frozen", True), ("not_frozen", False)):
                        r = run_pool(w, 2, label, coord, idle_s=2.0, pool_settings={"freeze_gc_after_start": freeze}).summary()
                        runs[label].append({"requests_per_s": r["requests_per_s"],
                                            "coordinator_4img_cpu_ms_per_request": r["coordinator_4img_cpu_ms_per_request"],
                                            "coordinator_cpu_ms_per_request": r["coordinator_cpu_ms_per_request"]})
            finally:
                cluster.shutdown()
    med = {label: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for label, rs in runs.items()}
    out = {"runs": runs, "median": med, "frozen_vs_not": {k: med["frozen"][k] / med["not_frozen"][k] for k in med["frozen"]}}
    print(json.dumps(out, indent=2))
