"""Coordinator shards: requests/s with K=1 and K=2 coordinators on a workload meant to bind the coordinator,
in one run, with the CPU accounting that says what limits it (not a timed test).

Workload: 4 tiny images per request (48x40 JPEGs as ``data:`` URIs, 8 distinct, so the media
workers' content-hash cache answers almost every item), ``consumer="noop"``: what is left is
the coordinator's work and Ray's per-call work around it. Local simulated cluster (head, two
1-CPU CPU nodes, one GPU-worker node) on 127.0.0.1.

Per K it reports requests/s, each coordinator's process CPU per request it handled (from
``/proc/<pid>/stat``, minus its idle rate times the wall time), its capacity (1000 / that,
requests/s), and the CPU of every process of the cluster (driver, Ray workers, Ray system) over
the measured window, so a run where the machine's cores are the limit shows it. Writes JSON.

Run it under ``flock /tmp/ray_mm_measure.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

# Before Ray is imported: every node and this driver on 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from actors.local_cluster import start_local_cluster  # noqa: E402
from actors.pool import Pool  # noqa: E402
from ray_mm.bench.cpu import descendants, proc_cpu  # noqa: E402
from ray_mm.bench.shards import accounted_run, summarize  # noqa: E402
from ray_mm.config import RayMMConfig  # noqa: E402
from ray_mm.media.synth import make_image  # noqa: E402
from ray_mm.models import make_model  # noqa: E402
from ray_mm.pool.config import LocalClusterSpec, PoolConfig  # noqa: E402

IMAGE_PH = "<|vision_start|><|image_pad|><|vision_end|>"
IMAGES_PER_REQUEST = 4


# --------------------------------------------------------------------------- process CPU (ray_mm.bench.cpu)

def coordinator_pids() -> list[int]:
    return sorted(pid for pid, cmd, _ in descendants(os.getpid()) if cmd.startswith("ray::Coordinator"))


# --------------------------------------------------------------------------- workload and one measurement

def make_lines(n: int, prefix: str) -> list[tuple[str, dict[str, Any]]]:
    uris = ["data:image/jpeg;base64," + base64.b64encode(make_image(48, 40, seed=k)).decode() for k in range(8)]
    out = []
    for k in range(n):
        rid = f"{prefix}{k:05d}"
        images = [uris[(k + j) % len(uris)] for j in range(IMAGES_PER_REQUEST)]
        out.append((rid, {"request_id": rid, "prompt": "Pages: " + " ".join([IMAGE_PH] * IMAGES_PER_REQUEST), "images": images}))
    return out


def measure(model: str, k: int, n: int, warm: int, idle_s: float, workers: int, per_shard_pull: bool = False) -> dict[str, Any]:
    # per_shard_pull: each of a GPU worker's pulls asks for the default 4 (pull_batch_size 4 K) instead of 4 / K.
    cfg = PoolConfig(coordinators=k, cpu_workers=workers, gpu_workers=1, consumer="noop",
                     max_inflight_requests=max(64, n + 8), request_timeout_s=300.0,
                     pull_batch_size=4 * k if per_shard_pull else 4)
    with Pool(model, RayMMConfig(), cfg) as pool:
        for _ in pool.run(make_lines(warm, f"warm-k{k}-")):
            pass
        return accounted_run(pool, make_lines(n, f"k{k}-"), idle_s)


def idle_cpu(model: str, k: int, idle_s: float, settle_s: float = 3.0, **settings: Any) -> dict[str, Any]:
    """Each coordinator's CPU while the pool is up and nothing is submitted (ms per s). Finds the
    coordinators by their process title, so it also runs against an older checkout (fields this
    PoolConfig lacks are left out)."""
    wanted = {"coordinators": k, "cpu_workers": 2, "gpu_workers": 1, "consumer": "noop", **settings}
    cfg = PoolConfig(**{key: v for key, v in wanted.items() if key in PoolConfig.model_fields})
    with Pool(model, RayMMConfig(), cfg) as pool:
        for _ in pool.run(make_lines(8, f"idle-warm-k{k}-")):
            pass
        time.sleep(settle_s)
        pids = coordinator_pids()
        c0, t0 = [proc_cpu(p) for p in pids], time.perf_counter()
        time.sleep(idle_s)
        wall = time.perf_counter() - t0
        rates = [(proc_cpu(p) - c) / wall * 1e3 for p, c in zip(pids, c0)]
    return {"coordinators": k, "settings": {key: v for key, v in wanted.items() if key in PoolConfig.model_fields},
            "idle_s": round(wall, 2), "coordinator_idle_cpu_ms_per_s": [round(r, 1) for r in rates]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--warm", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="media workers")
    parser.add_argument("--idle-s", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=1, help="K=1, K=2 alternated this many times; the best of each kept")
    parser.add_argument("--json", default="out/coordinator_shards.json")
    parser.add_argument("--per-shard-pull", action="store_true",
                        help="pull_batch_size = 4 K: each pull to a shard asks for 4 (the default splits 4 among the shards)")
    parser.add_argument("--idle-only", action="store_true",
                        help="only the idle coordinator's CPU (pool up, nothing submitted), per --pull-wait-s value")
    parser.add_argument("--pull-wait-s", type=float, nargs="*", default=[],
                        help="with --idle-only: PoolConfig.pull_wait_s values to compare (default: the config's)")
    args = parser.parse_args()
    if args.idle_only:
        with tempfile.TemporaryDirectory() as tmp:
            model = str(make_model(Path(tmp) / "model", "qwen2_vl"))
            cluster = start_local_cluster(LocalClusterSpec(), object_store_bytes=1 << 30)
            try:
                waits: list[float | None] = list(args.pull_wait_s) or [None]
                found = [idle_cpu(model, 1, args.idle_s, **({} if w is None else {"pull_wait_s": w})) for w in waits]
            finally:
                cluster.shutdown()
        print(json.dumps(found, indent=2))
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(found, indent=2))
        return
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        model = str(make_model(Path(tmp) / "model", "qwen2_vl"))
        cluster = start_local_cluster(LocalClusterSpec(), object_store_bytes=1 << 30)
        try:
            for _ in range(args.rounds):
                for k in (1, 2):
                    runs[k].append(measure(model, k, args.requests, args.warm, args.idle_s, args.workers, args.per_shard_pull))
        finally:
            cluster.shutdown()
    out = {
        "workload": f"{IMAGES_PER_REQUEST} x 48x40 JPEG data: URIs per request, 8 distinct (media cache on), consumer noop, "
                    f"{args.workers} media workers, 1 GPU worker (simulated), local cluster on 127.0.0.1",
        **summarize(runs),
    }
    print(f"{'K':>2} {'req/s':>8} {'cores busy':>11} {'driver':>7} {'workers':>8} {'ray sys':>8}   per coordinator: "
          "busy CPU ms/req, own code ms/req, capacity req/s, idle ms/s")
    for k in (1, 2):
        for r in runs[k]:
            per = "; ".join(f"{s['busy_cpu_ms_per_request']:.2f}, {s['own_code_cpu_ms_per_request']:.2f}, "
                            f"{s['capacity_req_per_s']}, {s['idle_cpu_ms_per_s']}" for s in r["shards"])
            c = r["cpu_s"]
            print(f"{k:>2} {r['req_per_s']:>8.1f} {r['cores_busy']:>11.2f} {c['driver'] / r['wall_s']:>7.2f} "
                  f"{c['ray_workers'] / r['wall_s']:>8.2f} {c['ray_system'] / r['wall_s']:>8.2f}   {per}")
    caps = out["coordinator_capacity_total_req_per_s"]
    print(f"K=2 / K=1: {out['k2_over_k1']:.2f}x (target >= 1.5x); machine cores: {os.cpu_count()}; coordinator capacity "
          f"(sum over shards, req/s): K=1 {caps['k1']}, K=2 {caps['k2']} ({caps['k2'] / max(caps['k1'], 1e-9):.2f}x)")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"json: {args.json}")


if __name__ == "__main__":
    main()
