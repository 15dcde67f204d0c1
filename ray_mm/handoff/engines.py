"""Engine hand-off: a finished record and its features in the exact form SGLang or vLLM takes.

- :func:`to_sglang`: keyword arguments of SGLang's ``Engine.generate``: ``input_ids`` (expanded) and,
  per modality, ONE dict with all that modality's items concatenated
  (``python/sglang/srt/multimodal/processors/base_processor.py``, ``process_and_combine_mm_data`` and
  ``collect_mm_items_from_processor_output``): ``{"format": "processor_output", <processor outputs by
  name>, "offsets", "hash", "pad_value"}``, or with embeddings ``{"format": "precomputed_embedding",
  "feature": <embeddings>, <the other processor outputs, e.g. the grid>}`` (the pixel arrays, SGLang's
  ``FEATURE_NAMES``, are left out: the embeddings replace them). SGLang honours ``hash`` and
  ``pad_value`` when a dict holds one item; each dict also carries a ``ray_mm`` hint (per item hashes,
  runs, spans and rows) that SGLang skips and ray-mm reads back (:mod:`ray_mm.request.bundle`), so a
  hand-off fed to ray-mm as a ``precomputed`` request gives the same record and features.
- :func:`to_vllm`: vLLM's prompt dict (``vllm/inputs/data.py`` ``TokensPrompt``): ``prompt_token_ids``
  with ONE placeholder token per item (vLLM expands them itself; each item's ``span`` in the record is
  collapsed), ``multi_modal_data`` with embeddings (``image_embeds`` + ``image_grid_thw`` for the
  grid families, as ``vllm/model_executor/models/qwen2_vl.py`` ``Qwen2VLImageEmbeddingInputs`` and
  its video twin take them; a list of one ``(tokens, hidden)`` array per item otherwise) and
  ``multi_modal_uuids`` set to ray-mm's content hashes, so vLLM does not hash again (the engine needs
  ``enable_mm_embeds``).

Both put what is ray-mm's own under a top-level ``ray_mm`` key (request id, M-RoPE positions):
:func:`engine_kwargs` drops it before the engine call. Arrays may be numpy arrays or torch tensors
(a GPU worker hands over device tensors); torch is imported only when given. :func:`describe`
replaces arrays by their shape and dtype (the serve front door's ``?format=`` answer);
:func:`encode_arrays` turns them into ``{"npy": base64}`` for JSON.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..types import MODALITIES

# SGLang's names for the pixel/audio arrays an embedding replaces (base_processor.py, FEATURE_NAMES).
SGLANG_FEATURE_NAMES = frozenset({"pixel_values", "pixel_values_videos", "audio_features", "input_features"})
SGLANG_DATA_KEYS = {"image": "image_data", "video": "video_data", "audio": "audio_data"}
GRID_KEYS = {"image": "image_grid_thw", "video": "video_grid_thw"}


class PendingEmbeddings(dict):  # type: ignore[type-arg]
    """Stands in for embeddings not computed yet (``rows`` of them): the payload's shape, for ``describe``."""


def to_sglang(record: Mapping[str, Any], features: Sequence[Mapping[str, Any]], *,
              embeddings: Sequence[Any] | None = None, mrope: tuple[Any, int] | None = None) -> dict[str, Any]:
    """``Engine.generate`` keyword arguments (plus ``ray_mm``) for one successful record.

    ``features``: each item's processor outputs in record order (finished: what the model consumes);
    ``embeddings``: each item's ``(num_tokens, hidden)`` encoder output, for the precomputed_embedding form.
    """
    items = _checked_items(record, features, embeddings)
    out: dict[str, Any] = {"input_ids": list(record["input_ids"])}
    for modality, group in _by_modality(items).items():
        feats = [features[k] for k in group]
        rec = [record["items"][k] for k in group]
        if embeddings is None:
            names = _names(feats)
            body: dict[str, Any] = {"format": "processor_output"}
        else:
            names = [n for n in _names(feats) if n not in SGLANG_FEATURE_NAMES]
            body = {"format": "precomputed_embedding", "feature": _cat([embeddings[k] for k in group])[0]}
        rows: dict[str, Any] = {}
        for name in names:
            body[name], rows[name] = _cat([f[name] for f in feats])
        body["offsets"] = [list(o) for item in rec for o in item["offsets"]]
        if len(rec) == 1:  # SGLang takes a dict's hash and pad_value only when it holds one item
            body["hash"], body["pad_value"] = int(rec[0]["hash"], 16), int(rec[0]["pad_value"])
        body["ray_mm"] = {"hashes": [item["hash"] for item in rec], "runs": [len(item["offsets"]) for item in rec],
                          "spans": [item["span"] for item in rec], "rows": rows}
        out[SGLANG_DATA_KEYS[modality]] = [body]
    out["ray_mm"] = _ray_mm_extras(record, mrope)
    return out


