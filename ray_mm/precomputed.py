"""Precomputed features given in a request instead of media to decode.

``{"format": "processor_output", <processor output names>: array, ...}``: the
item's processor outputs (e.g. ``pixel_values`` + ``image_grid_thw``); the token
count comes from them the way the processor would count it.
``{"format": "precomputed_embedding", "embedding": array}``: the vision/audio
embeddings themselves, one row per placeholder token; the GPU worker passes them
through instead of running the encoder.

Arrays may be nested lists, numpy arrays (in process), or ``{"npy": base64}``
(the bytes of ``numpy.save``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
from typing import Any

import numpy as np

from .errors import RequestError
from .media import canonical_options, content_hash
from .types import ItemFeatures, MediaSpec

PRIMARY = {"image": "pixel_values", "video": "pixel_values_videos", "audio": "input_features"}
GRID = {"image": "image_grid_thw", "video": "video_grid_thw"}


def _array(value: Any, name: str, label: str) -> np.ndarray:
    try:
        if isinstance(value, np.ndarray):
            return value
        if isinstance(value, dict) and isinstance(value.get("npy"), str):
            return np.load(io.BytesIO(base64.b64decode(value["npy"], validate=True)), allow_pickle=False)
        arr = np.asarray(value)
    except (ValueError, TypeError, OSError, binascii.Error) as exc:
        raise RequestError(f"{label}: precomputed '{name}' is not a valid array ({type(exc).__name__})") from None
    if arr.dtype == object or arr.size == 0:
        raise RequestError(f"{label}: precomputed '{name}' must be a non-empty numeric array")
    return arr.astype(np.float32) if arr.dtype == np.float64 else arr


def precomputed_features(spec: MediaSpec, merge_size: int | None) -> tuple[ItemFeatures, str]:
    """Validate a precomputed entry; returns the item's features and its content hash."""
    payload, label, modality = spec.source, spec.label, spec.modality
    fmt = payload.get("format")
    arrays = {k: _array(v, k, label) for k, v in payload.items() if k != "format"}
    if fmt == "precomputed_embedding":
        if set(arrays) - {"embedding", GRID.get(modality, "")}:
            raise RequestError(f"{label}: a precomputed_embedding takes 'embedding' (and optionally a grid) only")
        emb = arrays.get("embedding")
        if emb is None or emb.ndim != 2:
            raise RequestError(f"{label}: 'embedding' must be a 2-D array (tokens, hidden)")
        item = ItemFeatures(modality, {"embedding": emb}, "embedding", int(emb.shape[0]), _grid(arrays, modality))
    else:
        primary = PRIMARY[modality]
        if primary not in arrays:
            raise RequestError(f"{label}: processor_output for {modality} needs '{primary}'")
        item = ItemFeatures(modality, arrays, primary, _count_tokens(modality, arrays, merge_size, label), _grid(arrays, modality))
    digest = hashlib.sha256()
    for key in sorted(arrays):
        arr = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}:{arr.dtype.str}:{arr.shape}".encode())
        digest.update(memoryview(arr).cast("B"))
    return item, content_hash(digest.digest() + canonical_options({"format": fmt}), spec.options)


def _grid(arrays: dict[str, np.ndarray], modality: str) -> list[int] | None:
    grid = arrays.get(GRID.get(modality, ""))
    return [int(x) for x in np.asarray(grid).reshape(-1)[:3]] if grid is not None else None


def _count_tokens(modality: str, arrays: dict[str, np.ndarray], merge_size: int | None, label: str) -> int:
    if modality in GRID:
        grid = arrays.get(GRID[modality])
        if grid is None or np.asarray(grid).size != 3 or merge_size is None:
            raise RequestError(f"{label}: processor_output for {modality} needs one '{GRID[modality]}' [t, h, w]")
        g = [int(x) for x in np.asarray(grid).reshape(-1)]
        patches = arrays[PRIMARY[modality]].shape[0]
        if math.prod(g) != patches or min(g) <= 0:
            raise RequestError(f"{label}: grid {g} does not match {patches} patches")
        return math.prod(g) // merge_size**2
    mask = arrays.get("feature_attention_mask")
    if mask is None:
        raise RequestError(f"{label}: processor_output for audio needs 'feature_attention_mask'")
    valid = int(np.asarray(mask).sum())
    return (((valid - 1) // 2 + 1) - 2) // 2 + 1
