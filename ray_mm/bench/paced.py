"""The paced (open-loop) phase's plan: one arrival schedule shared by every pipeline, and its bookkeeping.

The schedule itself is pure (:mod:`ray_mm.bench.arrivals`); here it becomes the requests each
pipeline gets, the rate (a fraction of the closed-loop capacity, or fixed) and the JSON header.
A request's latency is from its scheduled arrival until its result is at the driver.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .workload import Workload, rename

PACED_TIMEOUT_S = 300.0  # a paced phase that has not finished by then is reported with what completed


@dataclass
class PacedPlan:
    """One paced phase: the same requests at the same scheduled arrival offsets for every pipeline."""

    lines: list[tuple[str, dict[str, Any]]]
    arrivals: list[float]
    rate_per_s: float

    def renamed(self, prefix: str) -> list[tuple[str, dict[str, Any]]]:
        return rename(self.lines, prefix)


def paced_lines(lines: list[tuple[str, dict[str, Any]]], n: int) -> list[tuple[str, dict[str, Any]]]:
    """The first ``n`` workload requests (cycled if ``n`` is larger), under fresh ids."""
    out = []
    for k in range(n):
        rid, line = lines[k % len(lines)]
        out.append((f"paced-{k:04d}-{rid}", {**line, "request_id": f"paced-{k:04d}-{rid}"}))
    return out


def sleep_until(t: float) -> None:
    dt = t - time.perf_counter()
    if dt > 0:
        time.sleep(dt)


def paced_result(plan: PacedPlan, done: list[float | None], ok: list[bool], dispatched: list[float | None],
                  released: list[float] | None = None, **extra: Any) -> dict[str, Any]:
    from .arrivals import latency_summary

    return {**latency_summary(plan.arrivals, done, ok, dispatched, released), **extra}


def paced_rate(pool_rps: float, ray_data_rps: float, load: float, fixed: float | None) -> tuple[float, str]:
    """The paced phase's arrival rate and how it was chosen."""
    if fixed:
        return fixed, f"fixed (--paced-rate {fixed:g})"
    slower = min(pool_rps, ray_data_rps)
    return load * slower, f"{load:g} x min(pool, ray_data) closed-loop req/s ({slower:.3f})"


@dataclass
class PacedOptions:
    """The paced phase's command-line settings."""

    n: int
    load: float = 0.5
    rate: float | None = None
    kind: str = "poisson"
    seed: int = 0
    window_s: float = 1.0
    max_span_s: float | None = 45.0


def plan_paced(vision: Workload, pool_rps: float, ray_data_rps: float, opts: PacedOptions) -> tuple[dict[str, Any], PacedPlan]:
    """The paced phase's schedule (the same for every pipeline) and its JSON header."""
    from .arrivals import arrival_schedule, fit_count, mean_rate

    rate, basis = paced_rate(pool_rps, ray_data_rps, opts.load, opts.rate)
    n = fit_count(opts.n, rate, opts.max_span_s)
    arrivals = arrival_schedule(n, rate, opts.seed, opts.kind)
    plan = PacedPlan(paced_lines(vision.lines, n), arrivals, rate)
    head: dict[str, Any] = {
        "rate_per_s": rate, "rate_basis": basis, "n": n, "n_requested": opts.n, "max_span_s": opts.max_span_s,
        "arrivals": opts.kind, "seed": opts.seed,
        "schedule_span_s": arrivals[-1] if arrivals else 0.0, "schedule_mean_rate_per_s": mean_rate(arrivals),
        "ray_data_window_s": opts.window_s,
        "latency": "scheduled arrival (t0 + offset) until the result is at the driver; windows' waits included",
        "pipelines": {},
    }
    return head, plan
