"""The pool pipeline: ray-mm's ``actors.pool.Pool`` closed loop, paced, and the coordinator-shard scaling hook.

``consumer="noop"``: the GPU worker pulls every feature object through the object store and reads
it (zero-copy), nothing runs on it. The coordinator's CPU is its process CPU minus its idle rate;
the self-reported figure (its own code only) is kept beside it, never in its place. Ray and
``actors`` are imported inside the functions (the ``ray_mm`` core has no top-level Ray import).
"""

from __future__ import annotations

import time
from typing import Any

from .cpu import TreeCpu, find_pid, proc_cpu
from .paced import PACED_TIMEOUT_S, PacedPlan, paced_result
from .stats import RunResult
from .workload import Workload, rename

GPU_IDLE_S = 0.5  # the GPU worker's idle-rate window after a pool's run


def run_pool(
    w: Workload, workers: int, name: str, coord_lines: list[tuple[str, Any]] | None = None, idle_s: float = 2.0,
    after: Any = None, pool_settings: dict[str, Any] | None = None,
) -> RunResult:
    """The pool: ``Pool.run`` submits all lines at once (backpressure only past the admission limit).

    ``after(pool, requests_per_s)``, if given, runs on the same warm pool once the measurements
    here are done (the paced phase), before the pool is shut down. ``pool_settings`` override
    ``PoolConfig`` fields (side-by-side comparisons in ``benchmarks/``).
    """
    from actors.pool import Pool

    from ..pool.config import PoolConfig

    cfg = PoolConfig(cpu_workers=workers, gpu_workers=1, consumer="noop", max_inflight_requests=max(64, len(w.lines) + 8),
                     **(pool_settings or {}))
    with Pool(w.model_dir, w.core, cfg, w.adapter) as pool:
        for _ in pool.run(rename(w.lines[: 2 * workers], "warm-")):
            pass
        coord_pid, gpu_pid = find_pid("ray::Coordinator"), find_pid("ray::GpuWorker")
        stats0 = pool.stats()
        cpu = TreeCpu()
        c0, k0, g0 = cpu.sample(), proc_cpu(coord_pid), proc_cpu(gpu_pid)
        t0 = time.perf_counter()
        records, latencies = [], []
        for rec in pool.run(w.lines):
            latencies.append(time.perf_counter() - t0)
            records.append(rec)
        wall = time.perf_counter() - t0
        delta = TreeCpu.delta(c0, cpu.sample())
        stats1 = pool.stats()
        coord_proc_s = proc_cpu(coord_pid) - k0
        gpu_proc_s = proc_cpu(gpu_pid) - g0
        extra: dict[str, Any] = {
            "workers": workers,
            "coordinator_cpu_ms_per_request": coord_proc_s / len(records) * 1e3,
            "coordinator_self_reported_cpu_ms_per_request":
                (stats1["coordinator_cpu_s"] - stats0["coordinator_cpu_s"]) / len(records) * 1e3,
            "zero_copy": all(r.get("consumer", {}).get("zero_copy", False) for r in records if r.get("ok")),
            "gpu_bytes_in_per_request": (sum(g["bytes_in"] for g in stats1["gpu_workers"])
                                         - sum(g["bytes_in"] for g in stats0["gpu_workers"])) / max(len(records), 1),
            "items_per_node": stats1.get("items_per_node", {}),
        }
        # The GPU worker's side of a request (pull, take, read, ack; noop consumer), for the scale
        # model's GPU-pull ceiling: its process CPU over the run minus its idle rate (pull polls).
        g_idle0, gi_t0 = proc_cpu(gpu_pid), time.perf_counter()
        time.sleep(GPU_IDLE_S)
        gpu_idle_rate = (proc_cpu(gpu_pid) - g_idle0) / (time.perf_counter() - gi_t0)
        gpu_busy = (gpu_proc_s - gpu_idle_rate * wall) / max(len(records), 1) * 1e3
        extra["gpu_worker_cpu_ms_per_request"] = gpu_busy if gpu_busy > 0 else float("nan")
        if coord_lines:
            # Coordinator CPU per request at exactly 4 images per request (the target's shape).
            s0, k0, c_t0 = pool.stats(), proc_cpu(coord_pid), time.perf_counter()
            for _ in pool.run(coord_lines):
                pass
            s1, k1, c_wall = pool.stats(), proc_cpu(coord_pid), time.perf_counter() - c_t0
            # The coordinator's fixed cost while idle (GPU worker pull polls, driver result polls,
            # Ray core worker threads), measured on the same process, is taken out of the per-request figure.
            i0, i_t0 = proc_cpu(coord_pid), time.perf_counter()
            time.sleep(idle_s)
            idle_rate = (proc_cpu(coord_pid) - i0) / (time.perf_counter() - i_t0)
            n = len(coord_lines)
            extra["coordinator_idle_cpu_ms_per_s"] = idle_rate * 1e3
            extra["coordinator_4img_process_cpu_ms_per_request"] = (k1 - k0) / n * 1e3
            self_4img = (s1["coordinator_cpu_s"] - s0["coordinator_cpu_s"]) / n * 1e3
            extra["coordinator_4img_self_reported_cpu_ms_per_request"] = self_4img
            extra["coordinator_process_cpu_ms_per_request"] = extra["coordinator_cpu_ms_per_request"]
            busy_4img = ((k1 - k0) - idle_rate * c_wall) / n * 1e3
            busy = (coord_proc_s - idle_rate * wall) / len(records) * 1e3
            extra["coordinator_cpu_method"] = "process CPU (/proc or psutil) minus idle rate x wall"
            # At or below zero the process figure is lost in the clock tick and the idle noise: say
            # "not measured" (NaN, the target then reads not met); the self-reported count above only
            # covers the coordinator's own code and never stands in for the process figure.
            if not busy_4img > 0:
                extra["coordinator_cpu_method"] = "not measured (process CPU minus idle came out <= 0)"
                busy_4img = float("nan")
            if not busy > 0:
                busy = extra["coordinator_process_cpu_ms_per_request"]  # the whole process figure, idle included
            extra["coordinator_4img_cpu_ms_per_request"] = busy_4img
            extra["coordinator_cpu_ms_per_request"] = busy
        if after is not None:
            after(pool, len(records) / wall)
    return RunResult(name, wall, latencies, records, delta, extra)


