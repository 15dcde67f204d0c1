"""Coordinator shards, measured: one run through a warm pool with each coordinator's CPU accounted,
and the K=1 against K=2 summary. Shared by the bench's ``coordinator_shards`` phase and
``benchmarks/coordinator_shards_bench.py``.

A coordinator's CPU per request is its process CPU (``/proc/<pid>/stat``) over the run minus its
idle rate (measured on the same process right after, the pool up and nothing submitted) times the
wall time, divided by the requests it admitted; its capacity is 1000 / that. The CPU of the whole
process tree is kept beside it, so that a run where the machine's cores, not the coordinators, are
the limit shows it. Ray is not imported here; the pool is passed in.
"""

from __future__ import annotations

import os
import time
from typing import Any

from .cpu import TreeCpu, proc_cpu


def accounted_run(pool: Any, lines: list[tuple[str, Any]], idle_s: float) -> dict[str, Any]:
    """``lines`` through ``pool`` (warm), with the CPU of each coordinator shard and of the process tree."""
    s0 = pool.stats()
    pids = [s["pid"] for s in s0["shards"]]
    sub0 = [s["counters"].get("submitted", 0) for s in s0["shards"]]
    own0 = [s["coordinator_cpu_s"] for s in s0["shards"]]
    tree = TreeCpu()
    tree0, coord0 = tree.sample(), [proc_cpu(p) for p in pids]
    t0 = time.perf_counter()
    records = list(pool.run(lines))
    wall = time.perf_counter() - t0
    tree1, coord1 = tree.sample(), [proc_cpu(p) for p in pids]
    s1 = pool.stats()
    # Each coordinator's fixed cost while the pool is up and idle (GPU worker pulls, the driver's
    # result polls, Ray's own threads), taken out of its per-request figure.
    i0, ti = [proc_cpu(p) for p in pids], time.perf_counter()
    time.sleep(idle_s)
    idle_wall = time.perf_counter() - ti
    idle = [(proc_cpu(p) - c) / idle_wall for p, c in zip(pids, i0)]
    cpu = TreeCpu.delta(tree0, tree1)
    shards = []
    for j, shard in enumerate(s1["shards"]):
        handled = shard["counters"].get("submitted", 0) - sub0[j]
        proc = coord1[j] - coord0[j]
        busy = proc - idle[j] * wall
        ms = busy / handled * 1e3 if handled and busy > 0 else float("nan")
        shards.append({
            "shard": j, "pid": pids[j], "requests": handled,
            "process_cpu_s": round(proc, 3),
            "idle_cpu_ms_per_s": round(idle[j] * 1e3, 1),
            "busy_cpu_ms_per_request": round(ms, 3),
            "own_code_cpu_ms_per_request": round((shard["coordinator_cpu_s"] - own0[j]) / max(handled, 1) * 1e3, 3),
            "capacity_req_per_s": round(1000 / ms, 1) if ms == ms and ms > 0 else None,
            "busy_share_of_wall": round(busy / wall, 3),
            "items_per_media_call": shard.get("items_per_call"),  # over the shard's life (warm-up included)
        })
    n = len(lines)
    return {
        "coordinators": len(pids), "requests": n, "ok": sum(1 for r in records if r.get("ok")),
        "wall_s": round(wall, 3), "req_per_s": round(n / wall, 2),
        "cpu_s": {key: round(v, 3) for key, v in cpu.items()},
        "cores_busy": round(cpu["total"] / wall, 3),
        "cores": os.cpu_count(),
        "shards": shards,
    }


#: A coordinator busy this share of the wall time or more is taken as what bounds the run (its
#: event-loop thread is then rarely free; Ray's own threads take the rest of its process CPU).
COORDINATOR_BOUND_SHARE = 0.7
#: Otherwise, the process tree using this share of the machine's cores or more means the cores bound it.
CORES_BOUND_SHARE = 0.75


def what_bounds(run: dict[str, Any]) -> dict[str, Any]:
    """What limited one accounted run: ``"coordinator"`` when its busiest coordinator was busy at
    least :data:`COORDINATOR_BOUND_SHARE` of the wall time, else ``"cores"`` when the process tree
    used at least :data:`CORES_BOUND_SHARE` of the cores, else ``"neither"`` (the pipeline's own
    waits). Only a K=1 run bound by its coordinator can show what a second one adds."""
    busy = [s["busy_share_of_wall"] for s in run["shards"] if isinstance(s.get("busy_share_of_wall"), (int, float))]
    share = max(busy) if busy else float("nan")
    cores = run.get("cores") or 0
    if share >= COORDINATOR_BOUND_SHARE:
        limit = "coordinator"
    elif cores and run["cores_busy"] >= CORES_BOUND_SHARE * cores:
        limit = "cores"
    else:
        limit = "neither"
    return {"limit": limit, "coordinator_busy_share": share, "cores_busy": run["cores_busy"], "cores": cores}


def summarize(runs: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    """K=1 against K=2 from the best run (req/s) of each K, with each coordinator's CPU and capacity
    and what bounded each (:func:`what_bounds`)."""
    best = {k: max(rs, key=lambda r: r["req_per_s"]) for k, rs in runs.items() if rs}
    out: dict[str, Any] = {f"k{k}_req_per_s": r["req_per_s"] for k, r in best.items()}
    if 1 in best and 2 in best:
        out["k2_over_k1"] = round(best[2]["req_per_s"] / best[1]["req_per_s"], 3)
    out["bound_by"] = {f"k{k}": what_bounds(r) for k, r in best.items()}
    out.update({
        "per_coordinator_cpu_ms_per_request": {f"k{k}": [s["busy_cpu_ms_per_request"] for s in r["shards"]] for k, r in best.items()},
        "capacity_per_coordinator_req_per_s": {f"k{k}": [s["capacity_req_per_s"] for s in r["shards"]] for k, r in best.items()},
        # What the coordinators could feed if they, not the machine, were the limit: the sum of their capacities.
        "coordinator_capacity_total_req_per_s": {
            f"k{k}": round(sum(s["capacity_req_per_s"] or 0 for s in r["shards"]), 1) for k, r in best.items()},
        "cores_busy": {f"k{k}": r["cores_busy"] for k, r in best.items()},
        "runs": {f"k{k}": rs for k, rs in runs.items()},
    })
    return out
