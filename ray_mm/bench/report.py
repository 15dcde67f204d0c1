"""The printed report of ``ray-mm bench``: pipelines, paced phase, micros, targets (met / NOT MET).

The JSON (``--json``) holds every figure; this is the table a person reads.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .scale_model import format_scale_model


def format_paced(paced: dict[str, Any] | None) -> list[str]:
    if not paced:
        return []
    out = [f"== paced (open loop): {paced['n']} requests, {paced['arrivals']} arrivals at {paced['rate_per_s']:.2f} req/s "
           f"[{paced['rate_basis']}]; Ray Data window {paced['ray_data_window_s']:g} s; "
           "latency = scheduled arrival -> result at the driver",
           f"{'pipeline':<22}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'done/n':>9}{'max lag ms':>11}"]
    for name, p in paced["pipelines"].items():
        if "p50_ms" not in p:
            out.append(f"{name:<22}failed: {str(p.get('error'))[:80]}")
            continue
        ms = [f"{p.get(k, float('nan')):>9.0f}" for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")]
        done = f"{p.get('completed', '?')}/{p.get('n', '?')}"
        out.append(f"{name:<22}{''.join(ms)}{done:>9}{p.get('dispatch_lag_max_ms', float('nan')):>11.1f}")
    return out


def format_table(result: dict[str, Any]) -> str:
    quick = " [--quick: small samples]" if result.get("quick") else ""
    lines = ["", f"== ray-mm bench (same workload, same cores; all requests submitted at once){quick}"]
    lines.append(f"{'pipeline':<18}{'req/s':>8}{'items/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'cpu s/item':>11}{'coord ms/req':>13}")
    for name, p in result["pipelines"].items():
        if "requests_per_s" not in p:
            lines.append(f"{name:<18}failed: {str(p.get('error'))[:80]}")
            continue
        coord = p.get("coordinator_4img_cpu_ms_per_request", p.get("coordinator_cpu_ms_per_request"))
        coord_s = f"{coord:>13.2f}" if coord is not None else f"{'-':>13}"
        lines.append(f"{name:<18}{p['requests_per_s']:>8.2f}{p['items_per_s']:>9.2f}{p['p50_ms']:>9.0f}{p['p99_ms']:>9.0f}"
                     f"{p['cpu_s_per_item']:>11.3f}{coord_s}")
    for name, p in result.get("audio", {}).items():
        if "error" in p:
            lines.append(f"{'audio/' + name:<18}failed: {p['error'][:80]}")
            continue
        lines.append(f"{'audio/' + name:<18}{p['requests_per_s']:>8.2f}{p['items_per_s']:>9.2f}{p['p50_ms']:>9.0f}"
                     f"{p['p99_ms']:>9.0f}{p['cpu_s_per_item']:>11.3f}")
    lines.extend(format_paced(result.get("paced")))
    m = result["micro"]
    img = m["image_1080p_per_core_per_s"]
    lines.append(f"1080p JPEG -> pixel_values per core: HF PIL {img['hf_pil']:.1f}/s, HF fast {img['hf_fast']:.1f}/s, "
                 f"ray-mm {img['ray_mm']:.1f}/s")
    v = m["video_detail"]
    lines.append(f"video 16 of 10 s 360p per core, decode + pixels: {m['video_clips_per_core_per_s']:.1f} clips/s "
                 f"(HF video processor {v.get('decode_hf_processor_clips_per_s', float('nan')):.1f}/s; "
                 f"decode only {v.get('decode_only_clips_per_s', v['clips_per_s']):.1f}/s, "
                 f"seek per frame {v['naive_clips_per_s']:.1f}/s)")
    lines.append(f"align fast vs legacy, 32k tokens, 16 images: {m['align_fast_vs_legacy_32k']:.1f}x")
    if "align_fast_vs_legacy_32k_structured" in m:
        lines.append(f"align fast vs legacy, 32k tokens, structured (timestamped videos, sliced images): "
                     f"{m['align_fast_vs_legacy_32k_structured']:.1f}x")
    for family, f in m.get("family_image_1080p_per_core_per_s", {}).get("families", {}).items():
        lines.append(f"1080p image per core, {family} (tiny model, adapter {f['adapter']}): ray-mm {f['ray_mm_per_s']:.1f}/s, "
                     f"HF processor call {f['hf_processor_call_per_s']:.1f}/s")
    s = m.get("object_store_23mb", {})
    if "numpy_get_ms" in s:
        lines.append(f"object store 23 MB put+get: numpy {s['numpy_roundtrip_ms']:.1f} ms, torch {s['torch_roundtrip_ms']:.1f} ms")
    lines.append(f"{'target':<40}{'target':>9}{'measured':>10}  met")
    for name, t in result["targets"].items():
        how = ", ".join(f"{k} {t[k]}" for k in ("transport", "form") if k in t)
        if "k1_bound_by" in t:  # coordinator shards: what bounded the K=1 run (its CPU accounting)
            how = (f"K=1 bound by {t['k1_bound_by']}: coordinator busy {t['k1_coordinator_busy_share']:.0%} of the wall, "
                   f"cores busy {t['k1_cores_busy']}")
        lines.append(f"{name:<40}{t['target']:>9g}{t['measured']:>10.3f}  {'yes' if t['met'] else 'NOT MET'}"
                     + (f"  ({how})" if how else ""))
    if "scale_model" in result:
        lines.extend(format_scale_model(result["scale_model"]))
    if result.get("phase_s"):
        lines.append("phase wall s: " + ", ".join(f"{k} {v:.1f}" for k, v in result["phase_s"].items()))
    return "\n".join(lines)


def json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    raise TypeError(type(obj).__name__)