def to_vllm(record: Mapping[str, Any], placeholder_ids: Mapping[str, int], *, embeddings: Sequence[Any] | None = None,
            mrope: tuple[Any, int] | None = None) -> dict[str, Any]:
    """vLLM's ``TokensPrompt`` (plus ``ray_mm``) for one successful record.

    ``placeholder_ids``: the compact placeholder token per modality (``ModelAdapter.placeholder_token_ids``);
    ``embeddings``: each item's ``(num_tokens, hidden)`` encoder output (None: described as pending).
    """
    items = _checked_items(record, None, embeddings)
    data: dict[str, Any] = {}
    uuids: dict[str, list[str]] = {}
    for modality, group in _by_modality(items).items():
        rec = [record["items"][k] for k in group]
        embeds = [embeddings[k] if embeddings is not None else PendingEmbeddings(rows=item["num_tokens"])
                  for k, item in zip(group, rec)]
        uuids[modality] = [item["hash"] for item in rec]
        if modality in GRID_KEYS and all(item.get("grid_thw") for item in rec):
            total = PendingEmbeddings(rows=sum(i["num_tokens"] for i in rec))
            entry: dict[str, Any] = {
                f"{modality}_embeds": _cat(embeds)[0] if embeddings is not None else total,
                GRID_KEYS[modality]: np.asarray([item["grid_thw"] for item in rec], dtype=np.int64),
            }
            if modality == "video" and all("second_per_grid_ts" in item for item in rec):
                entry["second_per_grid_ts"] = np.asarray([_scalar(item["second_per_grid_ts"]) for item in rec], dtype=np.float32)
            data[modality] = entry
        else:
            data[modality] = embeds
    return {
        "prompt_token_ids": compact_ids(record, placeholder_ids),
        "multi_modal_data": data,
        "multi_modal_uuids": uuids,
        "ray_mm": _ray_mm_extras(record, mrope),
    }


def compact_ids(record: Mapping[str, Any], placeholder_ids: Mapping[str, int]) -> list[int]:
    """The record's ids with each item's span (its whole expansion) collapsed into its placeholder token."""
    ids = record["input_ids"]
    out: list[int] = []
    pos = 0
    for item in sorted(record["items"], key=lambda i: i["span"][0]):
        start, end = item["span"]
        out.extend(ids[pos:start])
        out.append(int(placeholder_ids[item["modality"]]))
        pos = end + 1
    out.extend(ids[pos:])
    return out


