"""SmolVLM (the generic adapter plus a thin ``smolvlm`` override) against its HF processor, on whole requests.

Images expand like Idefics3's (tiles, then the global view); a ``<video>`` becomes plain text around
one single-view block per frame, ``"\\nFrame from MM:SS:"`` before each, and the frames' embedding
positions are ``<image>`` tokens too. Two things the processor does to a whole request that ray-mm,
processing items one by one, does not copy:

- ``pixel_values`` of several videos are zero-padded to the longest video's frame count, and
  ``replace_video_token`` then reads the *padded* count: a shorter video's text names the longest
  one's frame count. ray-mm keeps each video's own frames and count (the model drops all-zero
  frames anyway); videos of one length are checked for parity, others for that one difference;
- with images *and* videos in one request, ``ProcessorMixin.__call__`` merges the image and video
  outputs into one dict, and both are named ``pixel_values``: the videos' overwrite the images', so
  the processor's whole-request arrays lose every image. ray-mm keeps both per item; such requests
  are checked for ids and offsets against the whole-request call, and for arrays against the
  processor called on the images alone and on the videos alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("num2words", reason="SmolVLMProcessor needs the num2words package")

from tests import conformance as cf  # noqa: E402

IMG, VID = "<image>", "<video>"
PIXELS = frozenset({"pixel_values", "pixel_attention_mask"})
IMAGES = cf.Family("smolvlm", IMG, VID, concat_axis={"pixel_values": 1, "pixel_attention_mask": 1})
VIDEOS = cf.Family("smolvlm", IMG, VID)  # one row of axis 0 per video (videos of one length: no padding)
MIXED = cf.Family("smolvlm", IMG, VID, skip_outputs=PIXELS)  # the processor's arrays lose the images (see above)
TOKENS_PER_TILE = 4
# 3 s at 10 fps. nframes 4 -> frames [0, 10, 19, 29] at 0, 1, 1.9, 2.9 s; fps 2 -> 6 frames.
CLIP4 = {"url": "clip.mp4", "nframes": 4}
CLIP_FPS = {"url": "clip.mp4", "fps": 2.0}


model, media = cf.family_fixtures("smolvlm", {
    "wide.jpg": (600, 400),  # 2 rows x 3 cols + global
    "tiny.png": (37, 91),
    "odd.jpg": (333, 517),
    "thin.png": (300, 20),
    "clip.mp4": (320, 180, 10, 3.0),
    "short.mp4": (160, 120, 5, 1.0, 7),
})


@pytest.fixture(scope="module")
def images(model: Path, media: Path) -> cf.Checked:
    line = {"request_id": "images", "prompt": f"1:{IMG}\n2:{IMG}{IMG}\n\n{IMG} x{IMG}\nend",
            "images": ["odd.jpg", "tiny.png", "thin.png", "wide.jpg", "odd.jpg"]}
    return cf.check_request(model, IMAGES, line, media)


@pytest.fixture(scope="module")
def video(model: Path, media: Path) -> cf.Checked:
    return cf.check_request(model, VIDEOS, {"request_id": "video", "prompt": f"Watch {VID}then say", "videos": [CLIP4]}, media)


def _check_mixed_arrays(checked: cf.Checked, model: Path, media: Path) -> None:
    """Image items' arrays equal the processor's on the images alone; video items' on the videos alone."""
    outcome = checked.pre.run({**checked.line, "request_id": "arrays"})
    entries = cf.media_entries(checked.line)
    for modality, family, key in (("image", IMAGES, "images"), ("video", VIDEOS, "videos")):
        feats = [f for i, f in zip(outcome.record["items"], outcome.item_features) if i["modality"] == modality]
        placeholder = IMG if modality == "image" else VID
        ref = cf.oracle(model, family, placeholder * len(entries[key]), {key: [_relative(e, media) for e in entries[key]]}, media)
        for name in PIXELS:
            axis = family.concat_axis.get(name, 0)
            np.testing.assert_allclose(np.concatenate([f[name] for f in feats], axis=axis), ref[name], atol=1e-5, rtol=0)


def _relative(entry: Any, media: Path) -> Any:
    if isinstance(entry, dict):
        return {**entry, "url": str(Path(entry["url"]).relative_to(media))}
    return str(Path(entry).relative_to(media))


# ---------------------------------------------------------------------------------------------- images


