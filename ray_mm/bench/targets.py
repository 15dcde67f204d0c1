"""Targets of ``ray-mm bench``: every figure as a ratio inside one run, judged met or not met.

On 2 cores the pool cannot beat one process that already uses both, so the distribution targets
are overheads against the in-process pipeline on the same pixel path (``sglang_style_hand``):
CPU per item and throughput, each with the transport that meets it (DESIGN.md, "Performance
targets"). The headline pool-vs-SGLang ratio is like for like (same pixel path); the one against
the HF processor stays beside it, labelled. A figure that was not measured is NaN and not met.
"""

from __future__ import annotations

import math
from typing import Any

#: The pool pipelines whose transport the overhead targets may pick.
TRANSPORTS = {"pool": "float32", "pool_uint8": "uint8"}


def target(goal: float, measured: float, higher_is_better: bool = True, **more: Any) -> dict[str, Any]:
    ok = math.isfinite(measured) and (measured >= goal if higher_is_better else measured <= goal)
    return {"target": goal, "measured": round(measured, 4) if math.isfinite(measured) else measured, "met": bool(ok), **more}


def _num(d: dict[str, Any], key: str) -> float:
    v = d.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 else float("nan")


def _ratio(a: float, b: float) -> float:
    return a / b if math.isfinite(a) and math.isfinite(b) and b > 0 else float("nan")


def _best_transport(ratios: dict[str, float], lower_is_better: bool = True) -> tuple[float, str]:
    """The best finite ratio (lowest, or highest) and its transport; NaN and "none" when none was measured."""
    finite = {t: v for t, v in ratios.items() if math.isfinite(v)}
    if not finite:
        return math.nan, "none"
    best = (min if lower_is_better else max)(finite, key=finite.__getitem__)
    return finite[best], best


def overhead_targets(p: dict[str, Any]) -> dict[str, Any]:
    """Pool CPU per item <= 1.15x and pool (2 workers) throughput >= 0.85x the in-process pipeline
    on the same pixel path, per transport; the entry names the transport with the best figure."""
    base = p.get("sglang_style_hand", {})
    cpu = {t: _ratio(_num(p.get(name, {}), "cpu_s_per_item"), _num(base, "cpu_s_per_item")) for name, t in TRANSPORTS.items()}
    rps = {t: _ratio(_num(p.get(name, {}), "requests_per_s"), _num(base, "requests_per_s")) for name, t in TRANSPORTS.items()}
    best_cpu = _best_transport(cpu)
    best_rps = _best_transport(rps, lower_is_better=False)
    return {
        "pool_cpu_per_item_vs_in_process": target(
            1.15, best_cpu[0], higher_is_better=False, transport=best_cpu[1], by_transport={t: round(v, 4) for t, v in cpu.items()},
            unit="x CPU s/item against sglang_style_hand (same pixel path)"),
        "pool_throughput_vs_in_process": target(
            0.85, best_rps[0], transport=best_rps[1], by_transport={t: round(v, 4) for t, v in rps.items()},
            unit="x req/s, pool (2 workers) against sglang_style_hand (same pixel path)"),
    }


def p50_targets(result: dict[str, Any]) -> dict[str, Any]:
    """Pool p50 at a paced rate against fair forms: the in-process pipeline on the same pixel path
    (<= 1.5x) and Ray Data's best online form (<= 0.5x: the lower p50 of one dataset per request and
    the warm streaming pipeline); the windowed Ray Data figure and the closed-loop ratio stay beside them.
    Each paced pool (one per transport, as in :data:`TRANSPORTS`) is judged and the entry names the
    transport with the best figure, the others beside it, as for the overhead targets."""
    pl = result["pipelines"]
    closed = target(0.2, _ratio(_num(pl["pool"], "p50_ms"), _num(pl["ray_data"], "p50_ms")), higher_is_better=False,
                    unit="x p50 (closed loop: all requests at t0)", basis="closed_loop")
    out: dict[str, Any] = {"pool_vs_ray_data_p50_closed_loop": closed}
    paced = result.get("paced", {})
    pp = paced.get("pipelines", {})
    pools = {t: _num(pp.get(name, {}), "p50_ms") for name, t in TRANSPORTS.items()}
    if not any(map(math.isfinite, pools.values())):  # paced phase skipped or failed: say so, fall back to closed loop
        out["pool_vs_ray_data_p50"] = {**closed, "basis": "closed_loop (paced phase not run or failed)"}
        return out
    more = {"basis": "paced", "rate_per_s": round(paced["rate_per_s"], 4)}

    def judged(goal: float, base: float, unit: str, **extra: Any) -> dict[str, Any]:
        ratios = {t: _ratio(p50, base) for t, p50 in pools.items()}
        best, transport = _best_transport(ratios)
        return target(goal, best, higher_is_better=False, transport=transport,
                      by_transport={t: round(v, 4) for t, v in ratios.items()}, unit=unit, **extra, **more)

    window = paced.get("ray_data_window_s", 1.0)
    out["pool_vs_ray_data_p50"] = judged(0.2, _num(pp.get("ray_data", {}), "p50_ms"),
                                         f"x p50 (paced, Ray Data in {window:g} s windows)", ray_data_window_s=window)
    online = {name: _num(pp.get(name, {}), "p50_ms") for name in ("ray_data_per_request", "ray_data_stream")}
    finite = {k: v for k, v in online.items() if math.isfinite(v)}
    form = min(finite, key=finite.__getitem__) if finite else "none"
    out["pool_vs_ray_data_per_request_p50_paced"] = judged(
        0.5, finite.get(form, math.nan),
        "x p50 (paced, Ray Data's best online form: one dataset per request or the warm stream)", form=form)
    out["pool_vs_sglang_hand_p50_paced"] = judged(
        1.5, _num(pp.get("sglang_style_hand", {}), "p50_ms"), "x p50 (paced, in-process pipeline on the same pixel path)")
    return out


