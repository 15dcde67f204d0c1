"""An engine's per-modality dict of precomputed items, split into ray-mm's one-item entries.

SGLang's ``Engine.generate`` takes, per modality, ONE dict holding all that modality's items
concatenated (``python/sglang/srt/multimodal/processors/base_processor.py``:
``collect_mm_items_from_processor_output`` and ``process_and_combine_mm_data``): processor outputs
by name (``pixel_values``, ``image_grid_thw``, ...), ``offsets`` (inclusive ``[start, end]`` runs of
the modality's tokens in the expanded ``input_ids``), and ``hash`` / ``pad_value`` (taken when the
dict holds one item); or ``{"format": "precomputed_embedding", "feature": ..., <the rest>}``.
ray-mm's own hand-off (:mod:`ray_mm.handoff`) writes those dicts plus a ``ray_mm`` key that SGLang
skips (with no ``modality`` key, SGLang ignores names it does not know): per item its ``hashes``, its
number of ``runs``, its ``spans`` (the whole expansion: runs and the text around them) and its ``rows``
of each array. A dict like that, given as an entry of a ray-mm
request's ``images`` / ``videos`` / ``audios``, is accepted as it is: :func:`split_bundles` turns it
into one precomputed entry per item.

How a dict's items are told apart, in order: the ``ray_mm`` hint; else a grid (one item per grid
row, pixel rows split by each row's product); else it holds one item. Its offsets are honoured:
each item's expansion is the ids at its runs (and the text between them), which alignment then
finds at exactly those offsets. Offsets need the request's own ``input_ids`` (they index them).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from ..errors import RequestError
from ..media import is_precomputed
from ..types import Expansion, MediaSpec, ParsedRequest
from .precomputed import GRID, METADATA_KEYS, PRIMARY, as_array

_HEX = re.compile(r"[0-9a-f]{1,64}")
EMBEDDING_KEYS = ("feature", "embedding")


def split_bundles(req: ParsedRequest, input_ids: Sequence[int], feature_ids: Collection[int],
                  merge_size: int | None) -> dict[tuple[str, int], list[tuple[int, int]]]:
    """Replace each precomputed entry of ``req`` by its items (renumbered per modality); returns
    ``(modality, index) -> runs`` of the items whose dict gave offsets, for the check after alignment."""
    given_runs: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for modality, specs in req.media.items():
        if not any(is_precomputed(s.source) for s in specs):
            continue
        out: list[MediaSpec] = []
        for spec in specs:
            parts = _split(spec, input_ids, req.input_ids is not None, feature_ids, merge_size) if is_precomputed(spec.source) else [spec]
            for part in parts:
                part.index = len(out)
                if part.given and "runs" in part.given:
                    given_runs[(modality, part.index)] = part.given["runs"]
                out.append(part)
        req.media[modality] = out
    return given_runs


def bundle_size_hint(payload: dict[str, Any]) -> int:
    """How many items a dict says it holds before any array is read (for the byte cap): its hint's, else 1."""
    hint = payload.get("ray_mm")
    if isinstance(hint, dict):
        for key in ("hashes", "runs"):
            if isinstance(hint.get(key), list) and hint[key]:
                return len(hint[key])
    return 1


