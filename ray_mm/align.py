"""Token alignment: map processed media items onto their placeholder tokens.

Two paths (see DESIGN.md, "Token alignment"):

* **fast** (1:1): every placeholder token stands for one item. One vectorised
  pass finds the placeholder positions; expansion copies the text segments
  between them and inserts each item's run, recording offsets as it goes.
* **legacy scan**: for ids that may already be expanded
  (``skip_tokenizer_init``) and for adapters with dynamic frame expansion.
  Maximal runs of each media token are matched to items in order: a run of 1
  is expanded, a run equal to the item's token count is kept, anything else
  is an :class:`AlignmentError`.

Offsets are inclusive ``(start, end)`` and computed without wrap-around, so
runs touching either end of the sequence are found correctly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .errors import AlignmentError
from .types import AlignedItem, Alignment, ItemMeta

_ID_DTYPE = np.int64


def find_runs(ids: Sequence[int] | np.ndarray, token_id: int) -> list[tuple[int, int]]:
    """Inclusive ``(start, end)`` of each maximal run of ``token_id``; no wrap-around."""
    mask = np.asarray(ids) == token_id
    if not mask.any():
        return []
    # Pad with False on both sides so runs touching either end still produce an edge.
    edges = np.flatnonzero(np.diff(np.concatenate(([False], mask, [False])).astype(np.int8)))
    return [(int(s), int(e) - 1) for s, e in zip(edges[0::2], edges[1::2])]


def _token_runs(ids: np.ndarray, token_to_modality: Mapping[int, str]) -> list[tuple[int, int, int]]:
    """Maximal runs of any media token, in sequence order, as ``(start, end, token_id)``."""
    tokens = np.fromiter(token_to_modality.keys(), dtype=_ID_DTYPE)
    positions = np.flatnonzero(np.isin(ids, tokens))
    if positions.size == 0:
        return []
    values = ids[positions]
    # A run breaks where positions are not adjacent or the token changes.
    breaks = np.flatnonzero((np.diff(positions) != 1) | (np.diff(values) != 0)) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [positions.size])) - 1
    return [(int(positions[s]), int(positions[e]), int(values[s])) for s, e in zip(starts, ends)]


def _expand(
    ids: np.ndarray, plan: list[tuple[int, int, int, ItemMeta, bool]]
) -> tuple[list[int], list[AlignedItem]]:
    """Build the output ids from runs ``(start, end, token, item, keep)`` in order."""
    pieces: list[np.ndarray] = []
    aligned: list[AlignedItem] = []
    cursor = 0
    out_len = 0
    for start, end, token, item, keep in plan:
        if start > cursor:
            pieces.append(ids[cursor:start])
            out_len += start - cursor
        if keep:
            pieces.append(ids[start : end + 1])
        else:
            pieces.append(np.full(item.num_tokens, token, dtype=_ID_DTYPE))
        aligned.append(AlignedItem(meta=item, offsets=[(out_len, out_len + item.num_tokens - 1)]))
        out_len += item.num_tokens
        cursor = end + 1
    pieces.append(ids[cursor:])
    return np.concatenate(pieces).tolist() if pieces else [], aligned


def align(
    input_ids: Sequence[int] | np.ndarray,
    placeholder_ids: Mapping[str, int],
    items: Mapping[str, Sequence[ItemMeta]],
    *,
    request_id: str = "",
    skip_tokenizer_init: bool = False,
    dynamic_frame_expansion: bool = False,
) -> Alignment:
    """Align ``items`` (per modality, in request order) with ``input_ids``.

    ``placeholder_ids`` maps each modality the model accepts to its media token id.
    """
    token_to_modality = {tok: mod for mod, tok in placeholder_ids.items()}
    unknown = [m for m, lst in items.items() if lst and m not in placeholder_ids]
    if unknown:
        raise AlignmentError(f"request {request_id}: the model has no placeholder for {', '.join(unknown)}")
    if not skip_tokenizer_init and not dynamic_frame_expansion:
        ids_list = input_ids.tolist() if isinstance(input_ids, np.ndarray) else list(input_ids)
        fast = _try_fast(ids_list, token_to_modality, items)
        if fast is not None:
            return fast
    ids = np.asarray(input_ids, dtype=_ID_DTYPE)
    return _legacy(ids, _token_runs(ids, token_to_modality), token_to_modality, items, request_id)


def _try_fast(
    ids: list[int], token_to_modality: Mapping[int, str], items: Mapping[str, Sequence[ItemMeta]]
) -> Alignment | None:
    """The 1:1 path, or None when placeholder counts or shapes call for the legacy scan.

    Prompts on this path are short (media not yet expanded), so a plain Python
    pass over them beats converting to numpy; the output is built by list
    extension while offsets are recorded, without rescanning.
    """
    positions = [k for k, tok in enumerate(ids) if tok in token_to_modality]
    counts = dict.fromkeys(token_to_modality.values(), 0)
    for k in positions:
        counts[token_to_modality[ids[k]]] += 1
    if any(counts[m] != len(items.get(m, ())) for m in counts):
        return None
    if any(b - a == 1 and ids[a] == ids[b] for a, b in zip(positions, positions[1:])):
        return None  # adjacent placeholders may be an expanded run: let the legacy scan decide
    cursors = dict.fromkeys(counts, 0)
    out: list[int] = []
    aligned: list[AlignedItem] = []
    cursor = 0
    for k in positions:
        tok = ids[k]
        modality = token_to_modality[tok]
        item = items[modality][cursors[modality]]
        cursors[modality] += 1
        out.extend(ids[cursor:k])
        aligned.append(AlignedItem(meta=item, offsets=[(len(out), len(out) + item.num_tokens - 1)]))
        out.extend([tok] * item.num_tokens)
        cursor = k + 1
    out.extend(ids[cursor:])
    return Alignment(input_ids=out, items=aligned, path="fast")


def _legacy(
    ids: np.ndarray,
    runs: list[tuple[int, int, int]],
    token_to_modality: Mapping[int, str],
    items: Mapping[str, Sequence[ItemMeta]],
    request_id: str,
) -> Alignment:
    cursors = {m: 0 for m in token_to_modality.values()}
    plan = []
    for start, end, tok in runs:
        modality = token_to_modality[tok]
        k = cursors[modality]
        available = items.get(modality, ())
        if k >= len(available):
            n_placeholders = sum(1 for _, _, t in runs if token_to_modality[t] == modality)
            raise AlignmentError(
                f"request {request_id}: more {modality} placeholders than {modality} items "
                f"(found at least {n_placeholders} placeholder runs, {len(available)} items)"
            )
        item = available[k]
        length = end - start + 1
        if length != 1 and length != item.num_tokens:
            raise AlignmentError(
                f"request {request_id}: {modality} {item.index} has a run of {length} placeholder tokens "
                f"at {start}, but the item stands for {item.num_tokens} tokens (expected 1 or {item.num_tokens})"
            )
        plan.append((start, end, tok, item, length == item.num_tokens and length != 1 or item.num_tokens == 1))
        cursors[modality] = k + 1
    for modality, lst in items.items():
        if cursors.get(modality, 0) < len(lst):
            raise AlignmentError(
                f"request {request_id}: {len(lst)} {modality} items but only {cursors.get(modality, 0)} "
                f"{modality} placeholders in the prompt"
            )
    out, aligned = _expand(ids, plan)
    return Alignment(input_ids=out, items=aligned, path="legacy")
