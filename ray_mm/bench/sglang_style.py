"""The SGLang-shaped baseline: one process, a thread pool fetches and decodes, the processor runs inline.

As SGLang's ``load_mm_data`` runs it: ``ThreadPoolExecutor`` fetch + decode, the processor in the
main thread in FIFO order, alignment after. ``sglang_style`` runs the HF processor (the adapter's
hand path switched off); ``sglang_style_hand`` is the same process given ray-mm's hand-tuned pixel
path, the in-process pipeline on the same pixel path as the media workers. Closed loop
(:func:`run_sglang_style`) and paced (:func:`paced_sglang_style`). Both run with no Ray cluster up
(before it starts, after it stops), so nothing else is on the cores.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .cpu import TreeCpu
from .paced import PACED_TIMEOUT_S, PacedPlan, paced_result, sleep_until
from .stats import RunResult
from .workload import Workload, rename

SGLANG_IO_THREADS = 4


@dataclass
class _SglangJob:
    rid: str
    prepared: Any
    futures: list[Any]
    error: Exception | None


def _sglang_prepare(pre: Any, executor: ThreadPoolExecutor, rid: str, line: dict[str, Any]) -> _SglangJob:
    """Arrival of one request in the SGLang-shaped pipeline: tokenize, queue its fetch+decode on the pool."""
    from ..errors import MMError

    try:
        prepared = pre.prepare(line, rid)
        futures = [executor.submit(pre.loader.load, pre.resolve_spec(spec)[0]) for spec in prepared.request.items()]
        return _SglangJob(rid, prepared, futures, None)
    except MMError as exc:
        return _SglangJob(rid, None, [], exc)


def _sglang_finish(pre: Any, job: _SglangJob) -> dict[str, Any]:
    """The inline part: wait for the decoded media, run the processor in this thread, align."""
    from ..errors import InternalError, MMError
    from ..pipeline import RequestOutcome, success_record

    rid = job.rid
    try:
        if job.error is not None:
            raise job.error
        per_spec = [[p.meta for p in pre.process_decoded(spec, fut.result())]
                    for spec, fut in zip(job.prepared.request.items(), job.futures)]
        alignment = pre.align_request(job.prepared, per_spec)
        return success_record(rid, alignment, {})
    except MMError as exc:
        return RequestOutcome.failure(rid, exc).record
    except Exception as exc:
        return RequestOutcome.failure(rid, InternalError(f"request {rid}: {type(exc).__name__}")).record


@contextlib.contextmanager
def _processor_path(pre: Any, hand_path: bool) -> Iterator[None]:
    """SGLang calls the HF processor inline, so its baseline must not get ray-mm's hand-tuned
    pixel path. Adapters are cached per process: the flag is restored afterwards."""
    adapter = pre.adapter
    before = getattr(adapter, "use_hand_path", None)
    if before is not None:
        adapter.use_hand_path = hand_path
    try:
        yield
    finally:
        if before is not None:
            adapter.use_hand_path = before


def run_sglang_style(w: Workload, io_threads: int = SGLANG_IO_THREADS, hand_path: bool = False) -> RunResult:
    """One process: thread-pool fetch+decode, processor inline (FIFO), then alignment. The HF
    processor, as SGLang runs it; ``hand_path=True`` swaps in ray-mm's pixel path (same shape)."""
    from ..pipeline import Preprocessor

    pre = Preprocessor(w.model_dir, w.core, w.adapter)
    with _processor_path(pre, hand_path):
        return _run_sglang_style(pre, w, io_threads, "sglang_style_hand" if hand_path else "sglang_style")


def _run_sglang_style(pre: Any, w: Workload, io_threads: int, name: str) -> RunResult:
    executor = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="mm-io")
    warm = w.lines[:1]
    for rid, line in warm:  # imports, first-call setup
        pre.run(line, rid)
    cpu = TreeCpu()
    c0 = cpu.sample()
    t0 = time.perf_counter()
    # every request arrives at t0: tokenize, queue its fetch+decode
    jobs = [_sglang_prepare(pre, executor, rid, line) for rid, line in w.lines]
    records, latencies = [], []
    for job in jobs:
        records.append(_sglang_finish(pre, job))
        latencies.append(time.perf_counter() - t0)
    wall = time.perf_counter() - t0
    delta = TreeCpu.delta(c0, cpu.sample())
    executor.shutdown()
    return RunResult(name, wall, latencies, records, delta, {"io_threads": io_threads,
                                                             "processor": "ray-mm hand path" if name.endswith("_hand") else "HF"})


def paced_sglang_style(w: Workload, plan: PacedPlan, io_threads: int = SGLANG_IO_THREADS, hand_path: bool = False) -> dict[str, Any]:
    """The SGLang-shaped process fed open-loop: at its arrival a request is tokenized and its
    fetch+decode queued on the thread pool; the main thread runs the HF processor inline in FIFO
    order, taking new arrivals between requests (never while the processor runs). ``hand_path``:
    ray-mm's pixel path instead of the HF processor (``sglang_style_hand``)."""
    from collections import deque
    from concurrent.futures import wait as futures_wait

    from ..pipeline import Preprocessor

    lines = plan.renamed("sgh-" if hand_path else "sg-")
    n = len(lines)
    done: list[float | None] = [None] * n
    ok = [False] * n
    dispatched: list[float | None] = [None] * n
    pre = Preprocessor(w.model_dir, w.core, w.adapter)
    executor = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="mm-io")
    try:
        with _processor_path(pre, hand_path):
            for rid, line in rename(w.lines[:1], "paced-warm-"):
                pre.run(line, rid)
            queue: deque[tuple[int, _SglangJob]] = deque()
            t0 = time.perf_counter()
            k = 0
            while k < n or queue:
                if time.perf_counter() - t0 > PACED_TIMEOUT_S:
                    break
                while k < n and plan.arrivals[k] <= time.perf_counter() - t0:
                    dispatched[k] = time.perf_counter() - t0
                    queue.append((k, _sglang_prepare(pre, executor, *lines[k])))
                    k += 1
                if not queue:
                    sleep_until(t0 + plan.arrivals[k])
                    continue
                j, job = queue[0]
                if job.futures:  # wait for the head's media, but no later than the next arrival
                    timeout = None if k >= n else max(0.0, plan.arrivals[k] - (time.perf_counter() - t0))
                    if futures_wait(job.futures, timeout=timeout).not_done:
                        continue
                queue.popleft()
                rec = _sglang_finish(pre, job)
                done[j] = time.perf_counter() - t0
                ok[j] = bool(rec.get("ok"))
    finally:
        executor.shutdown()
    return paced_result(plan, done, ok, dispatched, io_threads=io_threads,
                         setup=f"one process: ThreadPoolExecutor({io_threads}) fetch+decode at arrival, "
                               + ("ray-mm hand pixel path" if hand_path else "HF processor") + " inline in FIFO order")
