"""``ray-mm bench --quick --json FILE`` runs end to end and writes a complete report.

Checks the JSON's shape only (every key other tools read, numbers finite and > 0),
never the speed: timings on a shared 2-core machine are not a test.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

PIPELINES = ("sglang_style", "sglang_style_hand", "ray_data", "pool", "pool_uint8", "pool_1worker")
PIPELINE_KEYS = ("requests_per_s", "items_per_s", "p50_ms", "p99_ms", "cpu_s_per_item")
TARGETS = (
    "pool_vs_sglang_throughput",
    "pool_vs_sglang_hf_throughput",
    "pool_cpu_per_item_vs_in_process",
    "pool_throughput_vs_in_process",
    "pool_vs_sglang_hand_p50_paced",
    "pool_vs_ray_data_per_request_p50_paced",
    "pool_1worker_vs_sglang_throughput",
    "pool_vs_ray_data_throughput",
    "pool_vs_ray_data_p50",
    "pool_vs_ray_data_p50_closed_loop",
    "image_1080p_per_core",
    "image_1080p_vs_hf_pil",
    "video_clips_per_core",
    "align_fast_vs_legacy",
    "coordinator_cpu_ms_per_request_4img",
    "coordinator_shards_k2_over_k1",  # --quick runs the shard hook too (24 requests)
)
PACED = ("pool", "pool_uint8", "ray_data", "ray_data_per_request", "sglang_style", "sglang_style_hand")
PACED_MS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "max_ms")


def _positive(value: object, where: str) -> None:
    assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: not a number ({value!r})"
    assert math.isfinite(value) and value > 0, f"{where}: {value!r} is not finite and > 0"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    pytest.importorskip("ray.data", reason="Ray Data (pandas, pyarrow: ray[data]) is needed for the ray_data pipeline")
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "ray_mm", "bench", "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=420, env=env, cwd=Path(__file__).resolve().parents[2],
    )
    noise = (" INFO ", " WARNING ", "info_message")
    assert proc.returncode == 0, "\n".join(ln for ln in proc.stderr.splitlines() if not any(n in ln for n in noise))[-4000:]
    assert "pool_vs_sglang_throughput" in proc.stdout  # the printed table
    assert "== paced (open loop)" in proc.stdout
    return json.loads(out.read_text())


def test_pipelines_complete(report: dict) -> None:
    assert set(PIPELINES) <= set(report["pipelines"])
    for name in PIPELINES:
        p = report["pipelines"][name]
        for key in PIPELINE_KEYS:
            _positive(p.get(key), f"pipelines.{name}.{key}")
        assert p["ok"] == p["requests"], f"{name}: failed requests {p.get('errors')}"
    for name in ("pool", "pool_1worker"):
        _positive(report["pipelines"][name].get("coordinator_cpu_ms_per_request"), f"{name}.coordinator_cpu_ms_per_request")


def test_micro_complete(report: dict) -> None:
    micro = report["micro"]
    assert {"image_1080p_per_core_per_s", "video_clips_per_core_per_s", "align_fast_vs_legacy_32k"} <= set(micro)
    for key in ("hf_pil", "hf_fast", "ray_mm"):
        _positive(micro["image_1080p_per_core_per_s"].get(key), f"micro.image_1080p_per_core_per_s.{key}")
    _positive(micro.get("video_clips_per_core_per_s"), "micro.video_clips_per_core_per_s")
    _positive(micro.get("align_fast_vs_legacy_32k"), "micro.align_fast_vs_legacy_32k")


def test_targets_complete(report: dict) -> None:
    targets = report["targets"]
    assert set(TARGETS) <= set(targets)
    for name in TARGETS:
        t = targets[name]
        _positive(t.get("target"), f"targets.{name}.target")
        assert isinstance(t.get("met"), bool), f"targets.{name}.met"
        measured = t.get("measured")
        assert isinstance(measured, (int, float)) and math.isfinite(measured), f"targets.{name}.measured"


def test_paced_complete(report: dict) -> None:
    paced = report["paced"]
    _positive(paced.get("rate_per_s"), "paced.rate_per_s")
    n = paced.get("n")
    assert isinstance(n, int) and n > 0, f"paced.n: {n!r}"
    assert set(PACED) <= set(paced["pipelines"]), sorted(paced["pipelines"])
    for name in PACED:
        p = paced["pipelines"][name]
        assert "error" not in p, f"paced.{name}: {p.get('error')}"
        assert p["n"] == n and p["completed"] == n, f"paced.{name}: completed {p['completed']} of {n}"
        assert p["ok"] == n, f"paced.{name}: {n - p['ok']} failed"
        for key in PACED_MS:
            _positive(p.get(key), f"paced.{name}.{key}")
        assert p["p50_ms"] <= p["p99_ms"] <= p["max_ms"] + 1e-6, f"paced.{name}: percentiles out of order"
    assert paced["pipelines"]["ray_data"]["datasets"] >= 1
    assert paced["pipelines"]["ray_data_per_request"]["datasets"] == n
    assert report["targets"]["pool_vs_ray_data_p50"].get("basis") == "paced"
    assert report["targets"]["pool_vs_ray_data_p50_closed_loop"].get("basis") == "closed_loop"


def test_fair_baselines_and_overheads_are_labelled(report: dict) -> None:
    assert "map_batches" in report["pipelines"]["ray_data"]["udf"] and "ActorPoolStrategy" in report["pipelines"]["ray_data"]["udf"]
    targets = report["targets"]
    for name in ("pool_cpu_per_item_vs_in_process", "pool_throughput_vs_in_process"):
        assert targets[name]["transport"] in ("float32", "uint8"), f"targets.{name}: no transport"
        assert set(targets[name]["by_transport"]) == {"float32", "uint8"}
    assert targets["pool_vs_ray_data_per_request_p50_paced"]["form"] == "ray_data_per_request"  # --quick: no stream form
    for name in ("pool_vs_sglang_hand_p50_paced", "pool_vs_ray_data_per_request_p50_paced"):  # one paced pool per transport
        assert set(targets[name]["by_transport"]) == {"float32", "uint8"}, f"targets.{name}"
    shards = report["scaling"]["coordinator_shards"]
    assert {"k1_req_per_s", "k2_req_per_s", "k2_over_k1"} <= set(shards), shards


def test_quick_is_labelled_and_timed(report: dict) -> None:
    """Every target of the full run is there, marked as coming from --quick; each phase's wall time is kept."""
    assert report["quick"] is True
    assert all(t.get("quick") is True for t in report["targets"].values())
    phases = report["phase_s"]
    for name in ("setup_and_cluster_start", "ray_data", "pool", "pool_uint8", "pool_1worker", "coordinator_shards",
                 "sglang_style", "sglang_style_hand", "micro"):
        _positive(phases.get(name), f"phase_s.{name}")
    _positive(report.get("bench_wall_s"), "bench_wall_s")


