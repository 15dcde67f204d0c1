"""Engine hand-off for every family ray-mm supports: SGLang's and vLLM's forms, and the round trip.

Field names and shapes are the engines' own:
- SGLang ``python/sglang/srt/multimodal/processors/base_processor.py``: one dict per modality with
  ``format``, the processor outputs by name, ``offsets`` (inclusive runs), ``hash`` / ``pad_value``
  (one-item dicts), or ``format: precomputed_embedding`` with ``feature``; ``input_ids`` expanded.
- vLLM ``vllm/model_executor/models/qwen2_vl.py`` ``Qwen2VLImageEmbeddingInputs``: ``image_embeds``
  ``(num_image_features, hidden)`` and ``image_grid_thw`` ``(num_images, 3)``; ``multi_modal_uuids``
  per modality, one per item; ``prompt_token_ids`` compact (one placeholder per item).

The round trip: ``to_sglang(record, features)`` sent back to ray-mm (as JSON, arrays as ``npy``) as a
``precomputed`` request gives the same record (ids, offsets, spans, hashes, grids) and features.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ray_mm import handoff
from ray_mm.models.families import FAMILY_SPECS
from ray_mm.pipeline import Preprocessor
from tests import conformance as cf

MEDIA = {**cf.USUAL_MEDIA, "s.wav": (2.0, 16000)}
# Record fields a round trip must keep, item by item (``path`` differs: the ids come back expanded).
ITEM_FIELDS = ("modality", "index", "offsets", "span", "num_tokens", "grid_thw", "feature_shape", "hash", "pad_value")
# Families whose videos are not ``videos`` entries of a plain prompt (their tests use chat or frames).
NO_PROMPT_VIDEO = frozenset({"minicpmv4_6", "internvl", "smolvlm"})


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cf.write_media(tmp_path_factory.mktemp("handoff_media"), MEDIA)


def request_for(family: str, media: Path) -> dict[str, Any]:
    """Two images of different sizes, a video and an audio clip where the family takes them, between text."""
    ph = FAMILY_SPECS[family].placeholders
    parts, line = ["Look:"], {"request_id": f"{family}-h"}
    if "image" in ph:
        parts += [ph["image"], "and", ph["image"]]
        line["images"] = [str(media / "c.jpg"), str(media / "b.png")]
    if "video" in ph and family not in NO_PROMPT_VIDEO:
        parts += ["then", ph["video"]]
        line["videos"] = [{"url": str(media / "v.mp4"), "fps": 2}]
    if "audio" in ph:
        parts += ["hear", ph["audio"]]
        line["audios"] = [str(media / "s.wav")]
    line["prompt"] = " ".join(parts + ["now?"])
    return line


def _wire(line: dict[str, Any]) -> dict[str, Any]:
    """As a client would send it: JSON, every array as base64 ``npy``."""
    return json.loads(json.dumps(handoff.encode_arrays(line)))


def _same_items(a: dict[str, Any], b: dict[str, Any], fields: tuple[str, ...] = ITEM_FIELDS) -> None:
    assert b["input_ids"] == a["input_ids"]
    assert [{k: i.get(k) for k in fields} for i in b["items"]] == [{k: i.get(k) for k in fields} for i in a["items"]]


def _embeddings(record: dict[str, Any], hidden: int = 8) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.standard_normal((item["num_tokens"], hidden)).astype(np.float32) for item in record["items"]]


@pytest.mark.parametrize("family", list(FAMILY_SPECS))
def test_sglang_roundtrip(family: str, family_dir: Any, media: Path) -> None:
    # float32 transport: the record's feature_shape then names the processor's own array, as the
    # precomputed request it comes back as does (under the uint8 transport it names the shipped pixels).
    pre = Preprocessor(family_dir(family), cf.config_for(media).model_copy(update={"transport": "float32"}))
    out = pre.run(request_for(family, media))
    assert out.ok, out.record
    rec = out.record

    payload = handoff.to_sglang(rec, out.item_features)
    # The default (uint8) transport hands the engine the very same payload: its features are finished.
    out8 = Preprocessor(family_dir(family), cf.config_for(media)).run(request_for(family, media))
    payload8 = handoff.to_sglang(out8.record, out8.item_features)
    assert payload8["input_ids"] == payload["input_ids"]
    for key in handoff.SGLANG_DATA_KEYS.values():
        for body8, body in zip(payload8.get(key, []), payload.get(key, []), strict=True):
            arrays = sorted(k for k, v in body.items() if isinstance(v, np.ndarray))
            assert arrays and arrays == sorted(k for k, v in body8.items() if isinstance(v, np.ndarray))
            for name in arrays:
                assert body8[name].dtype == body[name].dtype, name
                np.testing.assert_array_equal(body8[name], body[name], err_msg=name)
    assert payload["input_ids"] == rec["input_ids"]
    for modality in ("image", "video", "audio"):
        items = [i for i in rec["items"] if i["modality"] == modality]
        dicts = payload.get(handoff.SGLANG_DATA_KEYS[modality], [])
        assert len(dicts) == (1 if items else 0)  # ONE dict per modality, all its items concatenated
        if items:
            body = dicts[0]
            assert body["format"] == "processor_output"
            assert body["offsets"] == [o for i in items for o in i["offsets"]]
            assert ("hash" in body) == (len(items) == 1)
    back = pre.run(_wire(handoff.as_precomputed_request(payload, f"{family}-rt")))
    assert back.ok, back.record
    _same_items(rec, back.record)
    for theirs, ours in zip(out.item_features, back.item_features):
        assert sorted(ours) == sorted(theirs)
        for name in theirs:
            np.testing.assert_array_equal(np.asarray(ours[name]), np.asarray(theirs[name]), err_msg=name)

    embeddings = _embeddings(rec)
    emb_payload = handoff.to_sglang(rec, out.item_features, embeddings=embeddings)
    for body in (v[0] for k, v in emb_payload.items() if k in handoff.SGLANG_DATA_KEYS.values()):
        assert body["format"] == "precomputed_embedding" and not handoff.SGLANG_FEATURE_NAMES & set(body)
    back = pre.run(_wire(handoff.as_precomputed_request(emb_payload, f"{family}-rte")))
    assert back.ok, back.record
    _same_items(rec, back.record, tuple(f for f in ITEM_FIELDS if f != "feature_shape"))  # the feature is the embedding now
    assert [i["feature_shape"] for i in back.record["items"]] == [list(e.shape) for e in embeddings]
    for emb, theirs, ours in zip(embeddings, out.item_features, back.item_features):
        np.testing.assert_array_equal(ours["embedding"], emb)
        for name in set(theirs) - handoff.SGLANG_FEATURE_NAMES:
            np.testing.assert_array_equal(np.asarray(ours[name]), np.asarray(theirs[name]), err_msg=name)


@pytest.mark.parametrize("family", list(FAMILY_SPECS))
def test_vllm_form(family: str, family_dir: Any, media: Path) -> None:
    pre = Preprocessor(family_dir(family), cf.config_for(media))
    line = request_for(family, media)
    out = pre.run(line)
    assert out.ok, out.record
    rec, adapter = out.record, pre.adapter
    embeddings = _embeddings(rec, hidden=16)
    prompt = handoff.to_vllm(rec, adapter.placeholder_token_ids, embeddings=embeddings)

    compact = prompt["prompt_token_ids"]
    # One placeholder per item, each where its expansion was: ray-mm expands the compact ids back to the record.
    placeholders = set(adapter.placeholder_token_ids.values())
    assert sum(1 for t in compact if t in placeholders) == len(rec["items"])
    again = pre.run({"request_id": "compact", "input_ids": compact, "images": line.get("images", []),
                     "videos": line.get("videos", []), "audios": line.get("audios", [])})
    assert again.ok, again.record
    assert again.record["input_ids"] == rec["input_ids"]
    if rec["path"] == "fast":  # the prompt's own ids: what vLLM tokenizes before expanding them itself
        assert compact == adapter.tokenize(line["prompt"])

    for modality, items in _group(rec).items():
        assert prompt["multi_modal_uuids"][modality] == [i["hash"] for i in items]
        data = prompt["multi_modal_data"][modality]
        embeds = [embeddings[rec["items"].index(i)] for i in items]
        if isinstance(data, dict):  # the grid families: embeddings concatenated, one grid row per item
            np.testing.assert_array_equal(data[f"{modality}_embeds"], np.concatenate(embeds))
            assert data[handoff.GRID_KEYS[modality]].tolist() == [i["grid_thw"] for i in items]
        else:
            assert len(data) == len(items) and all(np.array_equal(a, b) for a, b in zip(data, embeds))
    desc = handoff.describe(handoff.to_vllm(rec, adapter.placeholder_token_ids))
    json.dumps(desc)  # metadata is JSON as it is
    first = rec["items"][0]
    data = desc["multi_modal_data"][first["modality"]]
    shape = data[f"{first['modality']}_embeds"]["shape"] if isinstance(data, dict) else data[0]["shape"]
    assert shape[0] == (sum(i["num_tokens"] for i in _group(rec)[first["modality"]]) if isinstance(data, dict) else first["num_tokens"])


def _group(record: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for item in record["items"]:
        out.setdefault(item["modality"], []).append(item)
    return out


def _hf_qwen_inputs(model: Path, media: Path, names: list[str]) -> tuple[list[int], dict[str, Any]]:
    """What an SGLang user passes: the HF processor's own output for a prompt with ``names``' images."""
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(model), local_files_only=True)
    text = "Look: " + " and ".join(cf.QWEN_IMAGE for _ in names) + " now?"
    out = processor(text=[text], images=[Image.open(media / n) for n in names], return_tensors="np")
    return out["input_ids"][0].tolist(), {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}


def test_sglang_native_dicts_without_ray_mm_hints(family_dir: Any, media: Path) -> None:
    """SGLang's forms as its users write them (no ``ray_mm`` hint): a processor_output dict holding two
    images (split by their grid rows, offsets honoured), and a one-image precomputed_embedding with
    ``feature``, the grid, and SGLang's integer ``hash`` (base_processor.py takes it for one-item dicts)."""
    model = family_dir("qwen2_vl")
    pre = Preprocessor(model, cf.config_for(media))
    ids, arrays = _hf_qwen_inputs(model, media, ["c.jpg", "b.png"])
    token = pre.adapter.feature_token_ids["image"]
    runs = [[s, e] for s, e in __import__("ray_mm.align", fromlist=["find_runs"]).find_runs(ids, token)]
    line = {"request_id": "native", "input_ids": ids, "skip_tokenizer_init": True,
            "images": [{"format": "processor_output", **arrays, "offsets": runs}]}
    rec = pre.run(_wire(line)).record
    assert rec["ok"], rec
    assert rec["input_ids"] == ids and [i["offsets"] for i in rec["items"]] == [[r] for r in runs]
    assert [i["grid_thw"] for i in rec["items"]] == arrays["image_grid_thw"].tolist()

    ids1, one = _hf_qwen_inputs(model, media, ["d.png"])
    n = int(np.prod(one["image_grid_thw"][0])) // 4
    emb = np.ones((n, 8), np.float32)
    line = {"request_id": "emb", "input_ids": ids1, "skip_tokenizer_init": True,
            "images": [{"format": "precomputed_embedding", "feature": emb, "image_grid_thw": one["image_grid_thw"], "hash": 0xABC}]}
    got = pre.run(line)
    assert got.ok, got.record
    item = got.record["items"][0]
    assert item["hash"] == "abc" and item["num_tokens"] == n and item["grid_thw"] == one["image_grid_thw"][0].tolist()
    np.testing.assert_array_equal(got.item_features[0]["embedding"], emb)