def paced_pool(pool: Any, plan: PacedPlan, workers: int) -> dict[str, Any]:
    """The pool fed open-loop: each request goes to ``Pool.submit`` at its arrival time.

    ``pool`` is the warmed pool of the closed-loop ``pool`` run (idle by now). One driver thread
    both submits and collects: between arrivals it waits for results for at most the time left
    until the next arrival (the same poll ``Pool.run`` uses), so submissions are not held back.
    """
    lines = plan.renamed("pool-")
    n = len(lines)
    index = {rid: k for k, (rid, _) in enumerate(lines)}
    done: list[float | None] = [None] * n
    ok = [False] * n
    dispatched: list[float | None] = [None] * n
    t0 = time.perf_counter()
    k = 0
    while k < n or pool.pending:
        if time.perf_counter() - t0 > PACED_TIMEOUT_S:
            break
        while k < n and plan.arrivals[k] <= time.perf_counter() - t0:
            rid, line = lines[k]
            dispatched[k] = time.perf_counter() - t0
            pool.submit(line, rid)
            k += 1
        wait = 0.5 if k >= n else plan.arrivals[k] - (time.perf_counter() - t0)
        for rec in pool.poll(wait_s=min(max(wait, 0.0), 0.5)):
            j = index.get(rec["request_id"])
            if j is not None:
                done[j] = time.perf_counter() - t0
                ok[j] = bool(rec.get("ok"))
    return paced_result(plan, done, ok, dispatched, workers=workers,
                         setup=f"actors.pool.Pool, {workers} media workers, consumer=noop (the closed-loop pool, "
                               "warm and idle); Pool.submit at each arrival")


def coordinator_shards(w: Workload, shards: tuple[int, ...] = (1, 2), workers: int = 2, warm: int = 8,
                       idle_s: float = 1.0) -> dict[str, Any]:
    """``scaling.coordinator_shards``: the pool's req/s with ``PoolConfig(coordinators=k)`` on a
    workload meant to bind the coordinator (``w``: tiny images, feature cache on, noop consumer), K=1
    against K=2, with each coordinator's CPU per request and capacity at that rate, and what bounded
    each run (:func:`ray_mm.bench.shards.what_bounds`: on 2 cores, not the coordinator).

    Runs only where ``PoolConfig`` has a ``coordinators`` field; otherwise it says so and measures
    nothing. The CPU split (driver, Ray workers, daemons) is kept per K, so that on 2 cores one can
    see whether the cores, not the coordinator, were the limit.
    """
    from actors.pool import Pool

    from ..pool.config import PoolConfig
    from .shards import accounted_run, summarize

    if "coordinators" not in PoolConfig.model_fields:
        return {"skipped": "PoolConfig has no 'coordinators' field (coordinator shards not built)"}
    runs: dict[int, list[dict[str, Any]]] = {}
    for k in shards:
        cfg = PoolConfig(cpu_workers=workers, gpu_workers=1, consumer="noop", coordinators=k,
                         max_inflight_requests=max(64, len(w.lines) + 8))
        with Pool(w.model_dir, w.core, cfg, w.adapter) as pool:
            for _ in pool.run(rename(w.lines[:warm], f"warm-k{k}-")):
                pass
            runs[k] = [accounted_run(pool, rename(w.lines, f"k{k}-"), idle_s)]
    return {"workload": f"{len(w.lines)} requests of tiny images, feature cache on, consumer=noop",
            "workers": workers, **summarize(runs)}
