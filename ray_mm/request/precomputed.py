"""Precomputed features given in a request instead of media to decode.

``{"format": "processor_output", <processor output names>: array, ...}``: the
item's processor outputs (e.g. ``pixel_values`` + ``image_grid_thw``); the token
count comes from them the way the processor would count it.
``{"format": "precomputed_embedding", "feature": array, <other processor outputs>}``
(SGLang's form; ``embedding`` is accepted for ``feature``): the vision/audio embeddings
themselves, one row per placeholder token, with the item's other processor outputs
(its grid, ``second_per_grid_ts``, ...) kept beside them; the GPU worker passes them
through instead of running the encoder. An item carries them as ``embedding``.

One dict holding several items, with ``offsets`` / ``hash`` / ``pad_value`` (SGLang's
per-modality form), is split into items first: :mod:`ray_mm.request.bundle`.

Arrays may be nested lists, numpy arrays (in process), or ``{"npy": base64}``
(the bytes of ``numpy.save``). :func:`payload_nbytes` sizes a payload without
converting it, for the admission cap ``media.max_precomputed_bytes``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
from typing import Any

import numpy as np

from ..errors import MMError, RequestError
from ..media import canonical_options, content_hash
from ..types import ItemFeatures, MediaSpec

PRIMARY = {"image": "pixel_values", "video": "pixel_values_videos", "audio": "input_features"}
GRID = {"image": "image_grid_thw", "video": "video_grid_thw"}


# Nesting deeper than numpy's own limit (64 dimensions) cannot become an array anyway.
_MAX_DEPTH = 64


def payload_nbytes(payload: dict[str, Any]) -> int:
    """The bytes a precomputed payload's arrays take once converted, estimated without converting them.

    numpy arrays count their ``nbytes``; ``{"npy": base64}`` the bytes it decodes to (a
    ``.npy`` whose header declares more data than it carries is refused when loaded);
    nested lists ``8`` bytes (float64, what ``np.asarray`` builds first) per element, with
    the shape read along the first element of each level. That reading is exact for every
    list numpy can convert: a ragged list fails conversion with a 400 anyway. Costs
    O(depth), so a huge payload is refused before any copy of it is made.
    """
    return sum(_value_nbytes(v) for k, v in payload.items() if k != "format")


def _value_nbytes(value: Any, depth: int = 0) -> int:
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, dict):
        npy = value.get("npy")
        return len(npy) * 3 // 4 if isinstance(npy, str) else 0
    if isinstance(value, (list, tuple)):
        if not value or depth >= _MAX_DEPTH:
            return 0
        return len(value) * _value_nbytes(value[0], depth + 1)
    if isinstance(value, (str, bytes)):
        return 4 * len(value)  # np.asarray makes a unicode scalar of 4 bytes a character
    return int(getattr(value, "nbytes", 8))  # a number (8), or an array-like that knows its size


def _load_npy(raw: bytes, name: str, label: str) -> np.ndarray:
    """``np.load`` of ``.npy`` bytes, once the header is checked against the data it carries.

    ``np.load`` allocates the array the header declares before reading it, so a few bytes
    declaring a huge shape would allocate that much first.
    """
    fp = io.BytesIO(raw)
    version = np.lib.format.read_magic(fp)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f".npy version {version} is not supported")
    shape, _, dtype = readers[version](fp)
    declared = math.prod(shape) * dtype.itemsize
    if declared > len(raw) - fp.tell():
        raise RequestError(f"{label}: precomputed '{name}' declares {declared} bytes of data but carries {len(raw) - fp.tell()}")
    return np.load(io.BytesIO(raw), allow_pickle=False)


def as_array(value: Any, name: str, label: str) -> np.ndarray:
    """``value`` (nested lists, a numpy array, or ``{"npy": base64}``) as a numeric array; 400 if it is not one."""
    try:
        if isinstance(value, np.ndarray):
            return value
        if isinstance(value, dict) and isinstance(value.get("npy"), str):
            return _load_npy(base64.b64decode(value["npy"], validate=True), name, label)
        arr = np.asarray(value)
    except MMError:
        raise
    except (ValueError, TypeError, OSError, binascii.Error) as exc:
        raise RequestError(f"{label}: precomputed '{name}' is not a valid array ({type(exc).__name__})") from None
    if arr.dtype == object or arr.size == 0:
        raise RequestError(f"{label}: precomputed '{name}' must be a non-empty numeric array")
    return arr.astype(np.float32) if arr.dtype == np.float64 else arr


# Keys of an engine's dict that describe items rather than hold arrays (SGLang's metadata, ray-mm's hints).
METADATA_KEYS = frozenset({"format", "modality", "offsets", "hash", "pad_value", "input_ids", "ray_mm"})


def precomputed_features(spec: MediaSpec, merge_size: int | None) -> tuple[ItemFeatures, str]:
    """Validate a precomputed entry; returns the item's features and its content hash.

    For an item split out of an engine's dict (``spec.given``), the token count is its offsets'
    (checked against what its arrays imply, where they imply one), its expansion the ids at its
    offsets, and its hash the one the dict gave, if any."""
    payload, label, modality, given = spec.source, spec.label, spec.modality, spec.given or {}
    fmt = payload.get("format")
    arrays = {k: as_array(v, k, label) for k, v in payload.items() if k not in METADATA_KEYS}
    if "feature" in arrays:  # SGLang's name for the embeddings
        if "embedding" in arrays or fmt != "precomputed_embedding":
            raise RequestError(f"{label}: 'feature' is the embeddings of a precomputed_embedding (give it once)")
        arrays["embedding"] = arrays.pop("feature")
    if fmt == "precomputed_embedding":
        emb = arrays.get("embedding")
        if emb is None or emb.ndim != 2:
            raise RequestError(f"{label}: a precomputed_embedding needs 'feature' (or 'embedding'), a 2-D array (tokens, hidden)")
        primary, counted = "embedding", int(emb.shape[0])
    else:
        primary = PRIMARY[modality]
        if primary not in arrays:
            raise RequestError(f"{label}: processor_output for {modality} needs '{primary}'")
        counted = None if "num_tokens" in given else _count_tokens(modality, arrays, merge_size, label)
        if "num_tokens" in given and _countable(modality, arrays, merge_size):
            counted = _count_tokens(modality, arrays, merge_size, label)
    num_tokens = int(given.get("num_tokens", counted))
    if counted is not None and counted != num_tokens:
        raise RequestError(f"{label}: its offsets cover {num_tokens} tokens but its arrays make {counted}")
    item = ItemFeatures(modality, arrays, primary, num_tokens, _grid(arrays, modality), given.get("expansion"))
    if given.get("hash"):
        return item, str(given["hash"])
    digest = hashlib.sha256()
    for key in sorted(arrays):
        arr = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}:{arr.dtype.str}:{arr.shape}".encode())
        digest.update(memoryview(arr).cast("B"))
    return item, content_hash(digest.digest() + canonical_options({"format": fmt}), spec.options)


def _grid(arrays: dict[str, np.ndarray], modality: str) -> list[int] | None:
    grid = arrays.get(GRID.get(modality, ""))
    return [int(x) for x in np.asarray(grid).reshape(-1)[:3]] if grid is not None else None


def _countable(modality: str, arrays: dict[str, np.ndarray], merge_size: int | None) -> bool:
    """Whether the arrays alone tell the item's token count (a grid family's grid)."""
    # Audio counts are family-specific (the mask formula below is Qwen2-Audio's): an item with offsets
    # keeps its offsets' count.
    return modality in GRID and GRID[modality] in arrays and merge_size is not None


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