def test_one_image(model: Path, media: Path) -> None:
    checked = cf.check_request(model, IMAGES, {"request_id": "one", "prompt": f"Describe{IMG}please", "images": ["wide.jpg"]}, media)
    rec = checked.record
    assert checked.pre.adapter.name == "smolvlm" and rec["path"] == "fast"
    (item,) = rec["items"]
    assert cf.run_lengths(item) == [TOKENS_PER_TILE] * 7 and item["feature_shape"] == [1, 7, 3, 64, 64]
    text = checked.pre.adapter.decode(rec["input_ids"])
    assert "<image>\n\n<fake_token_around_image><global-img>" in text and text.endswith("<fake_token_around_image>please")
    cf.check_legacy_roundtrip(checked)


def test_several_odd_images_and_a_repeat(images: cf.Checked) -> None:
    assert images.record["path"] == "fast" and len(images.record["items"]) == 5
    assert images.pre.cache.hits >= 1
    cf.check_legacy_roundtrip(images)


# ---------------------------------------------------------------------------------------------- videos


def test_video_next_to_text(video: cf.Checked) -> None:
    """The expansion opens and closes with plain text next to the prompt's: the text splice gives the processor's ids."""
    (item,) = video.record["items"]
    assert cf.run_lengths(item) == [TOKENS_PER_TILE] * 4 and item["feature_shape"] == [1, 4, 3, 64, 64]
    text = video.pre.adapter.decode(video.record["input_ids"])
    assert text.startswith("Watch You are provided the following series of four frames from a 0:00:03 [H:MM:SS] video.\n")
    assert [text.count(f"Frame from 00:0{s}:<fake_token_around_image><global-img>") for s in range(3)] == [1, 2, 1]
    assert text.endswith("<fake_token_around_image>\n\nthen say")
    # HF's ids with the video fully expanded: its frames' <image> tokens are read as the video's, not an image's.
    cf.check_legacy_roundtrip(video)


@pytest.mark.parametrize("entry", [CLIP4, CLIP_FPS], ids=["nframes", "fps"])
def test_video_between_special_tokens(model: Path, media: Path, entry: dict[str, Any]) -> None:
    line = {"request_id": "vid", "prompt": f"<|im_start|>User:{VID}<end_of_utterance>\nAssistant:", "videos": [entry]}
    checked = cf.check_request(model, VIDEOS, line, media)
    assert checked.record["path"] == "fast"
    # The client's ids with the video compact: the legacy scan expands it.
    cf.check_legacy_ids(checked, checked.pre.adapter.tokenize(line["prompt"]))


def test_two_videos(model: Path, media: Path) -> None:
    line = {"request_id": "two", "prompt": f"A{VID}\n{VID}\nB", "videos": [CLIP4, {"url": "short.mp4", "nframes": 4}]}
    checked = cf.check_request(model, VIDEOS, line, media)
    assert [i["feature_shape"][1] for i in checked.record["items"]] == [4, 4]


def test_two_videos_of_different_lengths_keep_their_own_frame_counts(model: Path, media: Path, video: cf.Checked) -> None:
    """The processor pads a request's videos to the longest one's frame count, and its
    ``replace_video_token`` reads that padded count: the shorter video's text says "six frames"
    before four frame blocks. ray-mm processes each video alone and says "four"; the arrays are the
    processor's, less the padding frames (which the model drops as all-zero images)."""
    line = {"request_id": "two", "prompt": f"A{VID}\n{VID}\nB", "videos": [CLIP_FPS, {"url": "short.mp4", "nframes": 4}]}
    ref = cf.oracle(model, VIDEOS, line["prompt"], line, media)
    videos = [{**e, "url": str(media / e["url"])} for e in line["videos"]]
    rec = cf.rerun(video, "two", prompt=line["prompt"], videos=videos)
    assert rec["ok"] and [i["feature_shape"][1] for i in rec["items"]] == [6, 4]
    ours, theirs = video.pre.adapter.decode(rec["input_ids"]), video.pre.adapter.decode(ref["input_ids"][0].tolist())
    assert ours.count("series of six frames") == 1 and ours.count("series of four frames") == 1
    assert theirs.count("series of six frames") == 2 and ref["pixel_values"].shape[:2] == (2, 6)
    assert ours.replace("series of four frames", "series of six frames") == theirs


# ---------------------------------------------------------------------------------------------- mixed


