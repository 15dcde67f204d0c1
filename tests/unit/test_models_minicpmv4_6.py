"""MiniCPM-V 4.6 against its HF processor (transformers 5.24, in tree), through the shared conformance helper.

Every request is checked whole: ray-mm processes items one by one, the processor gets the whole
prompt with every item (``MiniCPMV4_6Processor.__call__``, image ids included), and ids, offsets
and every output array (``pixel_values`` / ``pixel_values_videos`` packed along the last axis,
``target_sizes`` / ``target_sizes_videos`` along the first) must be equal.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ray_mm.errors import MediaUnsupportedError
from ray_mm.synth import make_image, make_video
from tests.conformance import Checked, Family, check_legacy_roundtrip, check_request, corrupt_first_item, item_spans

IMG, VID = "<|image_pad|>", "<|video_pad|>"
MINICPM = Family("minicpmv4_6", IMG, VID, concat_axis={"pixel_values": -1, "pixel_values_videos": -1})


@pytest.fixture(scope="module")
def model(family_dir) -> Path:  # type: ignore[no-untyped-def]
    return family_dir("minicpmv4_6")


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("minicpm_media")
    (d / "big.jpg").write_bytes(make_image(600, 400, seed=1))  # 2x3 slices
    (d / "small.jpg").write_bytes(make_image(200, 200, seed=2))  # no slices, upscaled to 224²
    (d / "odd.jpg").write_bytes(make_image(333, 517, seed=3))
    (d / "vga.png").write_bytes(make_image(640, 480, "PNG", seed=4))
    (d / "thin.jpg").write_bytes(make_image(90, 300, seed=5))
    (d / "clip.mp4").write_bytes(make_video(320, 180, fps=10, seconds=2.0))  # frames sliced 1x2
    return d


@pytest.fixture(scope="module")
def mixed(model: Path, media: Path) -> Checked:
    """Image, video, image in that prompt order, text and newlines right against each placeholder."""
    line = {"request_id": "mixed", "prompt": f"<|im_start|>user\nA{IMG}\n{VID}B {IMG}.<|im_end|>",
            "images": ["big.jpg", "small.jpg"], "videos": [{"url": "clip.mp4", "nframes": 4}]}
    return check_request(model, MINICPM, line, media)


def _tokens(checked: Checked, *names: str) -> list[int]:
    tok = checked.pre.adapter.tokenizer
    return [int(tok.convert_tokens_to_ids(n)) for n in names]


def _run(checked: Checked, request_id: str, **fields) -> dict:  # type: ignore[no-untyped-def]
    base = {k: v for k, v in checked.line.items() if k not in ("prompt", "messages")}
    return checked.pre.run({**base, "request_id": request_id, **fields}).record


def _assert_alignment_error(rec: dict, *, expected: bool = True) -> None:  # type: ignore[type-arg]
    assert rec["ok"] is False, rec
    assert rec["error"]["type"] == "AlignmentError" and rec["error"]["status"] == 400, rec
    if expected:
        assert "expected" in rec["error"]["message"], rec


def test_one_sliced_image(model: Path, media: Path) -> None:
    checked = check_request(model, MINICPM, {"request_id": "big", "prompt": f"Describe{IMG}please", "images": ["big.jpg"]}, media)
    rec = checked.record
    assert rec["path"] == "fast" and checked.pre.adapter.name == "minicpmv4_6"
    (item,) = rec["items"]
    # Overview (15 tokens) then 2 rows of 3 slices (16 each), each run its own offsets range.
    assert [e - s + 1 for s, e in item["offsets"]] == [15] + [16] * 6
    assert item["num_tokens"] == 111 and item["grid_thw"] is None
    text = checked.pre.adapter.decode(rec["input_ids"])
    assert "Describe<image_id>0</image_id><image>" in text and "</slice>\n<slice>" in text and text.endswith("</slice>please")
    check_legacy_roundtrip(checked)


def test_one_small_image(model: Path, media: Path) -> None:
    checked = check_request(model, MINICPM, {"request_id": "small", "prompt": f"{IMG}\nWhat is it?", "images": ["small.jpg"]}, media)
    (item,) = checked.record["items"]
    assert checked.record["path"] == "fast"
    assert [e - s + 1 for s, e in item["offsets"]] == [16]
    check_legacy_roundtrip(checked)


def test_several_odd_images_and_a_repeat(model: Path, media: Path) -> None:
    # The repeated image is a content-hash cache hit inside the request: its id prefix must still be its own.
    line = {"request_id": "odd", "prompt": f"1:{IMG}\n2:{IMG}3 {IMG}\n\n{IMG}{VID}then{IMG}",
            "images": ["odd.jpg", "vga.png", "thin.jpg", "big.jpg", "odd.jpg"], "videos": [{"url": "clip.mp4", "fps": 2.0}]}
    checked = check_request(model, MINICPM, line, media)
    assert checked.record["path"] == "fast"
    assert [i["modality"] for i in checked.record["items"]] == ["image"] * 4 + ["video", "image"]
    text = checked.pre.adapter.decode(checked.record["input_ids"])
    assert [text.count(f"<image_id>{k}</image_id>") for k in range(5)] == [2, 1, 1, 1, 1]  # videos restart at 0
    assert checked.pre.cache.hits >= 1
    check_legacy_roundtrip(checked)


def test_image_video_image_in_prompt_order(mixed: Checked) -> None:
    rec = mixed.record
    assert rec["path"] == "fast"
    assert [(i["modality"], i["index"]) for i in rec["items"]] == [("image", 0), ("video", 0), ("image", 1)]
    video = rec["items"][1]
    # 4 frames, each an overview (15 tokens) and 1x2 slices of 16, blocks wrapped in <image>.
    assert [e - s + 1 for s, e in video["offsets"]] == [15, 16, 16] * 4
    assert video["feature_shape"][:3] == [1, 3, 14]
    check_legacy_roundtrip(mixed)


@pytest.mark.parametrize("entry", [{"url": "clip.mp4", "nframes": 4}, {"url": "clip.mp4", "fps": 2.0}], ids=["nframes", "fps"])
def test_video_alone(model: Path, media: Path, entry: dict) -> None:  # type: ignore[type-arg]
    checked = check_request(model, MINICPM, {"request_id": "vid", "prompt": f"Watch:{VID}\nWhat happens?", "videos": [entry]}, media)
    (item,) = checked.record["items"]
    assert checked.record["path"] == "fast" and item["num_tokens"] == 4 * 47
    text = checked.pre.adapter.decode(checked.record["input_ids"])
    assert text.count("<image_id>0</image_id><image><|video_pad|>") == 1 and text.count("<image><|video_pad|>") == 4
    check_legacy_roundtrip(checked)


def test_placeholders_side_by_side(model: Path, media: Path) -> None:
    """Bare placeholders touch each other (what the chat template renders for consecutive media parts)."""
    line = {"request_id": "adj", "prompt": f"{IMG}{IMG}{VID}{IMG}",
            "images": ["small.jpg", "big.jpg", "thin.jpg"], "videos": [{"url": "clip.mp4", "nframes": 4}]}
    checked = check_request(model, MINICPM, line, media)
    assert checked.record["path"] == "fast"
    check_legacy_roundtrip(checked)
    # Compact ids from the client (skip_tokenizer_init), side by side: the legacy scan expands each.
    compact = checked.pre.adapter.tokenize(line["prompt"])
    rec = _run(checked, "adj-ids", input_ids=compact, skip_tokenizer_init=True)
    assert rec["ok"] and rec["path"] == "legacy" and rec["input_ids"] == checked.hf_ids, rec.get("error")
    assert [i["offsets"] for i in rec["items"]] == [i["offsets"] for i in checked.record["items"]]


def test_image_ids_off(model: Path, media: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``use_image_id=False`` (a processor call kwarg): no ``<image_id>k</image_id>`` prefixes."""
    from ray_mm.models.minicpmv4_6 import MiniCPMV4_6Adapter

    monkeypatch.setattr(MiniCPMV4_6Adapter, "use_image_id", property(lambda self: False))
    family = Family("minicpmv4_6", IMG, VID, concat_axis=MINICPM.concat_axis, call_kwargs={"use_image_id": False})
    line = {"request_id": "noid", "prompt": f"{IMG}{VID}x", "images": ["small.jpg"], "videos": [{"url": "clip.mp4", "nframes": 4}]}
    checked = check_request(model, family, line, media)
    assert "<image_id>" not in checked.pre.adapter.decode(checked.record["input_ids"])
    check_legacy_roundtrip(checked)


