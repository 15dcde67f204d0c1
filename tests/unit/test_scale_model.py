"""The bench's scale model: ceilings from per-unit figures, the first one named, NaN where unmeasured."""

from __future__ import annotations

import math

import pytest

from ray_mm.bench.scale_model import ScaleInputs, format_scale_model, needed, project, scale_model

# 0.1 CPU s of media work per request on 16 cores: 160 req/s per node; a 2 ms coordinator: 500 req/s;
# 25 MB per request into 200 Gbit/s (25 GB/s): 1000 req/s; a 4 ms GPU worker on each of 8 GPUs: 2000 req/s.
INPUTS = ScaleInputs(media_cpu_s_per_request=0.1, coordinator_ms_per_request=2.0, bytes_per_request=25e6,
                     gpu_worker_ms_per_request=4.0)


def test_media_binds_first_on_one_node_and_the_coordinator_on_four() -> None:
    one = project(INPUTS, 1)
    assert one["ceilings"] == {"media": 160.0, "coordinator": 500.0, "network": 1000.0, "gpu_pull": 2000.0}
    assert one["first_ceiling"] == "media" and one["requests_per_s"] == 160.0
    four = project(INPUTS, 4)
    assert four["first_ceiling"] == "coordinator" and four["requests_per_s"] == 500.0
    assert project(INPUTS, 4, coordinators=2)["requests_per_s"] == 640.0  # two shards: media binds again
    assert needed(INPUTS, 4) == {"coordinators": 2, "gpu_nodes": 1}
    assert needed(INPUTS, 16) == {"coordinators": 6, "gpu_nodes": 3}  # 2560 req/s of media


def test_an_unmeasured_figure_is_no_ceiling_and_says_so() -> None:
    inputs = ScaleInputs(media_cpu_s_per_request=0.1, coordinator_ms_per_request=math.nan, bytes_per_request=math.nan,
                         gpu_worker_ms_per_request=0.64)  # 8 GPUs x 1000 / 0.64 ms = 12500 req/s
    row = project(inputs, 100)  # media 16000 req/s, GPU pull 12500: the measured ceilings only
    assert math.isnan(row["ceilings"]["coordinator"]) and math.isnan(row["ceilings"]["network"])
    assert row["first_ceiling"] == "gpu_pull" and row["requests_per_s"] == 12500.0
    assert needed(inputs, 100) == {"coordinators": None, "gpu_nodes": 2}


def test_scale_model_reads_a_bench_result() -> None:
    result = {"pipelines": {
        "pool": {"requests": 10, "items": 40, "cpu_s_per_item": 0.5, "coordinator_4img_cpu_ms_per_request": 2.0},
        "pool_uint8": {"requests_per_s": 9.0, "requests": 10, "items": 40, "cpu_s_per_item": 0.025,
                       "gpu_bytes_in_per_request": 25e6, "gpu_worker_cpu_ms_per_request": 4.0},
        "sglang_style_hand": {"requests_per_s": 19.5}}}
    model = scale_model(result, nodes=(1, 4))
    assert model["inputs"]["from"] == "pool_uint8"
    assert model["inputs"]["media_cpu_s_per_request"] == pytest.approx(0.1)  # 0.025 s x 4 items
    assert [r["first_ceiling"] for r in model["projections"]] == ["media", "coordinator"]
    assert model["in_process_requests_per_s_here"] == {"sglang_style_hand": 19.5}
    assert model["inputs"]["coordinator_from"].startswith("float32 pool")  # no shard phase in this result
    text = "\n".join(format_scale_model(model))
    assert "| 4 | 640 | 500 | 1000 | 2000 | 500 | coordinator | 2, 1 |" in text
    # With a shard phase, its closed-loop K=1 coordinator sets the ceiling; the bench-rate figure stays beside it.
    result["scaling"] = {"coordinator_shards": {"per_coordinator_cpu_ms_per_request": {"k1": [0.8], "k2": [1.0, 1.1]}}}
    model = scale_model(result, nodes=(4,))
    assert model["inputs"]["coordinator_ms_per_request"] == 0.8 and "saturated" in model["inputs"]["coordinator_from"]
    assert model["projections"][0]["ceilings"]["coordinator"] == 1250.0 and model["projections"][0]["first_ceiling"] == "media"
    assert model["inputs"]["coordinator_4img_ms_at_bench_rate"] == 2.0
    assert "(a ceiling of 500 req/s at that load)" in "\n".join(format_scale_model(model))
    # Closed loop saturates the pool; how busy its coordinator was is measured and said, not implied.
    result["scaling"]["coordinator_shards"]["bound_by"] = {"k1": {"limit": "neither", "coordinator_busy_share": 0.15}}
    assert scale_model(result, nodes=(4,))["inputs"]["coordinator_from"].endswith("its coordinator busy 15% of the wall)")
