"""The scale model: projected requests/s of N CPU nodes x C cores from one bench run's per-unit figures.

A projection, not a measurement at scale. Each ceiling comes from a figure the same ``ray-mm bench``
run measured on its 2 cores:

- **media**: ``N x C / media CPU s per request`` (the pool's whole CPU per item, every process of the
  cluster included, times the items per request: conservative, the coordinator and GPU worker's
  share is counted again in their own ceilings);
- **coordinator**: ``K x 1000 / coordinator ms per request`` (process CPU minus idle; K shards), at
  saturation: the K=1 coordinator of the shard phase, closed loop on tiny images (its calls, pulls and
  result batches fill up as they would at a ceiling). The coordinator's cost per request falls with
  its load (BENCHMARKS.md, "Session 7": 9.9 ms at 10 req/s, 5.5 at 40, 1.8 at 117 on the same tiny
  requests), so the 4-image figure of the float32 pool, measured at this machine's 10 req/s, would
  understate the ceiling; it is kept beside the table, not used in it. Without a shard phase it is
  the figure used, and the model says so;
- **network**: ``G x NIC bytes/s / bytes per request`` into G GPU nodes;
- **GPU pull**: ``G x GPUs per node x 1000 / GPU worker ms per request`` (one GPU worker per GPU);
- **GCS**: not on a request's path (actors are looked up by name once; objects are owned by the
  workers that put them), so not a ceiling here, and not measured.

The pool's projected rate is the smallest ceiling; the first ceiling names it. The in-process pipeline
(one process, as SGLang runs it) stays at its measured rate on this machine, beside the table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ScaleInputs:
    """Per-unit figures (one bench run) and the cluster shape they are projected onto."""

    media_cpu_s_per_request: float
    coordinator_ms_per_request: float
    bytes_per_request: float
    gpu_worker_ms_per_request: float
    cores_per_node: int = 16
    nic_gbit_per_gpu_node: float = 200.0
    gpus_per_gpu_node: int = 8

    def ceilings(self, n_cpu_nodes: int, coordinators: int = 1, gpu_nodes: int = 1) -> dict[str, float]:
        """requests/s each part of the cluster allows (NaN where its figure was not measured)."""
        return {
            "media": _per(n_cpu_nodes * self.cores_per_node, self.media_cpu_s_per_request),
            "coordinator": _per(coordinators * 1000.0, self.coordinator_ms_per_request),
            "network": _per(gpu_nodes * self.nic_gbit_per_gpu_node * 1e9 / 8, self.bytes_per_request),
            "gpu_pull": _per(gpu_nodes * self.gpus_per_gpu_node * 1000.0, self.gpu_worker_ms_per_request),
        }


def _per(capacity: float, cost: float) -> float:
    return capacity / cost if math.isfinite(cost) and cost > 0 else math.nan


def project(inputs: ScaleInputs, n_cpu_nodes: int, coordinators: int = 1, gpu_nodes: int = 1) -> dict[str, Any]:
    """The projected rate (the smallest measured ceiling) and which ceiling binds first."""
    ceilings = inputs.ceilings(n_cpu_nodes, coordinators, gpu_nodes)
    known = {k: v for k, v in ceilings.items() if math.isfinite(v)}
    first = min(known, key=known.__getitem__) if known else "none"
    return {"n_cpu_nodes": n_cpu_nodes, "coordinators": coordinators, "gpu_nodes": gpu_nodes,
            "ceilings": {k: round(v, 1) for k, v in ceilings.items()},
            "requests_per_s": round(known[first], 1) if known else math.nan, "first_ceiling": first}


def needed(inputs: ScaleInputs, n_cpu_nodes: int) -> dict[str, int | None]:
    """Coordinator shards and GPU nodes needed so that the media ceiling of N CPU nodes binds first."""
    one = inputs.ceilings(n_cpu_nodes, 1, 1)
    media = one["media"]

    def count(per_unit: float) -> int | None:
        return math.ceil(media / per_unit) if math.isfinite(media) and math.isfinite(per_unit) and per_unit > 0 else None

    gpu_side = [v for v in (one["network"], one["gpu_pull"]) if math.isfinite(v)]
    return {"coordinators": count(one["coordinator"]), "gpu_nodes": count(min(gpu_side)) if gpu_side else None}


def scale_model(result: dict[str, Any], nodes: tuple[int, ...] = (1, 4, 16, 64), **shape: Any) -> dict[str, Any]:
    """The model from a bench result: inputs from the default (uint8) pool where it ran, the coordinator
    from the shard phase's K=1 closed loop (else the float32 pool's 4-image phase, and it says so), and
    the projections."""
    p = result.get("pipelines", {})
    pool = p.get("pool_uint8") if "requests_per_s" in p.get("pool_uint8", {}) else p.get("pool", {})
    items_per_request = pool.get("items", 0) / pool["requests"] if pool.get("requests") else math.nan
    at_bench_rate = p.get("pool", {}).get("coordinator_4img_cpu_ms_per_request", math.nan)
    shards = result.get("scaling", {}).get("coordinator_shards", {})
    saturated = shards.get("per_coordinator_cpu_ms_per_request", {}).get("k1")
    if saturated and isinstance(saturated[0], (int, float)) and math.isfinite(saturated[0]) and saturated[0] > 0:
        # Closed loop saturates the pool, not necessarily its coordinator: say how busy it was.
        busy = shards.get("bound_by", {}).get("k1", {}).get("coordinator_busy_share")
        how = f"; its coordinator busy {busy:.0%} of the wall" if isinstance(busy, (int, float)) and math.isfinite(busy) else ""
        coordinator, source = float(saturated[0]), f"shard phase, K=1, closed loop on tiny images (the pool saturated{how})"
    else:
        coordinator, source = at_bench_rate, "float32 pool, 4-image requests at this machine's rate (no shard figure)"
    inputs = ScaleInputs(
        media_cpu_s_per_request=pool.get("cpu_s_per_item", math.nan) * items_per_request,
        coordinator_ms_per_request=coordinator,
        bytes_per_request=pool.get("gpu_bytes_in_per_request", math.nan),
        gpu_worker_ms_per_request=pool.get("gpu_worker_cpu_ms_per_request", math.nan),
        **shape,
    )
    in_process = {k: p[k]["requests_per_s"] for k in ("sglang_style", "sglang_style_hand") if "requests_per_s" in p.get(k, {})}
    return {
        "inputs": {**inputs.__dict__, "from": "pool_uint8" if pool is p.get("pool_uint8") else "pool",
                   "items_per_request": items_per_request, "coordinator_from": source,
                   "coordinator_4img_ms_at_bench_rate": at_bench_rate,
                   "bench_rate_req_per_s": p.get("pool", {}).get("requests_per_s", math.nan)},
        "projections": [project(inputs, n) for n in nodes],
        "needed": {str(n): needed(inputs, n) for n in nodes},
        "in_process_requests_per_s_here": in_process,
        "note": "projection from one run's per-unit figures on 2 cores; GCS not on the request path, not modelled",
    }


def format_scale_model(model: dict[str, Any]) -> list[str]:
    """The model as report lines (a markdown table, pasted into BENCHMARKS.md as is)."""
    i = model["inputs"]
    lines = [f"== scale model (projection, {i['cores_per_node']}-core CPU nodes; one GPU node of "
             f"{i['gpus_per_gpu_node']} GPUs, {i['nic_gbit_per_gpu_node']:g} Gbit/s; K=1 coordinator)",
             f"inputs ({i['from']}): media {i['media_cpu_s_per_request'] * 1e3:.1f} CPU ms/request, coordinator "
             f"{i['coordinator_ms_per_request']:.2f} ms/request, {i['bytes_per_request'] / 1e6:.2f} MB/request, "
             f"GPU worker {i['gpu_worker_ms_per_request']:.2f} ms/request",
             "| N CPU nodes | media | coordinator | network | GPU pull | projected req/s | first ceiling | K, GPU nodes for media |",
             "|---:|---:|---:|---:|---:|---:|---|---|"]
    for row in model["projections"]:
        c, need = row["ceilings"], model["needed"][str(row["n_cpu_nodes"])]
        lines.append(f"| {row['n_cpu_nodes']} | {c['media']:.0f} | {c['coordinator']:.0f} | {c['network']:.0f} | "
                     f"{c['gpu_pull']:.0f} | {row['requests_per_s']:.0f} | {row['first_ceiling']} | "
                     f"{need['coordinators']}, {need['gpu_nodes']} |")
    lines.append(f"coordinator figure: {i['coordinator_from']}; the float32 pool's 4-image requests at this machine's "
                 f"{i['bench_rate_req_per_s']:.1f} req/s cost {i['coordinator_4img_ms_at_bench_rate']:.2f} ms each "
                 f"(a ceiling of {_per(1000.0, i['coordinator_4img_ms_at_bench_rate']):.0f} req/s at that load)")
    here = ", ".join(f"{k} {v:.1f}" for k, v in model["in_process_requests_per_s_here"].items())
    lines.append(f"in-process, one process, measured here (2 cores): {here or 'not run'} req/s")
    return lines