def test_chat_messages(model: Path, media: Path) -> None:
    from transformers import AutoProcessor

    messages = [
        {"role": "user", "content": [
            {"type": "text", "text": "Compare\n"},
            {"type": "image_url", "image_url": {"url": "big.jpg"}},
            {"type": "image_url", "image_url": {"url": "thin.jpg"}},
            {"type": "text", "text": " with "},
            {"type": "video_url", "video_url": {"url": "clip.mp4", "nframes": 4}},
        ]},
        {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "small.jpg"}}, {"type": "text", "text": "and this?"}]},
    ]
    hf_messages = [
        {"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else [
            {"type": p["type"].removesuffix("_url")} if p["type"] != "text" else p for p in m["content"]]}
        for m in messages
    ]
    processor = AutoProcessor.from_pretrained(str(model), local_files_only=True)
    hf_text = processor.apply_chat_template(hf_messages, tokenize=False, add_generation_prompt=True)
    assert f"{IMG}{IMG}" in hf_text
    checked = check_request(model, MINICPM, {"request_id": "chat", "messages": messages}, media, hf_text=hf_text)
    assert checked.record["path"] == "fast"
    assert [i["modality"] for i in checked.record["items"]] == ["image", "image", "video", "image"]


def test_corrupted_expansions_are_400s_that_say_what_was_expected(mixed: Checked) -> None:
    for how in ("short_run", "text"):
        _assert_alignment_error(_run(mixed, how, input_ids=corrupt_first_item(mixed, how), skip_tokenizer_init=True))
    # A slice marker of the first (sliced) image: its third <slice> becomes </slice>.
    start, length, modality = item_spans(mixed)[0]
    assert modality == "image"
    slice_start, slice_end = _tokens(mixed, "<slice>", "</slice>")
    ids = list(mixed.hf_ids)
    marks = [p for p in range(start, start + length) if ids[p] == slice_start]
    assert len(marks) == 6
    ids[marks[2]] = slice_end
    rec = _run(mixed, "slice", input_ids=ids, skip_tokenizer_init=True)
    _assert_alignment_error(rec)
    assert "image 0" in rec["error"]["message"] and f"differs at {marks[2]}" in rec["error"]["message"]
    # A wrong image id (the prefix is part of the expansion the scan checks).
    ids = list(mixed.hf_ids)
    zero = ids.index(mixed.pre.adapter.tokenize("0")[0], start)
    ids[zero] = mixed.pre.adapter.tokenize("7")[0]
    _assert_alignment_error(_run(mixed, "id", input_ids=ids, skip_tokenizer_init=True))