def _split(spec: MediaSpec, ids: Sequence[int], ids_from_client: bool, feature_ids: Collection[int],
           merge_size: int | None) -> list[MediaSpec]:
    src, label, modality = spec.source, spec.label, spec.modality
    hint = src.get("ray_mm") or {}
    if not isinstance(hint, dict):
        raise RequestError(f"{label}: 'ray_mm' must be an object")
    declared = src.get("modality")
    if declared is not None and str(declared).lower() != modality:
        raise RequestError(f"{label}: the dict says modality {declared!r} but is among the {modality} entries")
    if "input_ids" in src and (not ids_from_client or _int_list(src["input_ids"], label, "input_ids") != list(ids)):
        raise RequestError(f"{label}: its 'input_ids' differ from the request's (give them as the request's input_ids)")
    offsets = None
    if src.get("offsets") is not None:
        if not ids_from_client:
            raise RequestError(f"{label}: 'offsets' index the request's input_ids; give input_ids, not a prompt")
        offsets = _offsets(src["offsets"], len(ids), label)
    arrays = {k: v for k, v in src.items() if k not in METADATA_KEYS}
    grid_key = GRID.get(modality)
    grids = as_array(arrays[grid_key], grid_key, label).reshape(-1, 3) if grid_key in arrays else None
    n = bundle_size_hint(src) if "hashes" in hint or "runs" in hint else (len(grids) if grids is not None else 1)
    runs = _runs_per_item(offsets, hint.get("runs"), n, label)
    hashes = _hashes(src, hint, n, label)
    rows = hint.get("rows") or {}
    if not isinstance(rows, dict):
        raise RequestError(f"{label}: 'ray_mm.rows' must be an object")
    spans = _spans(hint.get("spans"), runs, label)
    tokens = [sum(e - s + 1 for s, e in r) if r is not None else None for r in runs]
    per_key = {k: _split_array(k, v, n, rows.get(k), grids, tokens, merge_size, modality, label) for k, v in arrays.items()}
    items = []
    for i in range(n):
        given: dict[str, Any] = {}
        if runs[i] is not None:
            given.update(runs=runs[i], num_tokens=tokens[i], expansion=_expansion(ids, runs[i], spans[i], feature_ids, label))
        if hashes[i] is not None:
            given["hash"] = hashes[i]
        source = {"format": src.get("format"), **{k: parts[i] for k, parts in per_key.items()}}
        items.append(MediaSpec(modality, i, source, {}, spec.request_id, given=given or None))
    return items


def _int_list(value: Any, label: str, name: str) -> list[int]:
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":
        raise RequestError(f"{label}: '{name}' must hold integers")
    return [int(x) for x in arr.reshape(-1)]


def _offsets(value: Any, n_ids: int, label: str) -> list[tuple[int, int]]:
    flat = _int_list(value, label, "offsets")
    if not flat or len(flat) % 2:
        raise RequestError(f"{label}: 'offsets' must be [start, end] pairs")
    pairs = list(zip(flat[0::2], flat[1::2]))
    last = -1
    for s, e in pairs:
        if not last < s <= e < n_ids:
            raise RequestError(f"{label}: offsets [{s}, {e}] are out of order, overlap or fall outside the {n_ids} ids")
        last = e
    return pairs


def _runs_per_item(offsets: list[tuple[int, int]] | None, counts: Any, n: int, label: str) -> list[list[tuple[int, int]] | None]:
    if offsets is None:
        return [None] * n
    if counts is None:
        if n == len(offsets):
            counts = [1] * n
        elif n == 1:
            counts = [len(offsets)]
        else:
            raise RequestError(f"{label}: cannot tell which of its {len(offsets)} offsets belong to which of its {n} items "
                               "(give 'ray_mm': {'runs': [runs per item]})")
    counts = _int_list(counts, label, "ray_mm.runs")
    if len(counts) != n or min(counts) < 1 or sum(counts) != len(offsets):
        raise RequestError(f"{label}: 'ray_mm.runs' must give each of its {n} items at least one of its {len(offsets)} offsets")
    out, k = [], 0
    for c in counts:
        out.append(offsets[k : k + c])
        k += c
    return out


def _spans(value: Any, runs: list[list[tuple[int, int]] | None], label: str) -> list[tuple[int, int] | None]:
    """Each item's whole expansion (``ray_mm.spans``: its runs and the text around them); by default its runs alone."""
    if value is None:
        return [(r[0][0], r[-1][1]) if r is not None else None for r in runs]
    flat = _int_list(value, label, "ray_mm.spans")
    if len(flat) != 2 * len(runs) or any(r is None for r in runs):
        raise RequestError(f"{label}: 'ray_mm.spans' needs offsets, and one [start, end] per item")
    spans = list(zip(flat[0::2], flat[1::2]))
    for (start, end), r in zip(spans, runs):
        if not 0 <= start <= r[0][0] or end < r[-1][1]:  # type: ignore[index]
            raise RequestError(f"{label}: span [{start}, {end}] does not hold its item's offsets")
    return spans  # type: ignore[return-value]


