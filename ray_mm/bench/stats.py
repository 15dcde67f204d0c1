"""One percentile definition for ``ray-mm bench`` and the ``ray-mm run`` summary, and one pipeline run's result.

Pure (numpy only): the runner imports :func:`percentile` without pulling in anything of the bench.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (``q`` in 0..100) with linear interpolation between ranks (numpy's
    default); NaN for no values, so a missing figure never reads as zero."""
    if len(values) == 0:
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=float), q))


@dataclass
class RunResult:
    """What one pipeline produced for one workload (closed loop)."""

    name: str
    wall_s: float
    latencies_s: list[float]
    records: list[dict[str, Any]]
    cpu: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        ok = [r for r in self.records if r.get("ok")]
        items = sum(len(r["items"]) for r in ok)
        out = {
            "requests": len(self.records),
            "ok": len(ok),
            "items": items,
            "wall_s": self.wall_s,
            "requests_per_s": len(self.records) / self.wall_s,
            "items_per_s": items / self.wall_s,
            "p50_ms": percentile(self.latencies_s, 50) * 1e3,
            "p99_ms": percentile(self.latencies_s, 99) * 1e3,
            "cpu_s_per_item": self.cpu["total"] / max(items, 1),
            "cpu_s": {k: round(v, 3) for k, v in self.cpu.items()},
        }
        errors = [r["error"]["message"] for r in self.records if not r.get("ok")]
        if errors:
            out["errors"] = errors[:3]
        out.update(self.extra)
        return out