def test_count_mismatches_both_ways_are_400s(mixed: Checked) -> None:
    image_id = mixed.pre.adapter.placeholder_token_ids["image"]
    # Prompts: one image placeholder too many, and one too few.
    for prompt in (f"A{IMG}\n{VID}B {IMG}.{IMG}", f"A{IMG}\n{VID}B."):
        _assert_alignment_error(_run(mixed, "prompt", prompt=prompt), expected=False)
    # Ids: HF's ids plus one compact placeholder, and HF's ids for a request that lost its last image.
    _assert_alignment_error(_run(mixed, "more", input_ids=mixed.hf_ids + [image_id], skip_tokenizer_init=True),
                            expected=False)
    fewer = {k: v for k, v in mixed.line.items() if k != "prompt"}
    fewer["images"] = fewer["images"][:1]
    rec = mixed.pre.run({**fewer, "request_id": "fewer", "input_ids": mixed.hf_ids, "skip_tokenizer_init": True}).record
    _assert_alignment_error(rec, expected=False)


def test_encoder_gives_one_row_per_feature_token(mixed: Checked) -> None:
    import torch
    from transformers.models.minicpmv4_6.modeling_minicpmv4_6 import MiniCPMV4_6Model

    adapter = mixed.pre.adapter
    outcome = mixed.pre.run({k: v for k, v in mixed.line.items()} | {"request_id": "enc"})
    torch.manual_seed(0)
    encoder = adapter.build_encoder()
    rows = []
    for item, feats in zip(outcome.record["items"], outcome.item_features):
        emb = adapter.encode(encoder, {k: torch.from_numpy(np.asarray(v)) for k, v in feats.items()})
        assert emb.shape == (item["num_tokens"], adapter.config.text_config.hidden_size)
        rows.append((item["modality"], emb))
    # The HF model's own feature path, on the same weights, over all of the request's images at once.
    images = [f for f in outcome.item_features if "pixel_values" in f]
    pixels = torch.from_numpy(np.concatenate([f["pixel_values"] for f in images], axis=-1))
    sizes = torch.from_numpy(np.concatenate([f["target_sizes"] for f in images], axis=0))
    with torch.inference_mode():
        hf = MiniCPMV4_6Model.get_image_features(encoder, pixels, sizes).pooler_output
    ours = torch.cat([emb for m, emb in rows if m == "image"])
    torch.testing.assert_close(torch.cat(hf), ours, atol=1e-5, rtol=1e-5)


def test_check_input_refuses_an_empty_video(mixed: Checked) -> None:
    with pytest.raises(MediaUnsupportedError, match="no frames"):
        mixed.pre.adapter.process("video", np.zeros((0, 180, 320, 3), np.uint8))
