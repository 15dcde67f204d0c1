"""The Ray Data baseline, as its users write it: ``map_batches`` with a class UDF over an actor pool.

- The UDF, :class:`ray_mm.bench.ray_data_udf.RequestPreprocessor`, loads the processor once per actor,
  runs the same pixel path as the media workers with a reused output arena, and returns one row per
  item, features as they are (no concatenation).
- Closed loop (:func:`run_ray_data`) and the paced "stream" form (:func:`paced_ray_data_stream`)
  run ONE dataset whose actor pool is warmed first: two warm-up rows go through, the driver then
  writes the phase's t0 to a gate file, and each real row's UDF call waits until ``t0 + offset``
  (all offsets 0 in the closed loop; the arrival schedule when paced). That is a streaming
  pipeline fed as requests arrive, on a warm pool; the gate is a local file because the whole
  bench runs on one machine.
- Per-dataset forms (``ray_data`` in 1 s windows, ``ray_data_per_request``: one dataset per
  request) cannot keep an actor pool across datasets (each execution starts its own actors and
  loads the processor again, seconds), so they run the same UDF as ``map_batches`` tasks whose
  worker processes keep one UDF instance (:func:`preprocess_batch`): Ray Data's best per-dataset form.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .cpu import TreeCpu
from .paced import PACED_TIMEOUT_S, PacedPlan, paced_result
from .ray_data_udf import RequestPreprocessor, preprocess_batch
from .stats import RunResult
from .workload import Workload, rename


def quiet() -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    with contextlib.suppress(Exception):
        ctx.print_on_execution_start = False


def _items(lines: list[tuple[str, dict[str, Any]]], offsets: list[float] | None = None) -> list[dict[str, Any]]:
    return [{"rid": rid, "line": json.dumps(line), "offset_s": -1.0 if offsets is None else float(offsets[k])}
            for k, (rid, line) in enumerate(lines)]


def actor_dataset(w: Workload, items: list[dict[str, Any]], cpu_resource: str, concurrency: int, gate: str,
                  in_flight: int | None = None) -> Any:
    """``from_items`` (one row per block) ``.map_batches(RequestPreprocessor, batch_size=1)`` over an
    actor pool of ``concurrency`` actors, each on one CPU-node slot."""
    import ray.data

    strategy = (ray.data.ActorPoolStrategy(size=concurrency, max_tasks_in_flight_per_actor=in_flight) if in_flight
                else ray.data.ActorPoolStrategy(size=concurrency))
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    return ds.map_batches(RequestPreprocessor, batch_size=1, batch_format="numpy", compute=strategy, num_cpus=1,
                          resources={cpu_resource: 1},
                          fn_constructor_kwargs={"model_dir": w.model_dir, "core": w.core.model_dump_json(),
                                                 "adapter": w.adapter, "gate": gate})


def task_dataset(w: Workload, lines: list[tuple[str, dict[str, Any]]], cpu_resource: str, concurrency: int) -> Any:
    """The per-dataset form: the same UDF as ``map_batches`` tasks (:func:`preprocess_batch`)."""
    import ray.data

    ds = ray.data.from_items(_items(lines), override_num_blocks=len(lines))
    return ds.map_batches(preprocess_batch, batch_size=1, batch_format="numpy", num_cpus=1, resources={cpu_resource: 1},
                          compute=ray.data.TaskPoolStrategy(size=concurrency),
                          fn_kwargs={"model_dir": w.model_dir, "core": w.core.model_dump_json(), "adapter": w.adapter})


def iter_requests(ds: Any) -> Any:
    """(rid, record or None, start epoch) per request as its last item's row reaches the driver.
    Blocks are read as Arrow tables and only the small columns touched: the features arrive
    (through the object store, zero-copy) but are not copied out, as the pool's noop consumer."""
    seen: dict[str, int] = {}
    records: dict[str, Any] = {}
    for block in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
        cols = {name: block.column(name).to_pylist() for name in ("rid", "rows", "record", "start")}
        for rid, rows, record, start in zip(cols["rid"], cols["rows"], cols["record"], cols["start"]):
            seen[rid] = seen.get(rid, 0) + 1
            if record:
                records[rid] = json.loads(record)
            if seen[rid] == rows:
                yield rid, records.pop(rid, None), start


def _gated_run(w: Workload, lines: list[tuple[str, dict[str, Any]]], offsets: list[float], cpu_resource: str,
               concurrency: int, in_flight: int | None) -> tuple[float, list[tuple[str, Any, float, float]], dict[str, float]]:
    """One dataset: 2 warm-up rows per actor, then ``lines`` gated at ``t0 + offsets``. Returns t0
    (perf_counter), per request (rid, record, done perf_counter, start perf_counter) and the CPU
    delta from t0 to the last result."""
    warm = rename(w.lines[: 2 * concurrency], "rd-warm-")
    with tempfile.TemporaryDirectory(prefix="ray-mm-rd-gate-") as tmp:
        gate = str(Path(tmp) / "t0")
        items = _items(warm) + _items(lines, offsets)
        ds = actor_dataset(w, items, cpu_resource, concurrency, gate, in_flight)
        warm_ids = {rid for rid, _ in warm}
        cpu = TreeCpu()
        c0: dict[int, tuple[str, float]] = {}
        t0 = epoch0 = float("nan")
        out = []
        for rid, record, start in iter_requests(ds):
            if rid in warm_ids:
                warm_ids.discard(rid)
                if not warm_ids:  # the pool is warm: the schedule starts just after the gate is written
                    c0 = cpu.sample()
                    t0, epoch0 = time.perf_counter() + 0.05, time.time() + 0.05
                    Path(gate + ".tmp").write_text(repr(epoch0))
                    os.replace(gate + ".tmp", gate)
                continue
            out.append((rid, record, time.perf_counter(), start - epoch0 + t0))
        delta = TreeCpu.delta(c0, cpu.sample())
    return t0, out, delta


