"""Pure parts of ``ray-mm bench`` (no cluster): the shared percentile, the overhead and p50 targets,
the shard hook's skip, and the Ray Data UDF's arena hand-back (never reused while an output lives)."""

from __future__ import annotations

import gc
import math

import numpy as np
import pytest
import torch

from ray_mm.bench.stats import RunResult, percentile
from ray_mm.bench.targets import compute_targets, overhead_targets


def test_percentile_interpolates_and_is_nan_when_empty() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([5.0], 99) == 5.0
    assert percentile([10.0, 0.0], 100) == 10.0
    assert math.isnan(percentile([], 50))


def test_runner_summary_uses_the_shared_percentile() -> None:
    from ray_mm.cli.run import format_summary

    records = [{"ok": True, "items": [], "path": "fast", "timings": {"fetch_s": v}} for v in (0.001, 0.002, 0.003, 0.004)]
    text = format_summary(records, [], 1.0)
    line = next(ln for ln in text.splitlines() if ln.startswith("fetch"))
    assert line.split()[1:] == [f"{percentile([1.0, 2.0, 3.0, 4.0], 50):.1f}", f"{percentile([1.0, 2.0, 3.0, 4.0], 99):.1f}"]


def test_run_result_summary() -> None:
    r = RunResult("x", 2.0, [0.1, 0.3], [{"ok": True, "items": [1, 2]}, {"ok": False, "error": {"message": "m"}}], {"total": 1.0})
    s = r.summary()
    assert s["requests_per_s"] == 1.0 and s["items"] == 2 and s["cpu_s_per_item"] == 0.5
    assert s["p50_ms"] == pytest.approx(200.0) and s["errors"] == ["m"]


def _pipes(pool_cpu: float, u8_cpu: float, pool_rps: float, u8_rps: float) -> dict:
    return {"sglang_style_hand": {"cpu_s_per_item": 0.02, "requests_per_s": 20.0},
            "pool": {"cpu_s_per_item": pool_cpu, "requests_per_s": pool_rps},
            "pool_uint8": {"cpu_s_per_item": u8_cpu, "requests_per_s": u8_rps}}


def test_overhead_targets_pick_the_transport_that_does_best() -> None:
    t = overhead_targets(_pipes(0.04, 0.022, 10.0, 18.0))
    cpu, rps = t["pool_cpu_per_item_vs_in_process"], t["pool_throughput_vs_in_process"]
    assert cpu["transport"] == "uint8" and cpu["measured"] == pytest.approx(1.1) and cpu["met"] is True
    assert cpu["by_transport"]["float32"] == pytest.approx(2.0)
    assert rps["transport"] == "uint8" and rps["measured"] == pytest.approx(0.9) and rps["met"] is True
    t = overhead_targets(_pipes(0.04, 0.03, 10.0, 16.0))
    assert t["pool_cpu_per_item_vs_in_process"]["met"] is False and t["pool_throughput_vs_in_process"]["met"] is False


def test_overhead_targets_not_met_when_not_measured() -> None:
    t = overhead_targets({"pool": {"error": "x"}})
    assert t["pool_cpu_per_item_vs_in_process"]["met"] is False
    assert math.isnan(t["pool_cpu_per_item_vs_in_process"]["measured"])


def test_headline_ratio_is_like_for_like_and_shards_are_judged_when_measured() -> None:
    pipes = {**_pipes(0.03, 0.02, 18.0, 19.0),
             "sglang_style": {"requests_per_s": 12.0, "p50_ms": 1.0},
             "ray_data": {"requests_per_s": 9.0, "p50_ms": 2.0},
             "pool_1worker": {"requests_per_s": 9.0}}
    pipes["pool"]["p50_ms"] = 1.0
    micro = {"image_1080p_per_core_per_s": {"ray_mm": 60.0, "hf_pil": 15.0}, "video_clips_per_core_per_s": 10.0,
             "align_fast_vs_legacy_32k": 8.0}
    result = {"pipelines": pipes, "micro": micro, "scaling": {"coordinator_shards": {"k2_over_k1": 1.2}}}
    t = compute_targets(result)
    assert t["pool_vs_sglang_throughput"]["measured"] == pytest.approx(0.9)  # against sglang_style_hand
    assert t["pool_vs_sglang_hf_throughput"]["measured"] == pytest.approx(1.5)
    assert t["coordinator_shards_k2_over_k1"]["met"] is False
    del result["scaling"]
    assert "coordinator_shards_k2_over_k1" not in compute_targets(result)