def engine_kwargs(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The payload without ray-mm's own top-level key: what the engine call takes."""
    return {k: v for k, v in payload.items() if k != "ray_mm"}


def describe(payload: Any) -> Any:
    """The payload with every array replaced by ``{"shape", "dtype"}`` (JSON-able)."""
    if isinstance(payload, PendingEmbeddings):
        return {"shape": [payload["rows"], None], "dtype": None, "pending": "embeddings (the encoder's output)"}
    if _is_array(payload):
        return {"shape": [int(x) for x in payload.shape], "dtype": str(payload.dtype).removeprefix("torch.")}
    if isinstance(payload, Mapping):
        return {k: describe(v) for k, v in payload.items()}
    if isinstance(payload, (list, tuple)):
        return [describe(v) for v in payload]
    return payload


def encode_arrays(payload: Any) -> Any:
    """The payload with every array as ``{"npy": base64 of numpy.save}`` (what ray-mm's precomputed input reads)."""
    if _is_array(payload):
        buf = io.BytesIO()
        np.save(buf, _numpy(payload), allow_pickle=False)
        return {"npy": base64.b64encode(buf.getvalue()).decode()}
    if isinstance(payload, Mapping):
        return {k: encode_arrays(v) for k, v in payload.items()}
    if isinstance(payload, (list, tuple)):
        return [encode_arrays(v) for v in payload]
    return payload


def as_precomputed_request(payload: Mapping[str, Any], request_id: str) -> dict[str, Any]:
    """A :func:`to_sglang` payload as a ray-mm request line (``skip_tokenizer_init``, one dict per modality)."""
    line: dict[str, Any] = {"request_id": request_id, "input_ids": list(payload["input_ids"]), "skip_tokenizer_init": True}
    for modality in MODALITIES:
        if payload.get(SGLANG_DATA_KEYS[modality]):
            line[f"{modality}s"] = list(payload[SGLANG_DATA_KEYS[modality]])
    return line


# --------------------------------------------------------------------------- helpers


def _checked_items(record: Mapping[str, Any], features: Sequence[Any] | None, embeddings: Sequence[Any] | None) -> list[Mapping[str, Any]]:
    if not record.get("ok"):
        raise ValueError(f"request {record.get('request_id')}: a failed record has nothing to hand off")
    items = list(record["items"])
    for name, per_item in (("features", features), ("embeddings", embeddings)):
        if per_item is not None and len(per_item) != len(items):
            raise ValueError(f"request {record['request_id']}: {len(per_item)} {name} for {len(items)} items")
    if embeddings is not None:
        for item, emb in zip(items, embeddings):
            if int(emb.shape[0]) != int(item["num_tokens"]):
                raise ValueError(f"{item['modality']} {item['index']} of request {record['request_id']}: "
                                 f"{emb.shape[0]} embedding rows for {item['num_tokens']} tokens")
    return items


def _by_modality(items: Sequence[Mapping[str, Any]]) -> dict[str, list[int]]:
    """Item positions per modality, in record (prompt) order within each."""
    out: dict[str, list[int]] = {}
    for k, item in enumerate(items):
        out.setdefault(item["modality"], []).append(k)
    return {m: out[m] for m in MODALITIES if m in out}


def _names(features: Sequence[Mapping[str, Any]]) -> list[str]:
    names = [n for n, v in features[0].items() if _is_array(v)]
    for f in features[1:]:
        if [n for n, v in f.items() if _is_array(v)] != names:
            raise ValueError("items of one modality carry different processor outputs; they cannot share one dict")
    return names


def _cat(parts: Sequence[Any]) -> tuple[Any, Any]:
    """``(concatenation along the first axis, rows per part)``; ``(list of parts, "list")`` when their
    shapes past the first axis or dtypes differ (ragged items, e.g. MiniCPM-V's slices of different sizes)."""
    if len(parts) == 1:
        return parts[0], [int(parts[0].shape[0])] if parts[0].ndim else "list"
    first = parts[0]
    if all(p.ndim and p.shape[1:] == first.shape[1:] and p.dtype == first.dtype for p in parts):
        if isinstance(first, np.ndarray):
            return np.concatenate(parts), [int(p.shape[0]) for p in parts]
        import torch

        return torch.cat(list(parts)), [int(p.shape[0]) for p in parts]
    return list(parts), "list"


def _ray_mm_extras(record: Mapping[str, Any], mrope: tuple[Any, int] | None) -> dict[str, Any]:
    extras: dict[str, Any] = {"request_id": record["request_id"]}
    if mrope is not None:
        extras["mrope_positions"], extras["mrope_position_delta"] = mrope[0], int(mrope[1])
    return extras


def _scalar(value: Any) -> float:
    return float(np.asarray(value, dtype=np.float64).reshape(-1)[0])


def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) or type(value).__module__.startswith("torch") and hasattr(value, "shape")


def _numpy(value: Any) -> np.ndarray:
    return value if isinstance(value, np.ndarray) else value.detach().cpu().numpy()
