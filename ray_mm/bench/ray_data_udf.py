"""The Ray Data baseline's UDF: :class:`RequestPreprocessor`, loaded once per actor, requests in, one row per item out.

The processor is built in ``__init__``; a request's media are fetched on 4 threads (as the media
worker's async fetches), run through ray-mm's per-item path (the hand-tuned Qwen pixel path, as the
media workers) with outputs in a reused per-call arena (:mod:`ray_mm.buffers`), and aligned. Each
item's main feature array goes back as it is, one row per item (no concatenation of a request's
features). :func:`preprocess_batch` is the same UDF for ``map_batches`` tasks.
"""

from __future__ import annotations

import json
import os
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..config import RayMMConfig

FETCH_THREADS = 4
_GATE_POLL_S = 0.002


def _release_when_gone(pool: Any, arena: Any, arrays: list[np.ndarray]) -> None:
    """Give ``arena`` back to ``pool`` once every output in it is garbage.

    Ray Data may wrap an output zero-copy into its Arrow block (a single-item request) and keep it
    until the block is stored, past the next call; so the arena is not reset at the next call as the
    media worker's is (Ray has stored an actor's return value by then), but when the arrays' memory
    owners (the torch views the pixel path allocated) are collected.
    """
    roots = []
    for a in arrays:
        if not arena.holds(a):
            continue
        root: Any = a
        while isinstance(root, np.ndarray) and root.base is not None:
            root = root.base
        roots.append(root)
    if not roots:
        pool.release(arena)
        return
    left = [len(roots)]

    def one_gone() -> None:
        left[0] -= 1
        if left[0] == 0:
            pool.release(arena)

    for root in roots:
        weakref.finalize(root, one_gone)


class RequestPreprocessor:
    """Ray Data UDF (``map_batches``, ``batch_format="numpy"``): requests in, one row per item out."""

    def __init__(self, model_dir: str, core: str, adapter: str | None = None, gate: str | None = None) -> None:
        os.environ["OMP_NUM_THREADS"] = "1"  # one processing thread per actor, like a media worker
        import torch

        torch.set_num_threads(1)
        from ..buffers import ArenaPool
        from ..pipeline import Preprocessor

        self.pre = Preprocessor(model_dir, RayMMConfig.model_validate_json(core), adapter)
        self.arenas = ArenaPool()
        self.io = ThreadPoolExecutor(max_workers=FETCH_THREADS, thread_name_prefix="rd-fetch")
        self.gate = Path(gate) if gate else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        cols: dict[str, list[Any]] = {"rid": [], "item": [], "rows": [], "record": [], "start": [], "features": []}
        offsets = batch.get("offset_s")
        for k, (rid, line) in enumerate(zip(batch["rid"], batch["line"])):
            start = self._wait(float(offsets[k]) if offsets is not None else -1.0)
            record, feats = self._one(str(rid), json.loads(str(line)))
            rows = max(1, len(feats))
            cols["rid"] += [str(rid)] * rows
            cols["item"] += list(range(rows))
            cols["rows"] += [rows] * rows
            cols["record"] += [json.dumps(record)] + [""] * (rows - 1)
            cols["start"] += [start] * rows
            # A failed request still yields its row; its placeholder has the features' rank and dtype.
            cols["features"] += feats or [np.zeros((1, 1), np.float32)]
        return cols

    def _wait(self, offset_s: float) -> float:
        """For a gated row (``offset_s >= 0``): wait for the driver's t0, then until ``t0 + offset_s``.
        Returns the epoch time the request started here (its dispatch), NaN for ungated rows."""
        if offset_s < 0 or self.gate is None:
            return float("nan")
        while not self.gate.exists():
            time.sleep(_GATE_POLL_S)
        t0 = float(self.gate.read_text() or "nan")
        due = t0 + offset_s
        now = time.time()
        if due > now:
            time.sleep(due - now)
        return max(due, now)

    def _fetch(self, spec: Any) -> Any:
        load_spec, _ = self.pre.resolve_spec(spec)
        return None if self.pre._nothing_to_fetch(load_spec) else self.pre.loader.fetch(load_spec)

    def _one(self, rid: str, line: dict[str, Any]) -> tuple[dict[str, Any], list[np.ndarray]]:
        from ..buffers import output_arena
        from ..errors import InternalError, MMError
        from ..pipeline import RequestOutcome, success_record

        arena = self.arenas.acquire()
        feats: list[np.ndarray] = []
        try:
            prepared = self.pre.prepare(line, rid)
            specs = prepared.request.items()
            fetched = list(self.io.map(self._fetch, specs))
            with output_arena(arena):
                processed = [self.pre.process_fetched(spec, f) for spec, f in zip(specs, fetched)]
            alignment = self.pre.align_request(prepared, [[p.meta for p in group] for group in processed])
            by_meta = {id(p.meta): p for group in processed for p in group}
            # float32 transport: what the model consumes is what the processor made (finish_features is the identity).
            feats = [by_meta[id(it.meta)].features[by_meta[id(it.meta)].primary] for it in alignment.items]
            record = success_record(rid, alignment, {})
        except MMError as exc:
            record = RequestOutcome.failure(rid, exc).record
        except Exception as exc:
            record = RequestOutcome.failure(rid, InternalError(f"request {rid}: {type(exc).__name__}")).record
        _release_when_gone(self.arenas, arena, feats)
        return record, feats


_TASK_UDF: dict[tuple[str, str, str | None], RequestPreprocessor] = {}


def preprocess_batch(batch: dict[str, np.ndarray], model_dir: str, core: str, adapter: str | None) -> dict[str, Any]:
    """The same UDF for ``map_batches`` tasks: one instance per Ray worker process, kept across
    datasets (Ray reuses the process), so a per-dataset form does not reload the processor."""
    key = (model_dir, core, adapter)
    udf = _TASK_UDF.get(key)
    if udf is None:
        udf = _TASK_UDF[key] = RequestPreprocessor(model_dir, core, adapter)
    return udf(batch)