@pytest.mark.parametrize(("change", "phrase"), [
    (lambda line, runs: line.update(prompt="x", input_ids=None, skip_tokenizer_init=None), "give input_ids, not a prompt"),
    (lambda line, runs: line["images"][0].update(offsets=[[0, 1], [2, 3]]), "not one of the model's media tokens"),
    (lambda line, runs: line["images"][0].update(offsets=[runs[0]]), "cannot tell which of its 1 offsets"),
    (lambda line, runs: line["images"][0].update(offsets=[[runs[0][0], runs[0][1] - 1], runs[1]]), "offsets cover"),
    (lambda line, runs: line["images"][0].update(ray_mm={"hashes": ["zz", "aa"]}), "hex digest"),
    (lambda line, runs: line["images"][0].update(image_grid_thw=[[1, 2, 2]] * 3, offsets=None), "do not split"),
    (lambda line, runs: line["images"][0].update(modality="VIDEO"), "says modality"),
])
def test_bad_engine_dicts_are_400s(family_dir: Any, media: Path, change: Any, phrase: str) -> None:
    """A dict that does not describe its items is the client's error, for its own request (400), with the item named."""
    from ray_mm.align import find_runs

    model = family_dir("qwen2_vl")
    pre = Preprocessor(model, cf.config_for(media))
    ids, arrays = _hf_qwen_inputs(model, media, ["c.jpg", "b.png"])
    runs = [list(r) for r in find_runs(ids, pre.adapter.feature_token_ids["image"])]
    line: dict[str, Any] = {"request_id": "bad", "input_ids": ids, "skip_tokenizer_init": True,
                            "images": [{"format": "processor_output", **arrays, "offsets": runs}]}
    change(line, runs)
    line = {k: v for k, v in line.items() if v is not None}
    line["images"] = [{k: v for k, v in line["images"][0].items() if v is not None}]
    rec = pre.run(line).record
    assert not rec["ok"] and rec["error"]["status"] == 400, rec
    assert phrase in rec["error"]["message"] and "image 0 of request bad" in rec["error"]["message"]


def test_offsets_are_where_alignment_must_find_the_item(family_dir: Any, media: Path) -> None:
    """Offsets that skip the first run of the image token: the item is not found there, a 400, not a silent shift."""
    from ray_mm.align import find_runs

    model = family_dir("qwen2_vl")
    pre = Preprocessor(model, cf.config_for(media))
    ids, arrays = _hf_qwen_inputs(model, media, ["d.png", "d.png"])
    runs = [list(r) for r in find_runs(ids, pre.adapter.feature_token_ids["image"])]
    one = {"pixel_values": arrays["pixel_values"][: len(arrays["pixel_values"]) // 2], "image_grid_thw": arrays["image_grid_thw"][:1]}
    rec = pre.run({"request_id": "shift", "input_ids": ids, "skip_tokenizer_init": True,
                   "images": [{"format": "processor_output", **one, "offsets": [runs[1]]}]}).record
    assert not rec["ok"] and rec["error"]["status"] == 400, rec
