"""The shared conformance check: ray-mm against the model's Hugging Face processor, called once on
the whole request. Every adapter's tests call it (one oracle, one set of checks).

``check_request`` runs one request through ray-mm's in-process pipeline (items processed one by
one, then aligned) and through ``AutoProcessor`` with the full prompt and every media item, and
checks: ``input_ids`` exactly equal; each item's ``offsets`` cover exactly its embedding positions
in HF's ids (the next ``num_tokens`` positions of its feature token, in prompt order); every
output array equal (floats within 1e-5), item arrays concatenated in prompt order as the
processor packs them. It then feeds HF's own ids back with ``skip_tokenizer_init`` (legacy path,
ids unchanged, same offsets), and a mix where the first item is left compact.

Media: ray-mm reads files under ``media_dir``; the oracle gets the same images opened with
Pillow, and the same video frames ray-mm decoded (decoding is ray-mm's own; the processor is
compared), with ``do_sample_frames=False`` and the sampling metadata.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from transformers import AutoProcessor

from ray_mm.align import expansion_of
from ray_mm.config import MediaPolicy, RayMMConfig
from ray_mm.media import MediaLoader
from ray_mm.pipeline import Preprocessor, video_metadata
from ray_mm.types import MediaSpec

# Outputs of the processor that are not media features.
TEXT_KEYS = frozenset({"input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids", "video_metadata"})


@dataclass
class Family:
    """How the oracle is called for one family, and how its item arrays pack into the processor's."""

    name: str
    image: str  # compact placeholder text of one image in a prompt
    video: str | None = None
    concat_axis: Mapping[str, int] = field(default_factory=dict)  # output name -> axis items are packed along (default 0)
    call_kwargs: Mapping[str, Any] = field(default_factory=dict)  # extra kwargs of every oracle call
    skip_outputs: frozenset[str] = frozenset()  # outputs not compared (say why where used)
    # Outputs the processor zero-pads at the end of each axis to the request's largest item (Pixtral's
    # pixel_values, LLaVA-NeXT's tile count): a batching artefact. ray-mm keeps each item's own unpadded
    # array (what the processor gives per image with do_pad=False); compared after padding them the same way.
    padded_outputs: frozenset[str] = frozenset()


@dataclass
class Checked:
    record: dict[str, Any]
    hf_ids: list[int]
    pre: Preprocessor
    line: dict[str, Any]  # the request as ray-mm ran it (media paths absolute)


def config_for(media_dir: Path) -> RayMMConfig:
    return RayMMConfig(media=MediaPolicy(allowed_local_media_path=str(media_dir)))


def _hf_image(path: Path) -> Image.Image:
    # The oracle decodes with Pillow on its own; the processor does the RGB conversion.
    return Image.open(io.BytesIO(path.read_bytes()))