def test_scale_model_projects_from_this_run(report: dict) -> None:
    """The scale model's inputs are this run's figures (uint8 pool, the shard phase's saturated coordinator)."""
    model = report["scale_model"]
    inputs, uint8 = model["inputs"], report["pipelines"]["pool_uint8"]
    assert inputs["from"] == "pool_uint8"
    assert inputs["bytes_per_request"] == uint8["gpu_bytes_in_per_request"] > 0
    saturated = report["scaling"]["coordinator_shards"]["per_coordinator_cpu_ms_per_request"]["k1"][0]
    assert inputs["coordinator_ms_per_request"] == saturated > 0  # the shard phase's K=1 coordinator
    assert inputs["coordinator_4img_ms_at_bench_rate"] == report["pipelines"]["pool"]["coordinator_4img_cpu_ms_per_request"]
    assert "gpu_worker_cpu_ms_per_request" in uint8
    rows = model["projections"]
    assert [r["n_cpu_nodes"] for r in rows] == [1, 4, 16, 64]
    medias = [r["ceilings"]["media"] for r in rows]
    assert medias[0] > 0 and medias[1] == pytest.approx(4 * medias[0], rel=1e-3)
    assert all(r["first_ceiling"] in ("media", "coordinator", "network", "gpu_pull") for r in rows)
