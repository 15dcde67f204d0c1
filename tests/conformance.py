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

The steps every family's tests repeat live here too, so that a family's test file holds only its own
data and its own checks:

- setup: ``family_fixtures`` (the ``model`` and ``media`` fixtures), ``write_media`` / ``USUAL_MEDIA``
  (the synthetic files), ``QWEN_IMAGE`` / ``QWEN_VIDEO``;
- requests: ``check_several_images``, ``chat`` / ``check_chat`` (chat messages, and the processor's own
  rendering as the oracle's prompt), ``check_unpadded_items`` (``padded_outputs`` families);
- the checked request again: ``rerun`` (other fields), ``run_ids`` (ids with ``skip_tokenizer_init``),
  ``check_legacy_ids`` (ids the legacy scan must expand to HF's);
- refusals: ``assert_alignment_error``, ``check_corruptions`` (a damaged expansion),
  ``check_count_mismatches`` (placeholders and items that do not pair up, as prompts and as ids);
- encoders: ``check_encoder_rows`` (one row per feature token, item by item), ``pack`` and
  ``check_whole_request_rows`` (the model's own path on the whole request gives the same rows),
  ``check_vision_tower`` (Qwen-VL vision towers against the HF model's ``visual``).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from transformers import AutoProcessor

from ray_mm.align import expansion_of
from ray_mm.config import MediaPolicy, RayMMConfig
from ray_mm.media import MediaLoader
from ray_mm.media.synth import make_audio, make_image, make_video
from ray_mm.pipeline import Preprocessor, RequestOutcome, video_metadata
from ray_mm.types import MediaSpec

# Outputs of the processor that are not media features.
TEXT_KEYS = frozenset({"input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids", "video_metadata"})

# The Qwen-VL chat template's placeholders (Qwen2-VL, Qwen2.5-VL, Qwen3-VL).
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
QWEN_VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"


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


def check_several_images(model_dir: Path, family: Family, media_dir: Path,
                         images: Sequence[str] = ("b.png", "c.jpg", "d.png", "c.jpg")) -> Checked:
    """Several of ``USUAL_MEDIA``'s odd-sized images in one request, their placeholders against newlines,
    text and each other: ``check_request`` parity on the fast path, items in prompt order, a repeated image
    (the default list has one) served from the cache, and ``check_legacy_roundtrip``."""
    ph = family.image
    line = {"request_id": "odd", "prompt": f"{ph}\n{ph} and\n{ph}{ph}\nwhich?", "images": list(images)}
    checked = check_request(model_dir, family, line, media_dir)
    assert checked.record["path"] == "fast"
    assert [(i["modality"], i["index"]) for i in checked.record["items"]] == [("image", k) for k in range(len(images))]
    if len(set(images)) < len(images):
        assert checked.pre.cache.hits >= 1
    check_legacy_roundtrip(checked)
    return checked


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


def check_unpadded_items(checked: Checked) -> int:
    """For ``padded_outputs`` families whose processor pads images to the request's largest (LLaVA-NeXT,
    Pixtral): the processor itself with ``do_pad=False`` (no tensor conversion: the arrays are ragged) gives
    HF's ids, and each image's ``pixel_values`` and ``image_sizes`` equal ray-mm's item's exactly."""
    processor = AutoProcessor.from_pretrained(str(checked.pre.adapter.model_dir), local_files_only=True)
    images = [Image.open(Path(p)) for p in checked.line["images"]]
    out = processor(text=[checked.line["prompt"]], images=images, do_pad=False, return_tensors=None)
    assert out["input_ids"][0] == checked.hf_ids
    items = checked.pre.run({**checked.line, "request_id": "unpadded"}).item_features
    assert len(out["pixel_values"]) == len(items) == len(images)
    for theirs, ours in zip(out["pixel_values"], items):
        np.testing.assert_allclose(ours["pixel_values"][0], theirs.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(np.concatenate([f["image_sizes"] for f in items]), np.asarray(out["image_sizes"]))
    return len(items)


def check_legacy_roundtrip(checked: Checked) -> list[dict[str, Any]]:
    """HF's own expanded ids with ``skip_tokenizer_init``: legacy path, ids unchanged, same offsets;
    then the same with the first item left compact (one placeholder token). Returns both records."""
    return [check_legacy_ids(checked, checked.hf_ids, "legacy"), check_legacy_ids(checked, compact_first_item(checked), "mixed")]


# --------------------------------------------------------------------------- the checked request again


def rerun(checked: Checked, request_id: str, **fields: Any) -> dict[str, Any]:
    """The record of ``checked``'s request run again with ``fields`` (``prompt=...``, ``input_ids=...``,
    ``images=[...]``, ...): its media and options are kept unless ``fields`` replace them, its prompt or
    messages are dropped (a chat request's media are passed as lists)."""
    base = {k: v for k, v in checked.line.items() if k not in ("prompt", "messages")}
    base.update({k: v for k, v in media_entries(checked.line).items() if v})
    return checked.pre.run({**base, "request_id": request_id, **fields}).record


def run_ids(checked: Checked, request_id: str, ids: Sequence[int], **fields: Any) -> dict[str, Any]:
    """The record of ``checked``'s media with ``ids`` as ``input_ids`` and ``skip_tokenizer_init`` (the
    legacy path), ``fields`` replacing the request's own (``images=[...]``: other media)."""
    return rerun(checked, request_id, input_ids=list(ids), skip_tokenizer_init=True, **fields)


def check_legacy_ids(checked: Checked, ids: Sequence[int], request_id: str = "ids") -> dict[str, Any]:
    """``ids`` (HF's, or with items left compact) with ``skip_tokenizer_init``: accepted on the legacy
    path, expanded to HF's ids exactly, each item at the offsets the checked request gave it."""
    rec = run_ids(checked, request_id, ids)
    assert rec["ok"], rec
    assert rec["path"] == "legacy", rec["path"]
    assert rec["input_ids"] == checked.hf_ids, _first_diff(rec["input_ids"], checked.hf_ids)
    assert [i["offsets"] for i in rec["items"]] == [i["offsets"] for i in checked.record["items"]]
    return rec


def assert_alignment_error(record: Mapping[str, Any], *phrases: str) -> str:
    """``record`` is a refusal: an ``AlignmentError``, status 400, whose message contains every one of
    ``phrases`` (``"expected"`` where the scan must say what it expected). Returns the message."""
    assert record["ok"] is False, record
    err = record["error"]
    assert err["type"] == "AlignmentError" and err["status"] == 400, record
    for phrase in phrases:
        assert phrase in err["message"], (phrase, err["message"])
    return err["message"]


def check_corruptions(checked: Checked, kinds: Sequence[str] = ("short_run", "text"),
                      phrases: Sequence[str] = ("expected",)) -> dict[str, str]:
    """HF's ids with the first item's expansion damaged each way in ``kinds`` (see ``corrupt_first_item``)
    are refused, 400 ``AlignmentError``s whose messages contain ``phrases``. Returns kind -> message."""
    return {how: assert_alignment_error(run_ids(checked, how, corrupt_first_item(checked, how)), *phrases) for how in kinds}


def check_count_mismatches(checked: Checked, prompts: Sequence[str], *, modality: str = "image",
                           ids: Sequence[int] | None = None, extra: Sequence[int] | None = None,
                           phrases: Sequence[str] = ()) -> list[str]:
    """Placeholders and items that do not pair up are refused (400 ``AlignmentError``, messages with
    ``phrases``) both ways, as prompts and as ids: each of ``prompts`` (one placeholder too many or too
    few for the request's media); ``ids`` (default HF's) plus ``extra`` (default one compact ``modality``
    placeholder); ``ids`` with the request's last ``modality`` item dropped. Returns the refusals' messages."""
    messages = [assert_alignment_error(rerun(checked, "prompt", prompt=prompt), *phrases) for prompt in prompts]
    ids = list(checked.hf_ids if ids is None else ids)
    extra = [checked.pre.adapter.placeholder_token_ids[modality]] if extra is None else list(extra)
    messages.append(assert_alignment_error(run_ids(checked, "more", ids + extra), *phrases))
    key = f"{modality}s"
    items = media_entries(checked.line)[key]
    assert items, f"the request has no {key} to drop one of"
    messages.append(assert_alignment_error(run_ids(checked, "fewer", ids, **{key: items[:-1]}), *phrases))
    return messages


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
    ``long_run`` repeats one (for expansions with no text of their own), ``text`` changes the first
    text token after its first run (a slice marker, a timestamp, an end token)."""
    ids = list(checked.hf_ids)
    (s, e) = checked.record["items"][0]["offsets"][0]
    if how == "short_run":
        del ids[s]
    elif how == "long_run":
        ids.insert(s, ids[s])
    else:
        ids[e + 1] = ids[e + 1] + 1 if ids[e + 1] + 1 < len(checked.pre.adapter.tokenizer) else ids[e + 1] - 1
    return ids


def run_lengths(item: Mapping[str, Any]) -> list[int]:
    """The length of each of a record item's feature-token runs (its ``offsets`` ranges are inclusive)."""
    return [e - s + 1 for s, e in item["offsets"]]


# --------------------------------------------------------------------------- chat requests

_PART_TYPES = {"image": "image_url", "video": "video_url", "audio": "audio_url"}


def chat(*turns: Sequence[Any]) -> list[dict[str, Any]]:
    """Chat ``messages`` from ``(role, part, ...)`` turns. A turn of one text has it as its content (a
    string); otherwise each ``str`` is a text part and each ``{"image": entry}`` (``"video"``, ``"audio"``)
    a media part, ``entry`` a URL or ``{"url": ..., options}``:
    ``chat(("user", "Compare\n", {"image": "a.jpg"}), ("assistant", "Sure."))``."""
    messages = []
    for role, *parts in turns:
        if len(parts) == 1 and isinstance(parts[0], str):
            messages.append({"role": role, "content": parts[0]})
            continue
        content = []
        for part in parts:
            if isinstance(part, str):
                content.append({"type": "text", "text": part})
            else:
                ((modality, entry),) = part.items()
                kind = _PART_TYPES[modality]
                content.append({"type": kind, kind: {"url": entry} if isinstance(entry, str) else dict(entry)})
        messages.append({"role": role, "content": content})
    return messages


def check_chat(model_dir: Path, family: Family, messages: Sequence[Mapping[str, Any]], media_dir: Path,
               request_id: str = "chat") -> tuple[Checked, str]:
    """``check_request`` on a chat request: ray-mm renders ``messages`` itself, the oracle gets the
    processor's own rendering. Returns the checked request and that rendering (to check the template's layout)."""
    hf_text = hf_chat_text(model_dir, messages)
    return check_request(model_dir, family, {"request_id": request_id, "messages": list(messages)}, media_dir, hf_text=hf_text), hf_text


def hf_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """ray-mm's chat ``messages`` as the processor's chat template takes them: each media part
    (``image_url`` / ``video_url`` / ``audio_url``) a bare ``{"type": "image"}`` (``video`` / ``audio``)."""
    return [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else [
        p if p["type"] == "text" else {"type": p["type"].removesuffix("_url")} for p in m["content"]]} for m in messages]


def hf_chat_text(processor: Any, messages: Sequence[Mapping[str, Any]]) -> str:
    """The processor's own rendering of ``messages`` (with the generation prompt): the ``hf_text`` of a chat
    request's ``check_request``. ``processor``: the HF processor, or the model directory to load it from."""
    if isinstance(processor, (str, Path)):
        processor = AutoProcessor.from_pretrained(str(processor), local_files_only=True)
    return processor.apply_chat_template(hf_messages(messages), tokenize=False, add_generation_prompt=True)


# --------------------------------------------------------------------------- encoders


@dataclass
class Encoded:
    """What ``check_encoder_rows`` ran: the request, the encoder, and its rows per item."""

    outcome: RequestOutcome  # the request as the encoder saw it (records and item arrays)
    encoder: Any
    rows: list[Any]  # one (num_tokens, hidden) tensor per item, in prompt order


def check_encoder_rows(pre: Preprocessor, line: Mapping[str, Any], *, hidden_size: int | None = None) -> Encoded:
    """Run ``line`` (media paths absolute, as ``Checked.line``), build the adapter's encoder (seed 0) and
    encode each item's arrays alone: one finite row of ``hidden_size`` (default the text model's) per
    feature token of the item."""
    import torch

    outcome = pre.run({**line, "request_id": "enc"})
    assert outcome.ok, outcome.record
    adapter = pre.adapter
    hidden = adapter.config.text_config.hidden_size if hidden_size is None else hidden_size
    torch.manual_seed(0)
    encoder = adapter.build_encoder()
    # Random weights everywhere: some models initialise a projection to zeros (Gemma 3's), which would make
    # every comparison of rows vacuous.
    with torch.no_grad():
        for param in encoder.parameters():
            param.normal_(0.0, 0.02)
    rows = []
    for item, feats in zip(outcome.record["items"], outcome.item_features, strict=True):
        emb = adapter.encode(encoder, {k: torch.from_numpy(np.asarray(v)) for k, v in feats.items()})
        assert emb.shape == (item["num_tokens"], hidden), item
        assert torch.isfinite(emb).all(), item
        assert emb.abs().sum() > 0, f"{item['modality']} {item['index']}: all-zero embeddings prove nothing"
        rows.append(emb)
    return Encoded(outcome, encoder, rows)


def pack(item_features: Sequence[Mapping[str, Any]], names: Sequence[str], axes: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """The items' arrays of each output in ``names`` concatenated in prompt order (along ``axes[name]``,
    default 0: a ``Family.concat_axis``), as the processor packs a whole request; items without it are skipped."""
    axes = axes or {}
    return {name: np.concatenate([f[name] for f in item_features if name in f], axis=axes.get(name, 0)) for name in names}


def check_whole_request_rows(encoded: Encoded, inputs: Mapping[str, np.ndarray], *,
                             method: str | Callable[..., Any] = "get_image_features", modality: str | None = None) -> int:
    """The model's own feature path (``method`` of the encoder, or a function called on it) on the whole
    request's ``inputs`` (the processor's arrays, or ``pack``'s) gives the same rows, within 1e-5, as the
    items one by one (those of ``modality``, default all), in prompt order. Returns how many rows were compared."""
    import torch

    call = getattr(encoded.encoder, method) if isinstance(method, str) else lambda **kw: method(encoded.encoder, **kw)
    with torch.inference_mode():
        whole = call(**{k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()}).pooler_output
    ours = [row for row, item in zip(encoded.rows, encoded.outcome.record["items"]) if modality in (None, item["modality"])]
    assert ours, f"no {modality} items"
    # One (tokens, hidden) tensor per item, or all rows in one tensor: flattened to rows either way.
    theirs = torch.cat([t.reshape(-1, t.shape[-1]) for t in whole])
    torch.testing.assert_close(theirs, torch.cat(ours), atol=1e-5, rtol=1e-5)
    return int(theirs.shape[0])


def check_vision_tower(adapter: Any, processor: Any, model_cls: Any, video_options: Mapping[str, Any] | None = None) -> Any:
    """A vision-tower encoder (``build_encoder`` gives the HF model's ``visual``; Qwen2.5-VL, Qwen3-VL), seed 0,
    on two odd-sized random images and a 4-frame random video (with ``video_options``): one finite row of
    ``vision_config.out_hidden_size`` per token of each item; ``model_cls`` with the same ``visual`` weights
    gives the same image features, item by item (1e-4), from ``processor``'s arrays. Returns the encoder."""
    import torch

    torch.manual_seed(0)
    encoder = adapter.build_encoder()
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 255, (97, 131, 3), dtype=np.uint8), rng.integers(0, 255, (60, 44, 3), dtype=np.uint8)]
    items = [adapter.process("image", im)[0] for im in images]
    items += adapter.process("video", rng.integers(0, 255, (4, 90, 120, 3), dtype=np.uint8), *([video_options] if video_options else []))
    rows = []
    for item in items:
        emb = adapter.encode(encoder, {k: torch.from_numpy(v) for k, v in item.features.items()})
        assert emb.shape == (item.num_tokens, adapter.config.vision_config.out_hidden_size)
        assert torch.isfinite(emb).all()
        rows.append(emb)
    model = model_cls(adapter.config).eval()
    model.visual.load_state_dict(encoder.state_dict())
    image = adapter.placeholder_texts["image"]
    ref = processor(text=[image * len(images)], images=images, return_tensors="pt")
    with torch.inference_mode():
        expected = model.get_image_features(ref["pixel_values"], ref["image_grid_thw"]).pooler_output
    for got, exp in zip(rows[: len(images)], expected, strict=True):
        torch.testing.assert_close(got, exp, atol=1e-4, rtol=1e-4)
    return encoder


# --------------------------------------------------------------------------- media files and fixtures

_IMAGE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}

# The usual synthetic media (``write_media``'s spec): odd sizes and aspect ratios, one small enough
# for most processors to upscale (b.png), and a 3 s clip at 10 fps.
USUAL_MEDIA: Mapping[str, tuple[Any, ...]] = {
    "a.jpg": (600, 400),
    "b.png": (37, 91),
    "c.jpg": (333, 517),
    "d.png": (130, 45),
    "v.mp4": (320, 180, 10, 3.0),
}


def write_media(directory: Path, spec: Mapping[str, Sequence[Any]]) -> Path:
    """Write the usual synthetic media into ``directory`` and return it; ``spec``: file name -> arguments.

    - ``.jpg`` / ``.png``: ``(width, height)`` or ``(width, height, mode)`` (a Pillow mode, e.g. ``"RGBA"``,
      ``"L"``); the k-th image of ``spec`` (from 1) is drawn with seed k;
    - ``.mp4``: ``(width, height, fps, seconds)`` or ``(width, height, fps, seconds, seed)`` (seed 0);
    - ``.wav``: ``(seconds, sample_rate)`` or ``(seconds, sample_rate, freq)`` (a sine tone, 440 Hz).
    """
    images = 0
    for name, args in spec.items():
        suffix = Path(name).suffix.lower()
        if suffix in _IMAGE_FORMATS:
            images += 1
            width, height, *mode = args
            data = make_image(width, height, _IMAGE_FORMATS[suffix], *mode, seed=images)
        elif suffix == ".mp4":
            width, height, fps, seconds, *seed = args
            data = make_video(width, height, fps=fps, seconds=seconds, seed=seed[0] if seed else 0)
        elif suffix == ".wav":
            seconds, rate, *freq = args
            data = make_audio(seconds, rate, "wav", *freq)
        else:
            raise ValueError(f"no synthetic media for {name!r}")
        (directory / name).write_bytes(data)
    return directory


def family_fixtures(family: str, media: Mapping[str, Sequence[Any]], *, model_name: str = "model") -> tuple[Any, Any]:
    """The two module-scoped fixtures every family's tests start from: ``model`` (named ``model_name``), the
    family's tiny offline model directory (``family_dir``), and ``media``, a fresh directory holding
    ``write_media(..., media)``. In a test module: ``model, media = family_fixtures("llava", {...})``."""

    def model(family_dir: Any) -> Path:
        return family_dir(family)

    def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
        return write_media(tmp_path_factory.mktemp(f"{family}_media"), media)

    return pytest.fixture(scope="module", name=model_name)(model), pytest.fixture(scope="module", name="media")(media_dir)


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
