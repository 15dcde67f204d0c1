"""Open-loop (paced) arrivals for ``ray-mm bench``: schedules, micro-batch windows, latency accounting.

Pure: numpy only, no Ray, no clock. The bench turns the offsets below into wall-clock times.

- :func:`arrival_schedule`: when each request arrives, in seconds after the phase's t0. The
  first request arrives at 0. ``"poisson"``: exponential gaps drawn with a fixed seed, rescaled
  so their mean is exactly ``1 / rate`` (bursts as in a Poisson process, but the schedule's mean
  rate is the requested one even for a handful of requests); ``"uniform"``: evenly spaced.
  Either way the span is ``(n - 1) / rate`` and every pipeline gets the same schedule.
- :func:`window_groups`: Ray Data has no online request API, so arrivals are served as
  micro-batches: window ``k`` covers ``[k W, (k + 1) W)`` and is released (becomes one dataset)
  when it closes, at ``(k + 1) W``. ``W <= 0``: every request is its own batch, released at its
  arrival.
- :func:`latency_summary`: a request's latency is from its *scheduled* arrival until its
  result is at the driver, so a harness that falls behind the schedule is charged for it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .stats import percentile

ARRIVAL_KINDS = ("poisson", "uniform")


def arrival_schedule(n: int, rate_per_s: float, seed: int = 0, kind: str = "poisson") -> list[float]:
    """Arrival offsets (seconds after t0, non-decreasing, first 0.0) of ``n`` requests at ``rate_per_s``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not (math.isfinite(rate_per_s) and rate_per_s > 0):
        raise ValueError(f"rate_per_s must be finite and > 0, got {rate_per_s}")
    if kind not in ARRIVAL_KINDS:
        raise ValueError(f"kind must be one of {ARRIVAL_KINDS}, got {kind!r}")
    if n == 0:
        return []
    if n == 1:
        return [0.0]
    if kind == "uniform":
        gaps = np.full(n - 1, 1.0 / rate_per_s)
    else:
        gaps = np.random.default_rng(seed).exponential(1.0, n - 1)
        gaps *= (1.0 / rate_per_s) / gaps.mean()
    return [0.0, *(float(t) for t in np.cumsum(gaps))]


def fit_count(n: int, rate_per_s: float, max_span_s: float | None, min_n: int = 8) -> int:
    """How many of ``n`` requests fit in a schedule no longer than ``max_span_s`` at ``rate_per_s``
    (never fewer than ``min(n, min_n)``); ``max_span_s`` None or <= 0: ``n``. Bounds the phase's
    wall time when the measured capacity, hence the rate, is low."""
    if not max_span_s or max_span_s <= 0 or n <= 1 or (n - 1) / rate_per_s <= max_span_s:
        return n
    return max(min(n, min_n), 1 + math.floor(max_span_s * rate_per_s))


def mean_rate(arrivals: Sequence[float]) -> float:
    """Arrivals per second over the schedule's span (``(n - 1) / span``); nan below 2 distinct times."""
    if len(arrivals) < 2 or arrivals[-1] <= arrivals[0]:
        return float("nan")
    return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])


@dataclass(frozen=True)
class Batch:
    """Requests released together: ``indices`` into the schedule, dispatched at ``release_s``."""

    release_s: float
    indices: tuple[int, ...]


def window_groups(arrivals: Sequence[float], window_s: float) -> list[Batch]:
    """Group arrivals into fixed windows ``[k W, (k + 1) W)`` released at ``(k + 1) W``, in release order.

    Every index appears in exactly one batch; empty windows give no batch. ``window_s <= 0``:
    one batch per request, released at its own arrival.
    """
    if any(b < a for a, b in zip(arrivals, arrivals[1:])):
        raise ValueError("arrivals must be non-decreasing")
    if window_s <= 0:
        return [Batch(float(t), (i,)) for i, t in enumerate(arrivals)]
    by_window: dict[int, list[int]] = {}
    for i, t in enumerate(arrivals):
        if t < 0:
            raise ValueError(f"arrival {i} is negative ({t})")
        by_window.setdefault(math.floor(t / window_s), []).append(i)
    return [Batch((k + 1) * window_s, tuple(idx)) for k, idx in sorted(by_window.items())]


def release_times(batches: Sequence[Batch], n: int) -> list[float]:
    """Each request's release time from its batch; raises unless every index in ``range(n)`` is in exactly one batch."""
    out: list[float | None] = [None] * n
    for b in batches:
        for i in b.indices:
            if not 0 <= i < n or out[i] is not None:
                raise ValueError(f"index {i} out of range or in two batches")
            out[i] = b.release_s
    missing = [i for i, t in enumerate(out) if t is None]
    if missing:
        raise ValueError(f"indices {missing[:5]} in no batch")
    return [float(t) for t in out if t is not None]


def latencies(arrivals: Sequence[float], done: Sequence[float | None]) -> list[float]:
    """``done - arrival`` for every request that finished (``done`` is None for one that did not)."""
    if len(arrivals) != len(done):
        raise ValueError(f"{len(arrivals)} arrivals but {len(done)} completion times")
    return [d - a for a, d in zip(arrivals, done) if d is not None]


def _pct_ms(values: Sequence[float], q: float) -> float:
    return percentile(values, q) * 1e3


def latency_summary(
    arrivals: Sequence[float],
    done: Sequence[float | None],
    ok: Sequence[bool] | None = None,
    dispatched: Sequence[float | None] | None = None,
    released: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Per-pipeline figures of one paced phase (all times in seconds after the same t0).

    ``completed``: requests with a result at the driver (failed ones included; ``ok`` counts the
    successes). ``dispatch_lag_max_ms``: how late the harness handed a request to the pipeline
    against when it was due: its ``released`` time (a window's close) or else its arrival. A
    window's own wait is part of the latency, not of this lag.
    """
    lat = latencies(arrivals, done)
    out: dict[str, Any] = {
        "n": len(arrivals),
        "completed": len(lat),
        "ok": int(sum(bool(o) for o, d in zip(ok, done) if d is not None)) if ok is not None else len(lat),
        "p50_ms": _pct_ms(lat, 50),
        "p90_ms": _pct_ms(lat, 90),
        "p99_ms": _pct_ms(lat, 99),
        "mean_ms": float(np.mean(lat) * 1e3) if lat else float("nan"),
        "max_ms": float(np.max(lat) * 1e3) if lat else float("nan"),
    }
    if dispatched is not None:
        lags = latencies(released if released is not None else arrivals, dispatched)
        out["dispatch_lag_max_ms"] = float(max(lags) * 1e3) if lags else float("nan")
    return out