def test_ray_data_arena_goes_back_only_when_every_output_is_gone() -> None:
    from ray_mm.bench.ray_data_udf import _release_when_gone
    from ray_mm.buffers import ArenaPool

    pool = ArenaPool()
    arena = pool.acquire()
    outs = [arena.take((8, 4), torch.float32).numpy(), arena.take((2, 4), torch.float32).numpy()]
    _release_when_gone(pool, arena, outs)
    kept = outs[1].reshape(-1)  # a view, as an Arrow block wrapping the output would hold
    del outs
    gc.collect()
    assert pool.acquire() is not arena  # one output still alive: the arena must not be handed out
    del kept
    gc.collect()
    assert pool.acquire() is arena


def test_ray_data_arena_with_no_arena_outputs_goes_back_at_once() -> None:
    from ray_mm.bench.ray_data_udf import _release_when_gone
    from ray_mm.buffers import ArenaPool

    pool = ArenaPool()
    arena = pool.acquire()
    _release_when_gone(pool, arena, [np.zeros((2, 2), np.float32)])
    assert pool.acquire() is arena


def _shard_run(req_per_s: float, cores_busy: float, shares: list[float]) -> dict:
    return {"req_per_s": req_per_s, "cores_busy": cores_busy, "cores": 2,
            "shards": [{"busy_share_of_wall": s, "busy_cpu_ms_per_request": 2.0, "capacity_req_per_s": 500.0} for s in shares]}


def test_shard_summary_says_what_bounded_each_k_and_the_target_carries_it() -> None:
    from ray_mm.bench.report import format_table
    from ray_mm.bench.shards import summarize, what_bounds

    assert what_bounds(_shard_run(100.0, 1.0, [0.85]))["limit"] == "coordinator"
    assert what_bounds(_shard_run(100.0, 1.6, [0.16]))["limit"] == "cores"
    assert what_bounds(_shard_run(100.0, 0.9, [0.2]))["limit"] == "neither"
    summary = summarize({1: [_shard_run(69.0, 1.61, [0.158])], 2: [_shard_run(64.5, 1.58, [0.09, 0.08])]})
    assert summary["k2_over_k1"] == pytest.approx(64.5 / 69.0, abs=1e-3)
    assert summary["bound_by"]["k1"]["limit"] == "cores"
    assert summary["bound_by"]["k2"]["coordinator_busy_share"] == pytest.approx(0.09)

    pipes = {**_pipes(0.03, 0.02, 18.0, 19.0), "sglang_style": {"requests_per_s": 12.0, "p50_ms": 1.0},
             "ray_data": {"requests_per_s": 9.0, "p50_ms": 2.0}, "pool_1worker": {"requests_per_s": 9.0}}
    pipes["pool"]["p50_ms"] = 1.0
    micro = {"image_1080p_per_core_per_s": {"ray_mm": 60.0, "hf_pil": 15.0, "hf_fast": 20.0},
             "video_clips_per_core_per_s": 10.0, "align_fast_vs_legacy_32k": 8.0,
             "video_detail": {"clips_per_s": 10.0, "naive_clips_per_s": 5.0}}
    result = {"pipelines": pipes, "micro": micro, "scaling": {"coordinator_shards": summary}}
    t = compute_targets(result)["coordinator_shards_k2_over_k1"]
    assert (t["met"], t["k1_bound_by"], t["k1_cores_busy"]) == (False, "cores", "1.61 of 2")
    printed = format_table({"pipelines": {}, "micro": micro, "targets": {"coordinator_shards_k2_over_k1": t}})
    line = next(ln for ln in printed.splitlines() if ln.startswith("coordinator_shards_k2_over_k1"))
    assert "K=1 bound by cores: coordinator busy 16% of the wall" in line
