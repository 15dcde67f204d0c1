"""``ray-mm bench``: one workload through every pipeline on the same cores, plus microbenchmarks.

By concern (see BENCHMARKS.md for what each measures):

- :mod:`.workload`: generated media served on 127.0.0.1 and the request lines;
- pipelines, one module each: :mod:`.sglang_style` (in-process, HF processor or the hand pixel
  path), :mod:`.ray_data` (``map_batches``, class UDF over an actor pool), :mod:`.pool` (ray-mm's pool,
  and the coordinator-shard hook);
- :mod:`.cpu` (CPU of the whole process tree), :mod:`.stats` (the one percentile definition, shared
  with ``ray-mm run``), :mod:`.arrivals` and :mod:`.paced` (the open-loop phase);
- :mod:`.micro`, :mod:`.micro_media`, :mod:`.micro_align`: microbenchmarks;
- :mod:`.phases` (the run order, one Ray cluster), :mod:`.targets`, :mod:`.report`, :mod:`.cli`.

Nothing here imports Ray at module level; the names below load their module on first use, so
importing the package (``ray_mm.cli.run`` does, for :func:`percentile`) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "add_bench_parser": "cli", "cmd_bench": "cli",
    "Workload": "workload", "coordinator_lines": "workload", "vision_lines": "workload", "write_bench_media": "workload",
    "run_pool": "pool", "start_cluster": "phases", "object_store_roundtrip": "micro",
    "TreeCpu": "cpu", "percentile": "stats", "compute_targets": "targets", "format_table": "report", "format_paced": "report",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ray_mm.bench' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = sorted(_EXPORTS)