def run_ray_data(w: Workload, cpu_resource: str, concurrency: int = 2) -> RunResult:
    """Closed loop: every request at t0 into the warm actor pool's dataset."""
    quiet()
    lines = rename(w.lines, "rd-")
    t0, done, cpu = _gated_run(w, lines, [0.0] * len(lines), cpu_resource, concurrency, None)
    latencies = [d - t0 for _, _, d, _ in done]
    records = [rec or {"ok": False, "error": {"message": "no record"}} for _, rec, _, _ in done]
    wall = max(latencies) if latencies else float("nan")
    return RunResult("ray_data", wall, latencies, records, cpu,
                     {"concurrency": concurrency, "udf": "map_batches(RequestPreprocessor class, batch_size=1), "
                      f"ActorPoolStrategy(size={concurrency}), processor loaded once per actor, hand pixel path, "
                      "reused output arena, one row per item (no concatenation)"})


def paced_ray_data_stream(w: Workload, cpu_resource: str, plan: PacedPlan, concurrency: int = 2) -> dict[str, Any]:
    """Paced, Ray Data's streaming form: one dataset on a warm actor pool, each request taken up at
    its arrival (one in flight per actor, so a request never queues behind a busy actor while
    another is idle)."""
    quiet()
    lines = plan.renamed("rds-")
    index = {rid: k for k, (rid, _) in enumerate(lines)}
    n = len(lines)
    done: list[float | None] = [None] * n
    ok = [False] * n
    dispatched: list[float | None] = [None] * n
    t0, out, _ = _gated_run(w, lines, plan.arrivals, cpu_resource, concurrency, 1)
    for rid, rec, d, start in out:
        j = index[rid]
        done[j], ok[j], dispatched[j] = d - t0, bool(rec and rec.get("ok")), start - t0
    return paced_result(plan, done, ok, dispatched, datasets=1,
                        setup=f"one dataset: map_batches(RequestPreprocessor class), ActorPoolStrategy(size={concurrency}, "
                              "max_tasks_in_flight_per_actor=1), warm; each request taken up at its arrival")


def paced_ray_data(w: Workload, cpu_resource: str, plan: PacedPlan, window_s: float, concurrency: int = 2,
                   warm: bool = True) -> dict[str, Any]:
    """Per-dataset forms: the requests that arrived in window ``[kW, (k+1)W)`` become one dataset
    started when the window closes; ``window_s <= 0``: one dataset per request, started at its
    arrival. Datasets run concurrently (one driver thread each) on the same two CPU-node slots.
    ``warm=False``: the worker processes already hold their UDF (an earlier call warmed them)."""
    from .arrivals import release_times, window_groups
    from .paced import sleep_until

    quiet()
    lines = plan.renamed("rd-")
    n = len(lines)
    index = {rid: k for k, (rid, _) in enumerate(lines)}
    batches = window_groups(plan.arrivals, window_s)
    released = release_times(batches, n)
    done: list[float | None] = [None] * n
    ok = [False] * n
    dispatched: list[float | None] = [None] * n
    if warm:
        for _ in iter_requests(task_dataset(w, rename(w.lines[: 2 * concurrency], "paced-warm-"), cpu_resource, concurrency)):
            pass  # worker processes import and build their UDF (kept for the datasets below)
    t0 = 0.0

    def run_batch(indices: tuple[int, ...]) -> None:
        started = time.perf_counter() - t0
        for j in indices:
            dispatched[j] = started
        for rid, rec, _ in iter_requests(task_dataset(w, [lines[j] for j in indices], cpu_resource, concurrency)):
            j = index[rid]
            done[j] = time.perf_counter() - t0
            ok[j] = bool(rec and rec.get("ok"))

    executor = ThreadPoolExecutor(max_workers=max(1, min(64, len(batches))), thread_name_prefix="rd-window")
    errors: list[str] = []
    try:
        t0 = time.perf_counter()
        futures = []
        for b in batches:
            sleep_until(t0 + b.release_s)
            futures.append(executor.submit(run_batch, b.indices))
        for f in futures:
            try:
                f.result(timeout=max(1.0, PACED_TIMEOUT_S - (time.perf_counter() - t0)))
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
    finally:
        executor.shutdown(wait=not errors, cancel_futures=True)
    what = (f"one dataset per {window_s:g} s window, started when the window closes" if window_s > 0
            else "one dataset per request, started at its arrival")
    out = paced_result(plan, done, ok, dispatched, released, window_s=max(window_s, 0.0), datasets=len(batches),
                       setup=f"map_batches(RequestPreprocessor as tasks, one UDF per worker process), concurrency={concurrency}, "
                             f"1 mm_cpu each; {what}")
    if errors:
        out["errors"] = errors[:3]
    return out