def _hashes(src: dict[str, Any], hint: dict[str, Any], n: int, label: str) -> list[str | None]:
    if "hashes" in hint:
        values = hint["hashes"]
        if not isinstance(values, list) or len(values) != n:
            raise RequestError(f"{label}: 'ray_mm.hashes' must give one hash per item ({n})")
    elif src.get("hash") is not None and n == 1:
        values = [src["hash"]]
    else:
        return [None] * n
    out = []
    for value in values:
        # SGLang's hash is an integer; ray-mm's a hex digest. Either becomes the item's hex hash.
        text = format(value, "x") if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else value
        if not isinstance(text, str) or not _HEX.fullmatch(text):
            raise RequestError(f"{label}: a hash must be a non-negative integer or a hex digest of at most 64 digits")
        out.append(text)
    return out


def _split_array(key: str, value: Any, n: int, rows: Any, grids: np.ndarray | None, tokens: list[int | None],
                 merge_size: int | None, modality: str, label: str) -> list[Any]:
    if n == 1:
        return [value]
    if rows == "list":  # ragged items (shapes differ past the first axis): one array per item
        if not isinstance(value, (list, tuple)) or len(value) != n:
            raise RequestError(f"{label}: '{key}' must be a list of {n} arrays (ray_mm.rows says 'list')")
        return list(value)
    arr = as_array(value, key, label)
    if rows is not None:
        counts = _int_list(rows, label, f"ray_mm.rows.{key}")
    elif key == PRIMARY.get(modality) and grids is not None:
        counts = [int(math.prod(g)) for g in grids]
    elif key in EMBEDDING_KEYS and None not in tokens:
        counts = [int(t) for t in tokens]  # type: ignore[arg-type]
    elif key in EMBEDDING_KEYS and grids is not None and merge_size:
        counts = [int(math.prod(g)) // merge_size**2 for g in grids]
    elif arr.ndim and arr.shape[0] == n:
        counts = [1] * n
    else:
        raise RequestError(f"{label}: cannot split '{key}' among its {n} items (give 'ray_mm': {{'rows': {{'{key}': [...]}}}})")
    if len(counts) != n or min(counts) < 0 or sum(counts) != (arr.shape[0] if arr.ndim else 0):
        raise RequestError(f"{label}: the rows of '{key}' ({arr.shape[0] if arr.ndim else 0}) do not split into {counts}")
    bounds = np.cumsum([0, *counts])
    return [arr[bounds[i] : bounds[i + 1]] for i in range(n)]


def _expansion(ids: Sequence[int], runs: list[tuple[int, int]], span: tuple[int, int] | None, feature_ids: Collection[int],
               label: str) -> Expansion:
    """The item's expansion as its offsets show it: its runs, the ids between them as text, and the
    ids of its span before the first run and after the last."""
    token = int(ids[runs[0][0]])
    if token not in feature_ids:
        raise RequestError(f"{label}: offsets [{runs[0][0]}, {runs[0][1]}] hold token {token}, not one of the model's media tokens")
    arr = np.asarray(ids)
    for s, e in runs:
        if not (arr[s : e + 1] == token).all():
            raise RequestError(f"{label}: offsets [{s}, {e}] are not a run of token {token}")
    start, end = span if span is not None else (runs[0][0], runs[-1][1])
    if end >= len(ids):
        raise RequestError(f"{label}: span [{start}, {end}] falls outside the {len(ids)} ids")
    texts: list[list[int]] = [[int(x) for x in ids[start : runs[0][0]]]]
    texts += [[int(x) for x in ids[e + 1 : s2]] for (_, e), (s2, _) in zip(runs, runs[1:])]
    texts.append([int(x) for x in ids[runs[-1][1] + 1 : end + 1]])
    return Expansion(texts, [e - s + 1 for s, e in runs], token, [""] * len(texts))
