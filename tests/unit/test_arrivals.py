"""Paced-arrival bookkeeping of ``ray-mm bench`` (ray_mm.bench.arrivals): schedules, windows, latencies."""

from __future__ import annotations

import math

import pytest

from ray_mm.bench.arrivals import (
    Batch,
    arrival_schedule,
    fit_count,
    latencies,
    latency_summary,
    mean_rate,
    release_times,
    window_groups,
)

# --------------------------------------------------------------------------- arrival_schedule


def test_schedule_is_deterministic_for_a_seed() -> None:
    assert arrival_schedule(50, 4.0, seed=3) == arrival_schedule(50, 4.0, seed=3)
    assert arrival_schedule(50, 4.0, seed=3) != arrival_schedule(50, 4.0, seed=4)


@pytest.mark.parametrize("kind", ["poisson", "uniform"])
@pytest.mark.parametrize("n", [2, 10, 48, 500])
def test_schedule_mean_rate_is_the_requested_rate(kind: str, n: int) -> None:
    arr = arrival_schedule(n, 3.5, seed=0, kind=kind)
    assert len(arr) == n
    assert arr[0] == 0.0
    assert all(b >= a for a, b in zip(arr, arr[1:]))
    assert mean_rate(arr) == pytest.approx(3.5, rel=1e-9)
    assert arr[-1] == pytest.approx((n - 1) / 3.5, rel=1e-9)


def test_poisson_gaps_are_bursty_and_uniform_gaps_are_not() -> None:
    gaps = [b - a for a, b in zip(arrival_schedule(400, 2.0, seed=1), arrival_schedule(400, 2.0, seed=1)[1:])]
    mean = sum(gaps) / len(gaps)
    cv = math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps)) / mean
    assert 0.8 < cv < 1.2  # exponential gaps: coefficient of variation about 1
    uni = arrival_schedule(400, 2.0, kind="uniform")
    assert {round(b - a, 9) for a, b in zip(uni, uni[1:])} == {0.5}


def test_schedule_edge_cases_and_bad_input() -> None:
    assert arrival_schedule(0, 1.0) == []
    assert arrival_schedule(1, 1.0) == [0.0]
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            arrival_schedule(5, bad)
    with pytest.raises(ValueError):
        arrival_schedule(5, 1.0, kind="bursty")
    with pytest.raises(ValueError):
        arrival_schedule(-1, 1.0)
    assert math.isnan(mean_rate([0.0]))


def test_fit_count_bounds_the_span() -> None:
    assert fit_count(48, 4.0, 45.0) == 48  # 47 / 4 = 11.75 s fits
    assert fit_count(48, 0.5, 45.0) == 23  # 1 + 45 * 0.5
    assert (fit_count(48, 0.5, 45.0) - 1) / 0.5 <= 45.0
    assert fit_count(48, 0.01, 45.0) == 8  # never below the floor
    assert fit_count(5, 0.01, 45.0) == 5  # nor above n
    assert fit_count(48, 0.5, None) == 48 and fit_count(48, 0.5, 0) == 48


# --------------------------------------------------------------------------- window_groups


def test_windows_assign_every_request_exactly_once() -> None:
    arr = arrival_schedule(200, 7.0, seed=5)
    batches = window_groups(arr, 1.0)
    seen = sorted(i for b in batches for i in b.indices)
    assert seen == list(range(200))
    releases = [b.release_s for b in batches]
    assert releases == sorted(releases) and len(set(releases)) == len(releases)
    for b in batches:
        for i in b.indices:  # released at the close of the window holding the arrival
            assert b.release_s - 1.0 <= arr[i] < b.release_s


def test_windows_boundaries_and_empty_windows() -> None:
    batches = window_groups([0.0, 0.2, 1.0, 1.99, 3.5], 1.0)
    assert batches == [Batch(1.0, (0, 1)), Batch(2.0, (2, 3)), Batch(4.0, (4,))]  # window [2, 3) is empty
    assert window_groups([], 1.0) == []


def test_zero_window_is_one_batch_per_request_at_its_arrival() -> None:
    arr = [0.0, 0.3, 0.3, 2.0]
    assert window_groups(arr, 0.0) == [Batch(0.0, (0,)), Batch(0.3, (1,)), Batch(0.3, (2,)), Batch(2.0, (3,))]


def test_windows_refuse_unsorted_or_negative_arrivals() -> None:
    with pytest.raises(ValueError):
        window_groups([0.0, 2.0, 1.0], 1.0)
    with pytest.raises(ValueError):
        window_groups([-0.5, 0.0], 1.0)


def test_release_times_check_the_partition() -> None:
    assert release_times([Batch(1.0, (0, 2)), Batch(2.0, (1,))], 3) == [1.0, 2.0, 1.0]
    with pytest.raises(ValueError):
        release_times([Batch(1.0, (0,)), Batch(2.0, (0, 1))], 2)  # index 0 twice
    with pytest.raises(ValueError):
        release_times([Batch(1.0, (0,))], 2)  # index 1 nowhere
    with pytest.raises(ValueError):
        release_times([Batch(1.0, (0, 5))], 2)  # out of range


# --------------------------------------------------------------------------- latency accounting


def test_latency_is_done_minus_scheduled_arrival() -> None:
    assert latencies([0.0, 1.0, 2.0], [0.25, None, 2.5]) == [0.25, 0.5]
    with pytest.raises(ValueError):
        latencies([0.0, 1.0], [0.5])


