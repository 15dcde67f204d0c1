"""Reading request JSONL and writing result JSONL and feature dumps (shared by ``align`` and ``run``)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import numpy as np

from ..errors import RequestError
from .parse import request_id_of

DUPLICATE_STATUS = 409  # the id is taken by an earlier line of the same batch (a conflict, not a malformed line)


def read_requests(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(fallback_id, parsed_line)`` per non-blank line; ``fallback_id`` is ``line<N>``.

    The file is opened here, so a file that cannot be read raises ``OSError`` at the call, before
    any line is processed. A line that is not UTF-8 or not JSON yields its ``RequestError``
    (400) instead of a value, so one bad line never ends the batch.
    """
    return _read_lines(open(path, "rb"))  # closed by the generator when it ends


def _read_lines(fh: BinaryIO) -> Iterator[tuple[str, Any]]:
    with fh:
        for lineno, raw_bytes in enumerate(fh, start=1):
            fallback = f"line{lineno}"
            try:
                # utf-8-sig on the first line: a byte-order mark some editors write is not part of the JSON.
                raw = raw_bytes.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield fallback, RequestError(f"request {fallback}: not valid UTF-8 (byte {exc.start + 1})")
                continue
            if not raw.strip():
                continue
            try:
                yield fallback, json.loads(raw)
            except json.JSONDecodeError as exc:
                yield fallback, RequestError(f"request {fallback}: not valid JSON ({exc.msg} at column {exc.colno})")


def dedupe(lines: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    """Pass ``(fallback_id, line)`` through, turning each repeat of a ``request_id`` into an error.

    Results are keyed by ``request_id``, so a batch cannot process one id twice. The first line
    with an id goes on unchanged; a later line with the same id yields ``(that id,
    RequestError 409)``, whose record (``RequestOutcome.failure(id, error)``) carries the id, so
    the batch writes two records under it: the first line's and the duplicate's 409. Lines that
    are already errors (not JSON) or have no usable id are keyed by their fallback id, as their
    records are. ``align`` and ``run`` both read their input through this, so they write the
    same records. Memory: one entry per distinct id in the batch.
    """
    first_at: dict[str, str] = {}
    for position, (fallback, line) in enumerate(lines, start=1):
        rid = request_id_of(line, fallback)
        where = _where(fallback, position)
        if rid in first_at:
            yield rid, RequestError(
                f"request {rid}: duplicate request_id ({where}); the first line with this id ({first_at[rid]}) is processed",
                status=DUPLICATE_STATUS,
            )
            continue
        first_at[rid] = where
        yield fallback, line


def _where(fallback: str, position: int) -> str:
    """``line N`` for lines read by ``read_requests`` (fallback ``lineN``), else the position in the batch."""
    if fallback.startswith("line") and fallback[4:].isdigit():
        return f"line {fallback[4:]}"
    return f"entry {position}"


def write_record(out: TextIO, record: dict[str, Any]) -> None:
    out.write(json.dumps(record, separators=(",", ":")) + "\n")
    out.flush()


def dump_features(directory: str | Path, request_id: str, features: list[np.ndarray],
                  item_features: list[dict[str, Any]] | None = None) -> Path:
    """``DIR/<request_id>.npz``: ``item<n>`` (the main array) and ``item<n>.<name>`` (every output of the
    item, named as the HF processor names it: ``pixel_values``, ``image_grid_thw``, ``target_sizes``,
    ``second_per_grid_ts``, ...), n in prompt order."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in request_id) or "_"
    path = directory / f"{safe}.npz"
    arrays = {f"item{k}": np.asarray(f) for k, f in enumerate(features)}
    for k, named in enumerate(item_features or []):
        arrays.update({f"item{k}.{name}": np.asarray(value) for name, value in named.items()})
    np.savez(path, **arrays)
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
