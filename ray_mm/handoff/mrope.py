"""M-RoPE positions (3-D rotary positions) of the Qwen-VL families, from a ray-mm record.

This module owns one computation: given a request's expanded ``input_ids`` and its record
``items`` (each item's ``grid_thw`` and the ``offsets`` of its feature-token runs), the
``(3, seq_len)`` temporal / height / width positions and the ``mrope_position_delta`` that the
model's language tower uses, so an engine that takes positions from outside does not have to
recompute them on its own CPU (and cannot get them subtly wrong).

Reference: transformers 5.24, ``get_rope_index`` / ``get_vision_position_ids`` of

- ``transformers/models/qwen2_vl/modeling_qwen2_vl.py`` (``Qwen2VLModel``),
- ``transformers/models/qwen2_5_vl/modeling_qwen2_5_vl.py`` (``Qwen2_5_VLModel``: videos' temporal
  positions scaled by ``tokens_per_second * second_per_grid_ts``),
- ``transformers/models/qwen3_vl/modeling_qwen3_vl.py`` (``Qwen3VLModel``; ``qwen3_vl_moe`` has the
  same code: a video's grid ``[t, h, w]`` is split into ``t`` frames of grid ``[1, h, w]``, because
  the processor writes a ``<t seconds>`` timestamp and ``<|vision_start|>`` / ``<|vision_end|>``
  around every temporal group, so each group is its own run of video tokens).

What HF 5.24 does, for one sequence without padding: it groups consecutive tokens by
``mm_token_type_ids`` (0 text, 1 image token, 2 video token). A text group of ``n`` tokens takes
positions ``p, ..., p + n - 1`` on all three axes and moves ``p`` by ``n``. Each vision group takes
the next grid of its modality; with ``t, h, w = grid_t, grid_h // merge, grid_w // merge`` its
token ``(i, j, k)`` (row-major) gets ``(p + long(i * interval), p + j, p + k)``, and ``p`` moves
by ``max(h, w)`` (not by the largest position + 1, as transformers 4.x did: the temporal extent no
longer counts). ``interval`` is 1, except for Qwen2.5-VL videos: ``tokens_per_second *
second_per_grid_ts``, a float32 product (``second_per_grid_ts`` is the processor's float32 tensor),
truncated after multiplying. The delta is ``positions.max() + 1 - seq_len`` (the temporal axis
included), what decoding adds to the 1-D position of each new token.

Here the vision groups come from the record's items instead of a token scan: one run per item
(Qwen3-VL videos: one run per temporal group), in prompt order. With the token check on (default)
the runs must be exactly the image / video tokens of ``input_ids`` (each run all of its modality's
token, no such token outside a run, no two runs of a modality touching, which HF would read as one
group), so the result is HF's. Text positions are one ``cumsum`` over the run boundaries; each run is
filled from a cached ``(3, n)`` pattern plus its start position.

Engines: SGLang computes these positions with ``MRotaryEmbedding.get_rope_index`` in
``python/sglang/srt/layers/rotary_embedding.py`` (a scan for ``vision_start_token_id``), called from its
Qwen-VL multimodal processor (``python/sglang/srt/multimodal/processors/qwen_vl.py``) before the
request reaches the scheduler; vLLM computes them in the engine from the multimodal inputs
(``get_mrope_input_positions`` of its Qwen-VL model classes). transformers 4.x, and code ported from
it, starts the text after a vision block at that block's largest position + 1 (temporal axis
included), which differs from transformers 5.24 for videos whose (scaled) temporal extent exceeds
``max(h, w)``: compare with the engine's own version before feeding it these positions.

numpy only at run time (no ``ray``, no torch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np

MropeKind = Literal["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]

# config.json ``model_type`` -> the get_rope_index variant it runs (qwen3_vl_moe copies qwen3_vl's).
_KINDS: dict[str, MropeKind] = {
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_5_vl",
    "qwen3_vl": "qwen3_vl",
    "qwen3_vl_moe": "qwen3_vl",
}


@dataclass(frozen=True)
class MropeSpec:
    """What the position computation needs from the model's config.

    ``tokens_per_second`` is read by Qwen2.5-VL only (``vision_config.tokens_per_second``);
    ``vision_start_token_id`` is not needed by the item-driven computation but identifies the
    layout (engines that scan for it use it).
    """

    kind: MropeKind
    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    spatial_merge_size: int
    tokens_per_second: float | None = None

    @property
    def frames_per_video_run(self) -> bool:
        """True when each temporal group of a video is its own run of grid ``[1, h, w]`` (Qwen3-VL)."""
        return self.kind == "qwen3_vl"

    @property
    def scales_video_time(self) -> bool:
        """True when video temporal positions are spaced by ``tokens_per_second * second_per_grid_ts`` (Qwen2.5-VL)."""
        return self.kind == "qwen2_5_vl"


def _get(obj: Any, key: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def mrope_spec_for(adapter: Any) -> MropeSpec | None:
    """The :class:`MropeSpec` of a loaded ray-mm adapter, or None if its model has no M-RoPE of these kinds.

    The model's ``config.json`` decides (its ``model_type``), not the adapter's name: the positions
    belong to the language model, whichever adapter prepares the media (``qwen2_vl_frames`` and
    ``generic`` over a Qwen-VL directory included). Qwen2.5-Omni and GLM-4V have 3-D positions of
    their own kinds (audio interleaving, other layout): None here.
    """
    config = getattr(adapter, "config", None)
    if config is None:
        import json
        from pathlib import Path

        config = json.loads((Path(adapter.model_dir) / "config.json").read_text())
    kind = _KINDS.get(str(_get(config, "model_type")))
    if kind is None:
        return None
    vision = _get(config, "vision_config") or {}
    feature_ids = getattr(adapter, "feature_token_ids", {}) or {}
    image_id = _get(config, "image_token_id")
    video_id = _get(config, "video_token_id")
    tps = _get(vision, "tokens_per_second") if kind == "qwen2_5_vl" else None
    return MropeSpec(
        kind=kind,
        image_token_id=int(image_id if image_id is not None else feature_ids["image"]),
        video_token_id=int(video_id if video_id is not None else feature_ids["video"]),
        vision_start_token_id=int(_get(config, "vision_start_token_id")),
        spatial_merge_size=int(_get(vision, "spatial_merge_size")),
        tokens_per_second=None if tps is None else float(tps),
    )


@lru_cache(maxsize=1024)
def _pattern(t: int, h: int, w: int, interval: float | None) -> np.ndarray:
    """Positions of a ``(t, h, w)`` vision run relative to its start: ``(3, t*h*w)`` int64, read-only.

    ``interval`` None: temporal index as is; else ``long(float32(i) * float32(interval))``, the
    float32 product torch takes for ``arange(t) * time_interval`` with a float32 scalar tensor.
    """
    if interval is None:
        t_idx = np.arange(t, dtype=np.int64)
    else:
        t_idx = (np.arange(t, dtype=np.float32) * np.float32(interval)).astype(np.int64)
    out = np.empty((3, t, h, w), dtype=np.int64)
    out[0] = t_idx[:, None, None]
    out[1] = np.arange(h, dtype=np.int64)[None, :, None]
    out[2] = np.arange(w, dtype=np.int64)[None, None, :]
    out = out.reshape(3, t * h * w)
    out.flags.writeable = False
    return out


def _video_interval(spec: MropeSpec, item: Mapping[str, Any]) -> float:
    """Qwen2.5-VL's ``time_interval`` of a video: ``tokens_per_second * second_per_grid_ts`` in float32.

    An item without ``second_per_grid_ts`` gets HF's default when none is passed (1). The record's
    value is the exact float; HF gets the processor's float32 tensor, so it is rounded to float32
    first, and the product is float32 (a Python scalar times a float32 0-d tensor stays float32).
    """
    seconds = item.get("second_per_grid_ts", 1.0)
    if isinstance(seconds, (Sequence, np.ndarray)) and not isinstance(seconds, str):
        (seconds,) = np.asarray(seconds).reshape(-1).tolist()
    return float(np.float32(spec.tokens_per_second) * np.float32(seconds))


def _runs(items: Sequence[Mapping[str, Any]], spec: MropeSpec) -> list[tuple[int, int, int, int, int, float | None, int]]:
    """``(start, end, t, h, w, interval, token)`` per vision run (inclusive ends, merged grid), in prompt order."""
    m = spec.spatial_merge_size
    runs: list[tuple[int, int, int, int, int, float | None, int]] = []
    for n, item in enumerate(items):
        modality = item["modality"]
        if modality not in ("image", "video"):
            raise ValueError(f"item {n}: modality {modality!r} has no M-RoPE grid ({spec.kind} takes image and video)")
        grid = item.get("grid_thw")
        if grid is None or len(grid) != 3:
            raise ValueError(f"item {n} ({modality}): grid_thw must be [t, h, w], got {grid!r}")
        t, h, w = (int(x) for x in grid)
        if min(t, h, w) <= 0 or h % m or w % m:
            raise ValueError(f"item {n} ({modality}): grid_thw {[t, h, w]} is not a positive grid divisible by merge {m}")
        h, w = h // m, w // m
        offsets = item["offsets"]
        token = spec.image_token_id if modality == "image" else spec.video_token_id
        interval: float | None = None
        if modality == "video" and spec.scales_video_time:
            interval = _video_interval(spec, item)
        if modality == "video" and spec.frames_per_video_run:
            # HF repeats the video's grid t times with t = 1: one run per temporal group.
            if len(offsets) != t:
                raise ValueError(f"item {n} (video): {len(offsets)} runs for {t} temporal groups")
            per_run = (1, h, w)
        else:
            if len(offsets) != 1:
                raise ValueError(f"item {n} ({modality}): {len(offsets)} runs, {spec.kind} gives one per item")
            per_run = (t, h, w)
        size = per_run[0] * h * w
        for s, e in offsets:
            s, e = int(s), int(e)
            if e - s + 1 != size:
                raise ValueError(f"item {n} ({modality}): run [{s}, {e}] has {e - s + 1} tokens, grid gives {size}")
            runs.append((s, e, *per_run, interval, token))
    runs.sort(key=lambda r: r[0])
    return runs


def mrope_positions(input_ids: Sequence[int] | np.ndarray, items: Sequence[Mapping[str, Any]], spec: MropeSpec,
                    *, check_tokens: bool = True) -> tuple[np.ndarray, int]:
    """``(positions, mrope_position_delta)`` of one sequence: HF's ``get_rope_index`` with an all-ones mask.

    ``input_ids``: the expanded ids (``record["input_ids"]``). ``items``: ``record["items"]``, each with
    ``modality`` (``"image"`` / ``"video"``), ``grid_thw`` ``[t, h, w]`` (patches, before the spatial
    merge), ``offsets`` (inclusive ``[start, end]`` runs of its feature tokens in ``input_ids``: one run,
    or for a Qwen3-VL video one per temporal group), and for a Qwen2.5-VL video ``second_per_grid_ts``
    (a number). Returns int64 positions of shape ``(3, len(input_ids))`` and a Python int.

    ``check_tokens``: verify that the runs are exactly the image / video token runs HF would group
    (see the module docstring); without it only ``len(input_ids)`` is read. Raises ``ValueError`` on
    items that do not fit the ids or the spec.
    """
    n = len(input_ids)
    runs = _runs(items, spec)
    if not runs:
        # Text only: HF's single text group (what the model infers without get_rope_index, too).
        pos = np.empty((3, n), dtype=np.int64)
        pos[:] = np.arange(n, dtype=np.int64)
        return pos, 0
    starts = np.fromiter((r[0] for r in runs), dtype=np.int64, count=len(runs))
    ends = np.fromiter((r[1] for r in runs), dtype=np.int64, count=len(runs))
    if starts[0] < 0 or ends[-1] >= n or np.any(starts[1:] <= ends[:-1]):
        raise ValueError(f"item runs overlap or fall outside the {n} ids: {list(zip(starts.tolist(), ends.tolist()))}")
    if check_tokens:
        # fromiter: a record's ids are a list, and this is the cheapest way to an array (~11 µs per 1000 ids).
        ids = input_ids if isinstance(input_ids, np.ndarray) else np.fromiter(input_ids, dtype=np.int64, count=n)
        _check_tokens(ids, runs, spec)
    # Text token i sits at i + shift[i], shift summing (advance - length) over the runs before it.
    advance = np.fromiter((max(r[3], r[4]) for r in runs), dtype=np.int64, count=len(runs))
    steps = np.zeros(n + 1, dtype=np.int64)
    steps[ends + 1] = advance - (ends - starts + 1)
    shift = np.cumsum(steps[:n])
    pos = np.empty((3, n), dtype=np.int64)
    pos[:] = np.arange(n, dtype=np.int64) + shift
    for (s, e, t, h, w, interval, _), at in zip(runs, (starts + shift[starts]).tolist()):
        np.add(_pattern(t, h, w, interval), at, out=pos[:, s : e + 1])
    return pos, int(pos.max()) + 1 - n


def _check_tokens(ids: np.ndarray, runs: list[tuple[int, int, int, int, int, float | None, int]], spec: MropeSpec) -> None:
    """The runs are exactly HF's vision groups: each all its modality's token, none of those tokens
    elsewhere, and no two runs of one modality adjacent (HF's ``groupby`` would merge them)."""
    if ids.ndim != 1:
        raise ValueError(f"input_ids must be one sequence, got shape {ids.shape}")
    covered = {spec.image_token_id: 0, spec.video_token_id: 0}
    prev_end, prev_token = -2, -1
    for s, e, *_, token in runs:
        if not np.all(ids[s : e + 1] == token):
            raise ValueError(f"ids [{s}, {e}] are not all the {'image' if token == spec.image_token_id else 'video'} token {token}")
        if s == prev_end + 1 and token == prev_token:
            raise ValueError(f"runs ending at {prev_end} and starting at {s} touch: HF groups them as one")
        covered[token] += e - s + 1
        prev_end, prev_token = e, token
    for token, count in covered.items():
        total = int(np.count_nonzero(ids == token))
        if total != count:
            raise ValueError(f"{total} ids are token {token}, the items' runs cover {count}")
