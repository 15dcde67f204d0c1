"""Reading request JSONL and writing result JSONL and feature dumps (shared by ``align`` and ``run``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .errors import RequestError


def read_requests(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(fallback_id, parsed_line)``; a line that is not JSON yields the RequestError instead."""
    with open(path, encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            fallback = f"line{lineno}"
            try:
                yield fallback, json.loads(raw)
            except json.JSONDecodeError as exc:
                yield fallback, RequestError(f"request {fallback}: not valid JSON ({exc.msg} at column {exc.colno})")


def write_record(out: TextIO, record: dict[str, Any]) -> None:
    out.write(json.dumps(record, separators=(",", ":")) + "\n")
    out.flush()


def dump_features(directory: str | Path, request_id: str, features: list[np.ndarray]) -> Path:
    """``DIR/<request_id>.npz`` with ``item0``, ``item1``... in prompt order."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in request_id) or "_"
    path = directory / f"{safe}.npz"
    np.savez(path, **{f"item{k}": np.asarray(f) for k, f in enumerate(features)})
    return path


def summarize(records: list[dict[str, Any]]) -> str:
    """A short human-readable table of results."""
    lines = [f"{'request':<24} {'ok':<5} {'path':<7} {'tokens':>7}  items / error"]
    for rec in records:
        rid = str(rec.get("request_id"))[:24]
        if rec.get("ok"):
            items = ", ".join(
                f"{it['modality']}{it['index']}:{it['num_tokens']}@{it['offsets'][0][0]}" for it in rec["items"]
            )
            lines.append(f"{rid:<24} {'yes':<5} {rec['path']:<7} {len(rec['input_ids']):>7}  {items or '-'}")
        else:
            err = rec["error"]
            lines.append(f"{rid:<24} {'NO':<5} {'-':<7} {'-':>7}  {err['type']} ({err['status']}): {err['message'][:90]}")
    ok = sum(1 for r in records if r.get("ok"))
    lines.append(f"{ok} of {len(records)} requests ok")
    return "\n".join(lines)
