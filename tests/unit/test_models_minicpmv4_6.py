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
from tests import conformance as cf

IMG, VID = "<|image_pad|>", "<|video_pad|>"
MINICPM = cf.Family("minicpmv4_6", IMG, VID, concat_axis={"pixel_values": -1, "pixel_values_videos": -1})


model, media = cf.family_fixtures("minicpmv4_6", {
    "big.jpg": (600, 400),  # 2x3 slices
    "small.jpg": (200, 200),  # no slices, upscaled to 224²
    "odd.jpg": (333, 517),
    "vga.png": (640, 480),
    "thin.jpg": (90, 300),
    "clip.mp4": (320, 180, 10, 2.0),  # frames sliced 1x2
})


@pytest.fixture(scope="module")
def mixed(model: Path, media: Path) -> cf.Checked:
    """Image, video, image in that prompt order, text and newlines right against each placeholder."""
    line = {"request_id": "mixed", "prompt": f"<|im_start|>user\nA{IMG}\n{VID}B {IMG}.<|im_end|>",
            "images": ["big.jpg", "small.jpg"], "videos": [{"url": "clip.mp4", "nframes": 4}]}
    return cf.check_request(model, MINICPM, line, media)


def _tokens(checked: cf.Checked, *names: str) -> list[int]:
    tok = checked.pre.adapter.tokenizer
    return [int(tok.convert_tokens_to_ids(n)) for n in names]


def test_one_sliced_image(model: Path, media: Path) -> None:
    checked = cf.check_request(model, MINICPM, {"request_id": "big", "prompt": f"Describe{IMG}please", "images": ["big.jpg"]}, media)
    rec = checked.record
    assert rec["path"] == "fast" and checked.pre.adapter.name == "minicpmv4_6"
    (item,) = rec["items"]
    # Overview (15 tokens) then 2 rows of 3 slices (16 each), each run its own offsets range.
    assert cf.run_lengths(item) == [15] + [16] * 6
    assert item["num_tokens"] == 111 and item["grid_thw"] is None
    text = checked.pre.adapter.decode(rec["input_ids"])
    assert "Describe<image_id>0</image_id><image>" in text and "</slice>\n<slice>" in text and text.endswith("</slice>please")
    cf.check_legacy_roundtrip(checked)


def test_one_small_image(model: Path, media: Path) -> None:
    checked = cf.check_request(model, MINICPM, {"request_id": "small", "prompt": f"{IMG}\nWhat is it?", "images": ["small.jpg"]}, media)
    (item,) = checked.record["items"]
    assert checked.record["path"] == "fast"
    assert cf.run_lengths(item) == [16]
    cf.check_legacy_roundtrip(checked)


def test_several_odd_images_and_a_repeat(model: Path, media: Path) -> None:
    # The repeated image is a content-hash cache hit inside the request: its id prefix must still be its own.
    line = {"request_id": "odd", "prompt": f"1:{IMG}\n2:{IMG}3 {IMG}\n\n{IMG}{VID}then{IMG}",
            "images": ["odd.jpg", "vga.png", "thin.jpg", "big.jpg", "odd.jpg"], "videos": [{"url": "clip.mp4", "fps": 2.0}]}
    checked = cf.check_request(model, MINICPM, line, media)
    assert checked.record["path"] == "fast"
    assert [i["modality"] for i in checked.record["items"]] == ["image"] * 4 + ["video", "image"]
    text = checked.pre.adapter.decode(checked.record["input_ids"])
    assert [text.count(f"<image_id>{k}</image_id>") for k in range(5)] == [2, 1, 1, 1, 1]  # videos restart at 0
    assert checked.pre.cache.hits >= 1
    cf.check_legacy_roundtrip(checked)


def test_image_video_image_in_prompt_order(mixed: cf.Checked) -> None:
    rec = mixed.record
    assert rec["path"] == "fast"
    assert [(i["modality"], i["index"]) for i in rec["items"]] == [("image", 0), ("video", 0), ("image", 1)]
    video = rec["items"][1]
    # 4 frames, each an overview (15 tokens) and 1x2 slices of 16, blocks wrapped in <image>.
    assert cf.run_lengths(video) == [15, 16, 16] * 4
    assert video["feature_shape"][:3] == [1, 3, 14]
    cf.check_legacy_roundtrip(mixed)


@pytest.mark.parametrize("entry", [{"url": "clip.mp4", "nframes": 4}, {"url": "clip.mp4", "fps": 2.0}], ids=["nframes", "fps"])
def test_video_alone(model: Path, media: Path, entry: dict) -> None:  # type: ignore[type-arg]
    checked = cf.check_request(model, MINICPM, {"request_id": "vid", "prompt": f"Watch:{VID}\nWhat happens?", "videos": [entry]}, media)
    (item,) = checked.record["items"]
    assert checked.record["path"] == "fast" and item["num_tokens"] == 4 * 47
    text = checked.pre.adapter.decode(checked.record["input_ids"])
    assert text.count("<image_id>0</image_id><image><|video_pad|>") == 1 and text.count("<image><|video_pad|>") == 4
    cf.check_legacy_roundtrip(checked)