def _entry_path(entry: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(entry, dict):
        return entry["url"], {k: v for k, v in entry.items() if k != "url"}
    return entry, {}


# Chat content parts that carry a media entry (a URL string or ``{"url": ..., options}``), and the list they stand for.
_PART_LISTS = {"image_url": "images", "video_url": "videos", "audio_url": "audios"}


def media_entries(line: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The request's ``images`` / ``videos`` / ``audios`` entries; for a chat request, the media parts
    of its ``messages``, in order (as ray-mm reads them)."""
    if "messages" not in line:
        return {key: list(line.get(key) or []) for key in _PART_LISTS.values()}
    out: dict[str, list[Any]] = {key: [] for key in _PART_LISTS.values()}
    for message in line["messages"]:
        content = message.get("content")
        for part in content if isinstance(content, list) else []:
            if part.get("type") in _PART_LISTS:
                out[_PART_LISTS[part["type"]]].append(part[part["type"]])
    return out


def oracle(model_dir: Path, family: Family, text: str, line: Mapping[str, Any], media_dir: Path) -> dict[str, Any]:
    """The HF processor on the whole request: ``text`` with every image and video of ``line``."""
    processor = AutoProcessor.from_pretrained(str(model_dir), local_files_only=True)
    kwargs: dict[str, Any] = {"text": [text], "return_tensors": "np", **family.call_kwargs}
    entries = media_entries(line)
    images = [_hf_image(media_dir / _entry_path(e)[0]) for e in entries["images"]]
    if images:
        kwargs["images"] = images
    videos = []
    metas = []
    loader = MediaLoader(config_for(media_dir))
    for k, entry in enumerate(entries["videos"]):
        url, options = _entry_path(entry)
        decoded = loader.load(MediaSpec("video", k, str(media_dir / url), options, "oracle"))
        videos.append(decoded.data.frames)
        metas.append(video_metadata(decoded.data))
    if videos:
        kwargs.update(videos=videos, do_sample_frames=False, video_metadata=metas)
    audios = [loader.load(MediaSpec("audio", k, str(media_dir / _entry_path(e)[0]), {}, "oracle")).data
              for k, e in enumerate(entries["audios"])]
    if audios:
        kwargs.update(audio=audios, sampling_rate=loader.config.audio.sample_rate)
    out = processor(**kwargs)
    return {k: np.asarray(v) for k, v in out.items()}


def _absolute(line: Mapping[str, Any], media_dir: Path) -> dict[str, Any]:
    def entry(e: Any) -> Any:
        return dict(e, url=str(media_dir / e["url"])) if isinstance(e, dict) else str(media_dir / e)

    out = dict(line)
    for key in ("images", "videos"):
        if key in line:
            out[key] = [entry(e) for e in line[key]]
    if isinstance(line.get("messages"), list):
        out["messages"] = [
            dict(m, content=[dict(p, **{p["type"]: entry(p[p["type"]])}) if p.get("type") in ("image_url", "video_url") else p
                             for p in m["content"]]) if isinstance(m.get("content"), list) else m
            for m in line["messages"]
        ]
    return out


def check_request(model_dir: Path, family: Family, line: Mapping[str, Any], media_dir: Path,
                  hf_text: str | None = None) -> Checked:
    """Run ``line`` (media named relative to ``media_dir``) through ray-mm and the oracle; assert parity.
    ``hf_text``: the prompt the oracle sees (default ``line["prompt"]``; chat requests pass the
    processor's own rendering of the messages)."""
    pre = Preprocessor(model_dir, config_for(media_dir))
    absolute = _absolute(line, media_dir)
    outcome = pre.run(absolute)
    assert outcome.ok, outcome.record
    rec = outcome.record
    ref = oracle(model_dir, family, hf_text if hf_text is not None else line["prompt"], line, media_dir)
    hf_ids = ref["input_ids"][0].tolist()
    assert rec["input_ids"] == hf_ids, _first_diff(rec["input_ids"], hf_ids)
    check_offsets(pre, rec, hf_ids)
    check_features(family, rec, outcome.item_features, ref)
    return Checked(rec, hf_ids, pre, absolute)


def check_offsets(pre: Preprocessor, rec: Mapping[str, Any], ids: Sequence[int]) -> None:
    """Each item's offsets cover exactly the next ``num_tokens`` positions of its feature token."""
    arr = np.asarray(ids)
    feature_ids = pre.adapter.feature_token_ids
    # Keyed by token: modalities may share one feature token (GLM-4V's video frames are image tokens).
    positions = {tok: np.flatnonzero(arr == tok).tolist() for tok in feature_ids.values()}
    taken = dict.fromkeys(positions, 0)
    for item in rec["items"]:
        m, tok = item["modality"], feature_ids[item["modality"]]
        covered = [p for s, e in item["offsets"] for p in range(s, e + 1)]
        assert len(covered) == item["num_tokens"], item
        expected = positions[tok][taken[tok] : taken[tok] + item["num_tokens"]]
        assert covered == expected, f"{m} {item['index']}: offsets {item['offsets'][:3]}... not its feature positions"
        taken[tok] += item["num_tokens"]
    assert all(taken[t] == len(positions[t]) for t in positions), "feature tokens in the ids that no item covers"


def check_features(family: Family, rec: Mapping[str, Any], item_features: Sequence[Mapping[str, Any]],
                   ref: Mapping[str, np.ndarray]) -> None:
    """Every processor output equals ray-mm's item arrays packed in prompt order."""
    names = [k for k in ref if k not in TEXT_KEYS and k not in family.skip_outputs]
    assert names or family.skip_outputs, "the oracle returned no media outputs"
    for name in names:
        parts = [np.asarray(f[name]) for f in item_features if name in f]
        assert parts, f"no item carries the processor output {name!r}"
        if name in family.padded_outputs:
            parts = _pad_to(parts, ref[name].shape, family.concat_axis.get(name, 0))
        ours = np.concatenate(parts, axis=family.concat_axis.get(name, 0))
        theirs = ref[name]
        assert ours.shape == theirs.shape, f"{name}: shape {ours.shape} != processor's {theirs.shape}"
        if np.issubdtype(theirs.dtype, np.floating):
            np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0, err_msg=name)
        else:
            np.testing.assert_array_equal(ours, theirs, err_msg=name)


def check_legacy_roundtrip(checked: Checked) -> None:
    """HF's own expanded ids with ``skip_tokenizer_init``: legacy path, ids unchanged, same offsets;
    then the same with the first item left compact (one placeholder token)."""
    base = {k: v for k, v in checked.line.items() if k not in ("prompt", "messages")}
    base.update({k: v for k, v in media_entries(checked.line).items() if v})  # a chat request's media, as lists
    full = checked.pre.run({**base, "request_id": "legacy", "input_ids": checked.hf_ids, "skip_tokenizer_init": True}).record
    assert full["ok"], full
    assert full["path"] == "legacy" and full["input_ids"] == checked.hf_ids
    assert [i["offsets"] for i in full["items"]] == [i["offsets"] for i in checked.record["items"]]
    mixed_ids = compact_first_item(checked)
    mixed = checked.pre.run({**base, "request_id": "mixed", "input_ids": mixed_ids, "skip_tokenizer_init": True}).record
    assert mixed["ok"], mixed
    assert mixed["path"] == "legacy" and mixed["input_ids"] == checked.hf_ids
    assert [i["offsets"] for i in mixed["items"]] == [i["offsets"] for i in checked.record["items"]]


def item_spans(checked: Checked) -> list[tuple[int, int, str]]:
    """``(start, length, modality)`` of each item's whole expansion in HF's ids, in prompt order."""
    pre = checked.pre
    prepared = pre.prepare(checked.line)
    alignment = pre.align_request(prepared, [[p.meta for p in pre.process_item(spec)] for spec in prepared.request.items()])
    spans = []
    for item in alignment.items:
        exp = expansion_of(item.meta, pre.adapter.feature_token_ids[item.meta.modality])
        spans.append((item.offsets[0][0] - len(exp.texts[0]), exp.length, item.meta.modality))
    return spans


def compact_first_item(checked: Checked) -> list[int]:
    """HF's ids with the first item's whole expansion replaced by its compact placeholder token."""
    start, length, modality = item_spans(checked)[0]
    token = checked.pre.adapter.placeholder_token_ids[modality]
    return checked.hf_ids[:start] + [token] + checked.hf_ids[start + length :]


def corrupt_first_item(checked: Checked, how: str) -> list[int]:
    """HF's ids with the first item's expansion damaged: ``short_run`` drops one feature token,
    ``text`` changes the first text token after its first run (a slice marker, a timestamp, an end token)."""
    ids = list(checked.hf_ids)
    (s, e) = checked.record["items"][0]["offsets"][0]
    if how == "short_run":
        del ids[s]
    else:
        ids[e + 1] = ids[e + 1] + 1 if ids[e + 1] + 1 < len(checked.pre.adapter.tokenizer) else ids[e + 1] - 1
    return ids


def _pad_to(parts: list[np.ndarray], shape: Sequence[int], axis: int) -> list[np.ndarray]:
    """Each item's array zero-padded at the end of every axis but ``axis`` to ``shape`` (as is, if it cannot be)."""
    axis %= len(shape)
    widths = [[(0, 0 if k == axis else shape[k] - p.shape[k]) for k in range(p.ndim)] for p in parts]
    if any(p.ndim != len(shape) or min(w for _, w in ws) < 0 for p, ws in zip(parts, widths)):
        return parts  # the shape assertion reports it
    return [np.pad(p, ws) for p, ws in zip(parts, widths)]


def _first_diff(a: Sequence[int], b: Sequence[int]) -> str:
    k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    near = slice(max(0, k - 3), k + 4)
    return f"ids differ at {k}: ray-mm {list(a[near])} vs processor {list(b[near])} (lengths {len(a)}, {len(b)})"