def test_image_video_image_in_prompt_order(model: Path, media: Path) -> None:
    """The video between special tokens (no text splice): ids and offsets equal the whole-request call."""
    line = {"request_id": "mixed", "prompt": f"<|im_start|>A{IMG}\n<end_of_utterance>{VID}<end_of_utterance>B {IMG}.",
            "images": ["wide.jpg", "thin.png"], "videos": [CLIP4]}
    checked = cf.check_request(model, MIXED, line, media)
    rec = checked.record
    assert rec["path"] == "fast"
    assert [(i["modality"], i["index"]) for i in rec["items"]] == [("image", 0), ("video", 0), ("image", 1)]
    _check_mixed_arrays(checked, model, media)
    # The client's ids with the video compact and the images expanded: the legacy scan places all three.
    start, length, modality = cf.item_spans(checked)[1]
    assert modality == "video"
    ids = checked.hf_ids[:start] + [checked.pre.adapter.placeholder_token_ids["video"]] + checked.hf_ids[start + length:]
    cf.check_legacy_ids(checked, ids)
    cf.check_legacy_roundtrip(checked)


def test_image_and_video_next_to_text(model: Path, media: Path) -> None:
    """The video next to plain text (text splice): the images and the video share the <image> token,
    and each takes its own positions in prompt order."""
    line = {"request_id": "mixed-text", "prompt": f"A{IMG}B {VID} C{IMG}\n", "images": ["wide.jpg", "thin.png"],
            "videos": [CLIP_FPS]}
    checked = cf.check_request(model, MIXED, line, media)
    assert [i["modality"] for i in checked.record["items"]] == ["image", "video", "image"]
    _check_mixed_arrays(checked, model, media)
    cf.check_legacy_roundtrip(checked)


# ---------------------------------------------------------------------------------------------- chat


def test_chat_messages_with_images(model: Path, media: Path) -> None:
    messages = cf.chat(
        ("user", {"image": "wide.jpg"}, "Compare\n", {"image": "thin.png"}, {"image": "odd.jpg"}),
        ("assistant", "Sure."),
        ("user", "and ", {"image": "tiny.png"}),
    )
    checked, hf_text = cf.check_chat(model, IMAGES, messages, media)
    assert hf_text.startswith(f"<|im_start|>User:{IMG}Compare\n{IMG}{IMG}<end_of_utterance>\n") and hf_text.endswith("Assistant:")
    assert checked.record["path"] == "fast" and len(checked.record["items"]) == 4
    cf.check_legacy_roundtrip(checked)


def test_chat_messages_with_a_video_and_images(model: Path, media: Path) -> None:
    messages = cf.chat(("user", {"video": CLIP4}, "What happens?"), ("assistant", "A clip."), ("user", {"image": "wide.jpg"}, "And here?"))
    checked, hf_text = cf.check_chat(model, MIXED, messages, media, "chat-video")
    assert hf_text.startswith(f"<|im_start|>User: {VID}What happens?<end_of_utterance>\n") and f"User:{IMG}And" in hf_text
    assert checked.record["path"] == "fast" and [i["modality"] for i in checked.record["items"]] == ["video", "image"]
    _check_mixed_arrays(checked, model, media)
    cf.check_legacy_roundtrip(checked)


# ---------------------------------------------------------------------------------------------- errors


def test_corrupted_expansions_are_400s_that_say_what_was_expected(images: cf.Checked) -> None:
    assert set(cf.check_corruptions(images, ("short_run", "text"))) == {"short_run", "text"}


def test_corrupted_video_expansions_are_400s(video: cf.Checked) -> None:
    # The damaged frame's <image> tokens match no item's full expansion, so the scan takes them for an
    # image's (the token's own modality first): the message names a surplus image placeholder, not the video.
    assert set(cf.check_corruptions(video, ("short_run", "text"), phrases=())) == {"short_run", "text"}


def test_count_mismatches_both_ways_are_400s(images: cf.Checked, video: cf.Checked) -> None:
    assert len(cf.check_count_mismatches(images, (IMG * 6, f"{IMG} and {IMG}"))) == 4
    # Videos: a second placeholder with one video, and none.
    for prompt in (f"{VID}{VID}", "no video here"):
        cf.assert_alignment_error(cf.rerun(video, "video-count", prompt=prompt))


# ---------------------------------------------------------------------------------------------- encoder


def test_encoder_gives_one_row_per_feature_token(model: Path, media: Path) -> None:
    line = {"request_id": "enc", "prompt": f"<|im_start|>{IMG}<end_of_utterance>{VID}<end_of_utterance>",
            "images": ["wide.jpg"], "videos": [CLIP4]}
    checked = cf.check_request(model, MIXED, line, media)
    encoded = cf.check_encoder_rows(checked.pre, checked.line)
    # The model's own call on the request's tiles and frames packed in prompt order gives the same rows.
    rows = cf.check_whole_request_rows(encoded, cf.pack(encoded.outcome.item_features, sorted(PIXELS), IMAGES.concat_axis))
    assert rows == sum(i["num_tokens"] for i in encoded.outcome.record["items"])