def compute_targets(result: dict[str, Any]) -> dict[str, Any]:
    p, micro = result["pipelines"], result["micro"]
    sg, sgh, rd, pool, pool1 = (p.get(k, {}) for k in ("sglang_style", "sglang_style_hand", "ray_data", "pool", "pool_1worker"))
    img = micro["image_1080p_per_core_per_s"]
    rps = {name: _num(d, "requests_per_s") for name, d in (("sg", sg), ("sgh", sgh), ("rd", rd), ("pool", pool), ("pool1", pool1))}
    out = {
        "pool_vs_sglang_throughput": target(0.85, _ratio(rps["pool"], rps["sgh"]),
                                            unit="x req/s, same pixel path on both sides (sglang_style_hand)"),
        "pool_vs_sglang_hf_throughput": target(1.8, _ratio(rps["pool"], rps["sg"]),
                                               unit="x req/s against the SGLang shape with the HF processor (labelled, not like for like)"),
        "pool_1worker_vs_sglang_throughput": target(0.9, _ratio(rps["pool1"], rps["sg"]), unit="x req/s (HF processor baseline)"),
        "pool_vs_ray_data_throughput": target(1.0, _ratio(rps["pool"], rps["rd"]), unit="x req/s (Ray Data class UDF, actor pool)"),
        **overhead_targets(p),
        **p50_targets(result),
        "image_1080p_per_core": target(45.0, img["ray_mm"], unit="images/s/core"),
        "image_1080p_vs_hf_pil": target(3.5, img["ray_mm"] / img["hf_pil"], unit="x"),
        "image_1080p_per_core_uint8": target(45.0, img.get("ray_mm_uint8", 0.0), unit="images/s/core (uint8 transport)"),
        "video_clips_per_core": target(8.0, micro["video_clips_per_core_per_s"], unit="clips/s/core"),
        "align_fast_vs_legacy": target(5.0, micro["align_fast_vs_legacy_32k"], unit="x"),
        "coordinator_cpu_ms_per_request_4img": target(
            0.5, pool.get("coordinator_4img_cpu_ms_per_request", pool.get("coordinator_cpu_ms_per_request", math.nan)),
            higher_is_better=False, unit="ms (process CPU minus idle)"),
    }
    if "align_fast_vs_legacy_32k_structured" in micro:
        out["align_fast_vs_legacy_structured"] = target(
            5.0, micro["align_fast_vs_legacy_32k_structured"], unit="x (Qwen3-VL timestamped videos, MiniCPM-V sliced images)")
    shards = result.get("scaling", {}).get("coordinator_shards", {})
    if "k2_over_k1" in shards:
        # The workload is meant to bind the coordinator; whether it did is measured, not assumed (the
        # K=1 run's CPU accounting), so a core-bound run says so beside its figure.
        k1 = shards.get("bound_by", {}).get("k1", {})
        out["coordinator_shards_k2_over_k1"] = target(
            1.5, shards["k2_over_k1"], unit="x req/s, K=2 against K=1 (tiny images, cache on, noop consumer)",
            **({"k1_bound_by": k1["limit"], "k1_coordinator_busy_share": k1["coordinator_busy_share"],
                "k1_cores_busy": f"{k1['cores_busy']:g} of {k1['cores']}"} if k1 else {}))
    return out
