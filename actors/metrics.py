"""Pool and HTTP front-end metrics through ``ray.util.metrics`` (names ``ray_mm_*``), created lazily per process."""

from __future__ import annotations

from functools import cache
from typing import Any

from ray.util import metrics as ray_metrics


@cache
def _counter(name: str, description: str, tags: tuple[str, ...]) -> Any:
    return ray_metrics.Counter(name, description=description, tag_keys=tags)


@cache
def _gauge(name: str, description: str, tags: tuple[str, ...]) -> Any:
    return ray_metrics.Gauge(name, description=description, tag_keys=tags)


@cache
def _histogram(name: str, description: str, tags: tuple[str, ...]) -> Any:
    bounds = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
    return ray_metrics.Histogram(name, description=description, boundaries=bounds, tag_keys=tags)


def error(error_type: str) -> None:
    _counter("ray_mm_errors_total", "Failed requests by error type", ("type",)).inc(1, tags={"type": error_type})


def request_done(ok: bool) -> None:
    _counter("ray_mm_requests_total", "Finished requests", ("status",)).inc(1, tags={"status": "ok" if ok else "error"})


def stage_seconds(stage: str, seconds: float) -> None:
    _histogram("ray_mm_stage_seconds", "Time per pipeline stage", ("stage",)).observe(seconds, tags={"stage": stage})


def queue_depth(queue: str, depth: int) -> None:
    """Sampled by the coordinator's reaper tick (every ``lease_s / 4``, at most 0.5 s), not per change."""
    _gauge("ray_mm_queue_depth", "Depth of pool queues", ("queue",)).set(depth, tags={"queue": queue})


def cache_lookups(hits: int, misses: int) -> None:
    """One request's media content-hash cache lookups (one metric call per request, not per item)."""
    if hits:
        _counter("ray_mm_cache_hits_total", "Media content-hash cache lookups", ()).inc(hits)
    if misses:
        _counter("ray_mm_cache_misses_total", "Media content-hash cache lookups", ()).inc(misses)


def http_request(route: str, status: int, seconds: float) -> None:
    """One answered HTTP request of ``ray-mm serve`` (``actors/serve.py``)."""
    tags = {"route": route, "status": str(status)}
    _counter("ray_mm_http_requests_total", "HTTP requests answered by ray-mm serve", ("route", "status")).inc(1, tags=tags)
    _histogram("ray_mm_http_request_seconds", "Time to answer an HTTP request of ray-mm serve", ("route",)).observe(
        seconds, tags={"route": route})