def test_placeholders_side_by_side(model: Path, media: Path) -> None:
    """Bare placeholders touch each other (what the chat template renders for consecutive media parts)."""
    line = {"request_id": "adj", "prompt": f"{IMG}{IMG}{VID}{IMG}",
            "images": ["small.jpg", "big.jpg", "thin.jpg"], "videos": [{"url": "clip.mp4", "nframes": 4}]}
    checked = cf.check_request(model, MINICPM, line, media)
    assert checked.record["path"] == "fast"
    cf.check_legacy_roundtrip(checked)
    # Compact ids from the client (skip_tokenizer_init), side by side: the legacy scan expands each.
    cf.check_legacy_ids(checked, checked.pre.adapter.tokenize(line["prompt"]), "adj-ids")


def test_image_ids_off(model: Path, media: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``use_image_id=False`` (a processor call kwarg): no ``<image_id>k</image_id>`` prefixes."""
    from ray_mm.models.minicpmv4_6 import MiniCPMV4_6Adapter

    monkeypatch.setattr(MiniCPMV4_6Adapter, "use_image_id", property(lambda self: False))
    family = cf.Family("minicpmv4_6", IMG, VID, concat_axis=MINICPM.concat_axis, call_kwargs={"use_image_id": False})
    line = {"request_id": "noid", "prompt": f"{IMG}{VID}x", "images": ["small.jpg"], "videos": [{"url": "clip.mp4", "nframes": 4}]}
    checked = cf.check_request(model, family, line, media)
    assert "<image_id>" not in checked.pre.adapter.decode(checked.record["input_ids"])
    cf.check_legacy_roundtrip(checked)


def test_chat_messages(model: Path, media: Path) -> None:
    messages = cf.chat(
        ("user", "Compare\n", {"image": "big.jpg"}, {"image": "thin.jpg"}, " with ", {"video": {"url": "clip.mp4", "nframes": 4}}),
        ("assistant", "Sure."),
        ("user", {"image": "small.jpg"}, "and this?"),
    )
    checked, hf_text = cf.check_chat(model, MINICPM, messages, media)
    assert f"{IMG}{IMG}" in hf_text
    assert checked.record["path"] == "fast"
    assert [i["modality"] for i in checked.record["items"]] == ["image", "image", "video", "image"]


def test_corrupted_expansions_are_400s_that_say_what_was_expected(mixed: cf.Checked) -> None:
    cf.check_corruptions(mixed, ("short_run", "text"))
    # A slice marker of the first (sliced) image: its third <slice> becomes </slice>.
    start, length, modality = cf.item_spans(mixed)[0]
    assert modality == "image"
    slice_start, slice_end = _tokens(mixed, "<slice>", "</slice>")
    ids = list(mixed.hf_ids)
    marks = [p for p in range(start, start + length) if ids[p] == slice_start]
    assert len(marks) == 6
    ids[marks[2]] = slice_end
    cf.assert_alignment_error(cf.run_ids(mixed, "slice", ids), "expected", "image 0", f"differs at {marks[2]}")
    # A wrong image id (the prefix is part of the expansion the scan checks).
    ids = list(mixed.hf_ids)
    zero = ids.index(mixed.pre.adapter.tokenize("0")[0], start)
    ids[zero] = mixed.pre.adapter.tokenize("7")[0]
    cf.assert_alignment_error(cf.run_ids(mixed, "id", ids), "expected")


def test_count_mismatches_both_ways_are_400s(mixed: cf.Checked) -> None:
    # Prompts: one image placeholder too many, and one too few; ids: HF's ids plus one compact
    # placeholder, and HF's ids for a request that lost its last image.
    messages = cf.check_count_mismatches(mixed, (f"A{IMG}\n{VID}B {IMG}.{IMG}", f"A{IMG}\n{VID}B."))
    assert len(messages) == 4  # each prompt, one placeholder too many as ids, one item too few


def test_encoder_gives_one_row_per_feature_token(mixed: cf.Checked) -> None:
    from transformers.models.minicpmv4_6.modeling_minicpmv4_6 import MiniCPMV4_6Model

    encoded = cf.check_encoder_rows(mixed.pre, mixed.line)
    # The HF model's own feature path, on the same weights, over all of the request's images at once.
    images = cf.pack(encoded.outcome.item_features, ["pixel_values", "target_sizes"], MINICPM.concat_axis)
    rows = cf.check_whole_request_rows(encoded, images, method=MiniCPMV4_6Model.get_image_features, modality="image")
    assert rows == sum(i["num_tokens"] for i in encoded.outcome.record["items"] if i["modality"] == "image")


def test_check_input_refuses_an_empty_video(mixed: cf.Checked) -> None:
    with pytest.raises(MediaUnsupportedError, match="no frames"):
        mixed.pre.adapter.process("video", np.zeros((0, 180, 320, 3), np.uint8))