def test_latency_summary() -> None:
    arr = [0.0, 1.0, 2.0, 3.0]
    done = [0.1, 1.2, None, 3.3]
    s = latency_summary(arr, done, ok=[True, False, True, True], dispatched=[0.0, 1.05, 2.0, 3.0])
    assert s["n"] == 4 and s["completed"] == 3 and s["ok"] == 2  # the unfinished one counts in neither
    assert s["p50_ms"] == pytest.approx(200.0)
    assert s["max_ms"] == pytest.approx(300.0)
    assert s["mean_ms"] == pytest.approx(200.0)
    assert s["dispatch_lag_max_ms"] == pytest.approx(50.0)


def test_latency_summary_window_wait_counts_in_latency_not_in_lag() -> None:
    arr = [0.1, 0.6]
    batches = window_groups(arr, 1.0)
    rel = release_times(batches, 2)
    s = latency_summary(arr, [1.5, 1.5], dispatched=rel, released=rel)
    assert s["dispatch_lag_max_ms"] == pytest.approx(0.0)
    assert s["p50_ms"] == pytest.approx(1150.0)  # (1.4 + 0.9) / 2 s


def test_latency_summary_of_nothing_is_nan() -> None:
    s = latency_summary([0.0], [None])
    assert s["completed"] == 0 and math.isnan(s["p50_ms"])


# --------------------------------------------------------------------------- the bench's p50 target


def _result(paced: dict | None) -> dict:
    out = {"pipelines": {"pool": {"p50_ms": 900.0}, "ray_data": {"p50_ms": 1000.0}}}
    if paced is not None:
        out["paced"] = paced
    return out


def test_p50_target_uses_the_paced_phase_and_keeps_the_closed_loop_ratio() -> None:
    from ray_mm.bench.report import format_paced
    from ray_mm.bench.targets import p50_targets as _p50_targets

    paced = {"rate_per_s": 2.0, "rate_basis": "fixed", "n": 8, "arrivals": "poisson", "ray_data_window_s": 1.0,
             "pipelines": {"pool": {"p50_ms": 100.0, "p90_ms": 1.0, "p99_ms": 1.0, "mean_ms": 1.0, "completed": 8, "n": 8},
                           "ray_data": {"p50_ms": 1000.0, "p90_ms": 1.0, "p99_ms": 1.0, "mean_ms": 1.0, "completed": 8, "n": 8},
                           "ray_data_per_request": {"p50_ms": 250.0},
                           "ray_data_stream": {"p50_ms": 150.0},
                           "sglang_style_hand": {"p50_ms": 80.0},
                           "sglang_style": {"error": "boom"}}}
    t = _p50_targets(_result(paced))
    assert t["pool_vs_ray_data_p50"]["measured"] == pytest.approx(0.1)
    assert t["pool_vs_ray_data_p50"]["met"] is True and t["pool_vs_ray_data_p50"]["basis"] == "paced"
    # Ray Data's best online form is the lower p50 of the per-request and streaming forms: 100 / 150.
    best = t["pool_vs_ray_data_per_request_p50_paced"]
    assert best["measured"] == pytest.approx(100 / 150, abs=1e-3) and best["form"] == "ray_data_stream" and best["met"] is False
    hand = t["pool_vs_sglang_hand_p50_paced"]
    assert hand["measured"] == pytest.approx(1.25) and hand["met"] is True and hand["target"] == 1.5
    assert t["pool_vs_ray_data_p50_closed_loop"]["measured"] == pytest.approx(0.9)
    text = "\n".join(format_paced(paced))
    assert "ray_data" in text and "failed: boom" in text


def test_p50_targets_judge_each_transport_and_name_the_best() -> None:
    """The paced pool runs once per transport; each target names the transport with the lower p50
    and keeps the other beside it (a uint8 pool at 90 ms against the float32 pool at 150 ms)."""
    from ray_mm.bench.targets import p50_targets as _p50_targets

    paced = {"rate_per_s": 4.0, "ray_data_window_s": 1.0,
             "pipelines": {"pool": {"p50_ms": 150.0}, "pool_uint8": {"p50_ms": 90.0},
                           "ray_data": {"p50_ms": 1000.0}, "ray_data_per_request": {"p50_ms": 300.0},
                           "sglang_style_hand": {"p50_ms": 60.0}}}
    t = _p50_targets(_result(paced))
    hand = t["pool_vs_sglang_hand_p50_paced"]
    assert hand["transport"] == "uint8" and hand["measured"] == pytest.approx(1.5) and hand["met"] is True
    assert hand["by_transport"] == {"float32": pytest.approx(2.5), "uint8": pytest.approx(1.5)}
    online = t["pool_vs_ray_data_per_request_p50_paced"]
    assert online["transport"] == "uint8" and online["measured"] == pytest.approx(0.3) and online["form"] == "ray_data_per_request"
    # Only the float32 pool paced (the uint8 phase failed): it is judged alone, and says so.
    paced["pipelines"]["pool_uint8"] = {"error": "boom"}
    hand = _p50_targets(_result(paced))["pool_vs_sglang_hand_p50_paced"]
    assert hand["transport"] == "float32" and hand["measured"] == pytest.approx(2.5) and hand["met"] is False


def test_p50_target_falls_back_to_closed_loop_without_a_paced_phase() -> None:
    from ray_mm.bench.targets import p50_targets as _p50_targets

    for paced in (None, {"pipelines": {"pool": {"error": "x"}, "ray_data": {"p50_ms": 10.0}}}):
        t = _p50_targets(_result(paced))
        assert t["pool_vs_ray_data_p50"]["measured"] == pytest.approx(0.9)
        assert t["pool_vs_ray_data_p50"]["basis"].startswith("closed_loop")
        assert "pool_vs_ray_data_per_request_p50_paced" not in t
