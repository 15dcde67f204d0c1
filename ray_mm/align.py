"""Token alignment: map processed media items onto their placeholder tokens.

Each item carries its *expansion* (``ray_mm.types.Expansion``): the ids that replace
its compact placeholder, as text pieces around runs of its feature token. Two paths
(see DESIGN.md, "Token alignment"):

* **fast** (1:1): the prompt holds exactly one compact placeholder per item. One
  pass replaces each by its item's expansion, recording the offsets of its runs.
* **legacy scan**: for ids that may already be expanded (``skip_tokenizer_init``),
  adapters with dynamic frame expansion, and count mismatches. At each placeholder
  or feature token, in order, the next item of that modality must be either its
  compact placeholder (expanded) or its *full* expansion, every text token and
  every run length (kept unchanged). Anything else is an :class:`AlignmentError`
  naming the item, the position and what was expected there.

Where an expansion begins or ends with plain text (Qwen3-VL's ``<t seconds>``) and
the prompt token next to the placeholder is not a special token, ids spliced in
id space could tokenize differently from the processor's text splice:
:class:`SpliceRequired` says so, and the caller splices text instead
(:func:`align_by_text`). Offsets are inclusive ``(start, end)`` runs, found without
wrap-around.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .errors import AlignmentError
from .types import AlignedItem, Alignment, Expansion, ItemMeta

_ID_DTYPE = np.int64


class SpliceRequired(Exception):
    """An open-ended expansion sits next to plain text: only a text splice tokenizes it as HF does."""


def find_runs(ids: Sequence[int] | np.ndarray, token_id: int) -> list[tuple[int, int]]:
    """Inclusive ``(start, end)`` of each maximal run of ``token_id``; no wrap-around."""
    mask = np.asarray(ids) == token_id
    if not mask.any():
        return []
    # Pad with False on both sides so runs touching either end still produce an edge.
    edges = np.flatnonzero(np.diff(np.concatenate(([False], mask, [False])).astype(np.int8)))
    return [(int(s), int(e) - 1) for s, e in zip(edges[0::2], edges[1::2])]


def expansion_of(item: ItemMeta, feature_id: int) -> Expansion:
    return item.expansion if item.expansion is not None else Expansion.single_run(feature_id, item.num_tokens)


def _aligned(item: ItemMeta, exp: Expansion, start: int) -> AlignedItem:
    return AlignedItem(meta=item, offsets=[(start + s, start + e) for s, e in exp.relative_runs()])


def align(
    input_ids: Sequence[int] | np.ndarray,
    placeholder_ids: Mapping[str, int],
    items: Mapping[str, Sequence[ItemMeta]],
    *,
    request_id: str = "",
    skip_tokenizer_init: bool = False,
    dynamic_frame_expansion: bool = False,
    feature_ids: Mapping[str, int] | None = None,
    special_ids: frozenset[int] | None = None,
    from_text: bool = False,
) -> Alignment:
    """Align ``items`` (per modality, in request order) with ``input_ids``.

    ``placeholder_ids`` maps each modality the model accepts to its compact placeholder token;
    ``feature_ids`` to the token its expansion's runs are made of (default: the same).
    With ``special_ids``, the fast path raises :class:`SpliceRequired` where an open-ended
    expansion would sit next to a token that is not special (or next to another open one).
    ``from_text``: the ids are ray-mm's tokenization of a text prompt, where every placeholder
    token is one item's compact placeholder, as the processor reads text (so placeholders side
    by side are several items, never one expanded run).
    """
    feature_ids = dict(placeholder_ids) if feature_ids is None else {**placeholder_ids, **feature_ids}
    unknown = [m for m, lst in items.items() if lst and m not in placeholder_ids]
    if unknown:
        raise AlignmentError(f"request {request_id}: the model has no placeholder for {', '.join(unknown)}")
    if not skip_tokenizer_init and not dynamic_frame_expansion:
        ids_list = input_ids.tolist() if isinstance(input_ids, np.ndarray) else list(input_ids)
        fast = _try_fast(ids_list, placeholder_ids, feature_ids, items, special_ids, from_text)
        if fast is not None:
            return fast
    ids = input_ids.tolist() if isinstance(input_ids, np.ndarray) else list(input_ids)
    return _legacy(ids, placeholder_ids, feature_ids, items, request_id)


def _try_fast(
    ids: list[int],
    placeholder_ids: Mapping[str, int],
    feature_ids: Mapping[str, int],
    items: Mapping[str, Sequence[ItemMeta]],
    special_ids: frozenset[int] | None,
    from_text: bool = False,
) -> Alignment | None:
    """The 1:1 path, or None when counts or shapes call for the legacy scan.

    Prompts on this path are short (media not yet expanded), so a plain Python pass beats
    numpy; the output is built by list extension while offsets are recorded, without rescanning.
    """
    token_to_modality = {tok: mod for mod, tok in placeholder_ids.items()}
    features_only = {tok for mod, tok in feature_ids.items() if tok not in token_to_modality}
    positions = []
    for k, tok in enumerate(ids):
        if tok in token_to_modality:
            positions.append(k)
        elif tok in features_only:
            return None  # an expansion is already in the ids
    counts = dict.fromkeys(placeholder_ids, 0)
    for k in positions:
        counts[token_to_modality[ids[k]]] += 1
    if any(counts[m] != len(items.get(m, ())) for m in counts):
        return None
    bare = {m for m in counts if not all(_bracketed(expansion_of(it, feature_ids[m])) for it in items.get(m, ()))}
    if not from_text and any(b - a == 1 and ids[a] == ids[b] and token_to_modality[ids[a]] in bare
                             for a, b in zip(positions, positions[1:])):
        return None  # adjacent placeholders may be an expanded run: let the legacy scan decide
    cursors = dict.fromkeys(counts, 0)
    planned: dict[int, tuple[str, ItemMeta, Expansion]] = {}
    for k in positions:
        modality = token_to_modality[ids[k]]
        item = items[modality][cursors[modality]]
        cursors[modality] += 1
        planned[k] = (modality, item, expansion_of(item, feature_ids[modality]))
    if special_ids is not None:
        _check_boundaries(ids, planned, special_ids)
    out: list[int] = []
    aligned: list[AlignedItem] = []
    cursor = 0
    for k, (_, item, exp) in planned.items():
        out.extend(ids[cursor:k])
        aligned.append(AlignedItem(meta=item, offsets=exp.extend_into(out)))
        cursor = k + 1
    out.extend(ids[cursor:])
    return Alignment(input_ids=out, items=aligned, path="fast")


def _check_boundaries(ids: list[int], planned: Mapping[int, tuple[str, ItemMeta, Expansion]], special_ids: frozenset[int]) -> None:
    """Raise :class:`SpliceRequired` where an expansion's plain-text end would meet text in the output:
    a neighbour that is not special, or another placeholder whose expansion is open on that side."""
    for k, (modality, item, exp) in planned.items():
        before, after = planned.get(k - 1), planned.get(k + 1)
        if exp.open_start and k > 0 and (ids[k - 1] not in special_ids or (before is not None and before[2].open_end)):
            raise SpliceRequired(f"{modality} {item.index}")
        if exp.open_end and k + 1 < len(ids) and (ids[k + 1] not in special_ids or (after is not None and after[2].open_start)):
            raise SpliceRequired(f"{modality} {item.index}")


def _legacy(
    ids: list[int],
    placeholder_ids: Mapping[str, int],
    feature_ids: Mapping[str, int],
    items: Mapping[str, Sequence[ItemMeta]],
    request_id: str,
) -> Alignment:
    """Walk the ids; at each placeholder or feature token, the next item of its modality must be
    there, compact or fully expanded."""
    # A token may trigger several modalities (InternVL / GLM-4V video frames use the image feature token):
    # the placeholder's own modality first, then those whose runs are made of it.
    trigger: dict[int, list[str]] = {}
    for m, tok in placeholder_ids.items():
        trigger.setdefault(tok, []).append(m)
    for m, tok in feature_ids.items():
        if m not in trigger.setdefault(tok, []):
            trigger[tok].append(m)
    cursors = {m: 0 for m in placeholder_ids}
    arr = np.asarray(ids, dtype=_ID_DTYPE)
    hits = np.flatnonzero(np.isin(arr, np.fromiter(trigger, dtype=_ID_DTYPE))) if ids else np.empty(0, _ID_DTYPE)
    out: list[int] = []
    aligned: list[AlignedItem] = []
    cursor = 0  # ids before this are copied or consumed
    for p in hits.tolist():
        if p < cursor:
            continue  # inside an expansion kept whole
        modality = _pick(trigger[ids[p]], ids, p, items, cursors, feature_ids, cursor)
        available = items.get(modality, ())
        k = cursors[modality]
        if k >= len(available):
            raise AlignmentError(
                f"request {request_id}: more {modality} placeholders than {modality} items "
                f"(a {modality} placeholder or feature token at position {p} after all {len(available)} items were placed)"
            )
        item = available[k]
        exp = expansion_of(item, feature_ids[modality])
        full = _full_match_start(ids, p, exp, cursor)
        if full is not None:
            # Kept as sent. Only the core is matched: plain text at either end (Gemma 3's newlines,
            # Qwen3-VL's first timestamp) may have merged with the prompt's text under the tokenizer.
            core_len = exp.length - exp.lead - exp.trail
            out.extend(ids[cursor:full])
            aligned.append(_aligned(item, exp, len(out) - exp.lead))
            out.extend(ids[full : full + core_len])
            cursor = full + core_len
        elif ids[p] == placeholder_ids[modality] and (_run_length(ids, p) == 1 or _compact_run(ids, p, exp, cursor)):
            out.extend(ids[cursor:p])
            aligned.append(_aligned(item, exp, len(out)))
            out.extend(exp.ids())
            cursor = p + 1
        else:
            raise AlignmentError(_mismatch(request_id, modality, item, exp, ids, p))
        cursors[modality] = k + 1
    for modality, lst in items.items():
        if cursors.get(modality, 0) < len(lst):
            raise AlignmentError(
                f"request {request_id}: {len(lst)} {modality} items but only {cursors.get(modality, 0)} "
                f"{modality} placeholders in the prompt"
            )
    out.extend(ids[cursor:])
    return Alignment(input_ids=out, items=aligned, path="legacy")


def _pick(candidates: list[str], ids: list[int], p: int, items: Mapping[str, Sequence[ItemMeta]],
          cursors: Mapping[str, int], feature_ids: Mapping[str, int], cursor: int) -> str:
    """The modality of the token at ``p``: the one whose next item's full expansion is there (its
    plain-text lead matching too, where several match), else the first candidate."""
    if len(candidates) == 1:
        return candidates[0]
    found = []
    for m in candidates:
        lst = items.get(m, ())
        if cursors[m] < len(lst):
            exp = expansion_of(lst[cursors[m]], feature_ids[m])
            start = _full_match_start(ids, p, exp, cursor)
            if start is not None:
                lead = exp.ids()[: exp.lead]
                found.append((bool(lead) and ids[max(0, start - len(lead)) : start] == lead, m))
    if found:
        return max(found, key=lambda f: f[0])[1]
    # No item's expansion is here: blame one that still has items, so the error names what was expected.
    return next((m for m in candidates if cursors[m] < len(items.get(m, ()))), candidates[0])


def _anchor(exp: Expansion, token: int) -> int | None:
    """Where ``token`` first occurs in the expansion (the scan meets an expansion there)."""
    ids = exp.ids()
    return ids.index(token) if token in ids else None


def _full_match_start(ids: list[int], p: int, exp: Expansion, cursor: int) -> int | None:
    """Where the core of the item's full expansion starts (see ``Expansion.core``) if the one met at
    ``p`` is exactly it, else None. A run at either end of the expansion must not continue past it
    (no longer run is accepted)."""
    core = exp.core()
    if ids[p] not in core:
        return None
    start = p - core.index(ids[p])
    end = start + len(core)
    if start < cursor or end > len(ids) or ids[start:end] != core:
        return None
    if not exp.texts[0] and start > 0 and ids[start - 1] == exp.token:
        return None
    if not exp.texts[-1] and end < len(ids) and ids[end] == exp.token:
        return None
    return start


def _bracketed(exp: Expansion) -> bool:
    """The expansion has text before its first run and after its last: no bare run of its token
    begins or ends it, so placeholders side by side cannot be one expanded item (MiniCPM-V)."""
    return bool(exp.texts[0]) and bool(exp.texts[-1])


def _compact_run(ids: list[int], p: int, exp: Expansion, cursor: int) -> bool:
    """Whether the placeholder at ``p``, one of several side by side, is compact: only for a bracketed
    expansion (a full one would have matched), and only where no unconsumed token next to the run is
    one that borders a run in the expansion (a damaged expansion is an error, not placeholders)."""
    if not _bracketed(exp):
        return False
    start, end = p, p
    while start > cursor and ids[start - 1] == ids[p]:
        start -= 1
    while end + 1 < len(ids) and ids[end + 1] == ids[p]:
        end += 1
    borders = {t[-1] for t in exp.texts[:-1] if t} | {t[0] for t in exp.texts[1:] if t}
    return not ((start > cursor and ids[start - 1] in borders) or (end + 1 < len(ids) and ids[end + 1] in borders))


def _run_length(ids: list[int], p: int) -> int:
    end = p
    while end + 1 < len(ids) and ids[end + 1] == ids[p]:
        end += 1
    start = p
    while start > 0 and ids[start - 1] == ids[p]:
        start -= 1
    return end - start + 1


def _mismatch(request_id: str, modality: str, item: ItemMeta, exp: Expansion, ids: list[int], p: int) -> str:
    """What was expected at ``p`` and what was found, for the error message."""
    run = _run_length(ids, p)
    head = f"request {request_id}: {modality} {item.index} at position {p}: expected its compact placeholder (1 token) or "
    if len(exp.runs) == 1 and not exp.texts[0] and not exp.texts[-1]:
        return head + (f"its full expansion, a run of {item.num_tokens} tokens (expected 1 or {item.num_tokens}); "
                       f"found a run of {run}")
    anchor = _anchor(exp, ids[p]) or 0
    start, want = max(0, p - anchor), exp.ids()
    got = ids[start : start + len(want)]
    diff = next((j for j, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
    found = f"token {got[diff]}" if diff < len(got) else "the end of the ids"
    return head + (f"its full expansion of {len(want)} tokens ({len(exp.runs)} runs of {exp.runs[:4]}"
                   f"{'...' if len(exp.runs) > 4 else ''} with text between); from position {start} it differs at "
                   f"{start + diff}: expected token {want[diff] if diff < len(want) else 'end'}, found {found}")


def align_by_text(
    text: str,
    placeholder_texts: Mapping[str, str],
    feature_ids: Mapping[str, int],
    token_texts: Mapping[str, str],
    items: Mapping[str, Sequence[ItemMeta]],
    tokenize: Callable[[str], list[int]],
    *,
    request_id: str = "",
) -> Alignment:
    """The processor's own way: replace each compact placeholder in ``text`` by its item's
    expansion as text, in prompt order, and tokenize once. Offsets are read back from the
    feature tokens in order. Used where id-space splicing could tokenize differently."""
    pattern = re.compile("|".join(f"(?P<{m}>{re.escape(t)})" for m, t in placeholder_texts.items() if items.get(m)))
    cursors = dict.fromkeys(placeholder_texts, 0)
    order: list[tuple[str, ItemMeta]] = []
    pieces, last = [], 0
    for match in pattern.finditer(text):
        modality = match.lastgroup or ""
        available = items.get(modality, ())
        if cursors[modality] >= len(available):
            raise AlignmentError(f"request {request_id}: more {modality} placeholders than {modality} items")
        item = available[cursors[modality]]
        cursors[modality] += 1
        exp = expansion_of(item, feature_ids[modality])
        pieces += [text[last : match.start()], exp.text(token_texts[modality])]
        order.append((modality, item))
        last = match.end()
    for modality, lst in items.items():
        if cursors.get(modality, 0) < len(lst):
            raise AlignmentError(f"request {request_id}: {len(lst)} {modality} items but only {cursors.get(modality, 0)} "
                                 f"{modality} placeholders in the prompt")
    ids = tokenize("".join(pieces) + text[last:])
    arr = np.asarray(ids, dtype=_ID_DTYPE)
    aligned = []
    # Keyed by token: modalities may share one feature token.
    positions = {tok: np.flatnonzero(arr == tok).tolist() for tok in set(feature_ids.values())}
    taken = dict.fromkeys(positions, 0)
    for modality, item in order:
        offsets = []
        tok = feature_ids[modality]
        for n in expansion_of(item, tok).runs:
            run = positions[tok][taken[tok] : taken[tok] + n]
            taken[tok] += n
            if len(run) != n or run[-1] - run[0] != n - 1:
                raise AlignmentError(f"request {request_id}: {modality} {item.index}: its expansion did not survive tokenization")
            offsets.append((run[0], run[-1]))
        aligned.append(AlignedItem(meta=item, offsets=offsets))
    return Alignment(input_ids=ids, items=aligned, path="fast")

