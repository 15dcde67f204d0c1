"""InternVL against its HF processor (``InternVLProcessor``, transformers 5.24, in tree), through the
shared conformance helper, on whole requests.

An image's ``<IMG_CONTEXT>`` becomes ``<img>`` + 4 tokens per tile + ``</img>``; the tiles come from
dynamic tiling by aspect ratio (the tile grid closest to the image's aspect, at most 6 tiles, plus a
thumbnail when there is more than one tile). A video's ``<video>`` becomes ``Frame{i}: <img>...</img>``
lines joined by newlines. ``pixel_values`` holds every image's tiles and every video's frames, in
prompt order (the processor merges the two modalities). Adapter: ``ray_mm.models.internvl``, a thin
subclass of the generic adapter (one pixel array for both modalities, one feature token).

The oracle is called with ``return_tensors="pt"``: ``InternVLProcessor.__call__`` flattens the video
pixels with torch's ``flatten(0, 1)`` and fails on numpy arrays; the helper converts to numpy.

A video's feature token is the image one, so the legacy scan lets one token trigger several
modalities (the item whose full expansion is there wins) and the text splice counts feature
positions per token: the last two tests below pin both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ray_mm.pipeline import Preprocessor
from tests import conformance as cf

IMG, VID = "<IMG_CONTEXT>", "<video>"
INTERNVL = cf.Family("internvl", IMG, VID, call_kwargs={"return_tensors": "pt"})
TOKENS_PER_TILE = 4

model, media = cf.family_fixtures("internvl", {
    "big.jpg": (600, 400),  # aspect 1.5: 3x2 tiles + thumbnail
    "small.jpg": (50, 50),  # 1 tile, no thumbnail
    "square.jpg": (200, 200),  # tie 1x1 / 2x2 -> 2x2 (+ thumbnail)
    "odd.jpg": (333, 517),
    "vga.png": (640, 480),
    "thin.jpg": (90, 300),  # 1x3 tiles + thumbnail
    "clip.mp4": (320, 180, 10, 2.0),
})


@pytest.fixture(scope="module")
def images(model: Path, media: Path) -> cf.Checked:
    """Several odd-sized images and a repeat, text and newlines right against each placeholder."""
    line = {"request_id": "odd", "prompt": f"1:{IMG}\n2:{IMG}3 {IMG}\n\n{IMG}{IMG}then{IMG}",
            "images": ["odd.jpg", "vga.png", "thin.jpg", "big.jpg", "small.jpg", "odd.jpg"]}
    return cf.check_request(model, INTERNVL, line, media)


def _tiles(checked: cf.Checked, name: str, media: Path) -> int:
    """Tiles of one image by the image processor's own count (thumbnail included)."""
    from PIL import Image

    with Image.open(media / name) as im:
        w, h = im.size
    ip = checked.pre.adapter.processor.image_processor
    return ip.get_number_of_image_patches(h, w, {"crop_to_patches": True})


def test_one_tiled_image(model: Path, media: Path) -> None:
    checked = cf.check_request(model, INTERNVL, {"request_id": "big", "prompt": f"Describe{IMG}please", "images": ["big.jpg"]}, media)
    rec = checked.record
    assert rec["path"] == "fast" and checked.pre.adapter.name == "internvl"
    (item,) = rec["items"]
    assert item["num_tokens"] == 7 * TOKENS_PER_TILE and item["feature_shape"] == [7, 3, 56, 56]
    assert cf.run_lengths(item) == [28]
    text = checked.pre.adapter.decode(rec["input_ids"])
    assert text.startswith("Describe<img><IMG_CONTEXT>") and text.endswith("<IMG_CONTEXT></img>please")
    cf.check_legacy_roundtrip(checked)


def test_one_small_image_is_one_tile(model: Path, media: Path) -> None:
    checked = cf.check_request(model, INTERNVL, {"request_id": "small", "prompt": f"{IMG}\nWhat is it?", "images": ["small.jpg"]}, media)
    (item,) = checked.record["items"]
    assert item["num_tokens"] == TOKENS_PER_TILE and item["feature_shape"] == [1, 3, 56, 56]
    cf.check_legacy_roundtrip(checked)


def test_several_odd_images_follow_the_tiling(images: cf.Checked, media: Path) -> None:
    rec = images.record
    assert rec["path"] == "fast" and [i["modality"] for i in rec["items"]] == ["image"] * 6
    names = images.line["images"]
    assert [i["num_tokens"] for i in rec["items"]] == [TOKENS_PER_TILE * _tiles(images, Path(n).name, media) for n in names]
    assert images.pre.cache.hits >= 1  # the repeated image
    cf.check_legacy_roundtrip(images)


def test_aspect_ratio_tie_takes_more_tiles(model: Path, media: Path) -> None:
    checked = cf.check_request(model, INTERNVL, {"request_id": "sq", "prompt": f"x {IMG} y", "images": ["square.jpg"]}, media)
    assert checked.record["items"][0]["feature_shape"][0] == 5  # 2x2 tiles + thumbnail
    cf.check_legacy_roundtrip(checked)


@pytest.mark.parametrize("entry", [{"url": "clip.mp4", "nframes": 4}, {"url": "clip.mp4", "fps": 2.0}], ids=["nframes", "fps"])
def test_video_alone(model: Path, media: Path, entry: dict[str, Any]) -> None:
    # "Frame1: " is plain text right after "Watch:": spliced as text, as the processor does.
    checked = cf.check_request(model, INTERNVL, {"request_id": "vid", "prompt": f"Watch:{VID}\nWhat happens?", "videos": [entry]}, media)
    (item,) = checked.record["items"]
    assert checked.record["path"] == "fast" and item["modality"] == "video"
    assert item["num_tokens"] == 4 * TOKENS_PER_TILE and item["feature_shape"] == [4, 3, 56, 56]
    assert cf.run_lengths(item) == [TOKENS_PER_TILE] * 4
    text = checked.pre.adapter.decode(checked.record["input_ids"])
    assert "Watch:Frame1: <img>" in text and "</img>\nFrame4: <img>" in text and text.endswith("</img>\nWhat happens?")


def test_image_video_image_in_prompt_order(model: Path, media: Path) -> None:
    """The video's frames sit between the two images' tiles in ``pixel_values``. The video touches only
    special tokens here, so its ids are spliced in id space (see the xfail below for plain text)."""
    line = {"request_id": "mixed", "prompt": f"A{IMG}{VID}{IMG}.",
            "images": ["big.jpg", "thin.jpg"], "videos": [{"url": "clip.mp4", "nframes": 4}]}
    checked = cf.check_request(model, INTERNVL, line, media)
    rec = checked.record
    assert rec["path"] == "fast"
    assert [(i["modality"], i["index"]) for i in rec["items"]] == [("image", 0), ("video", 0), ("image", 1)]
    assert [len(i["offsets"]) for i in rec["items"]] == [1, 4, 1]


def test_mixed_order_with_text_around_the_video(model: Path, media: Path) -> None:
    line = {"request_id": "mixed-text", "prompt": f"A{IMG}\n{VID}B {IMG}.",
            "images": ["big.jpg", "thin.jpg"], "videos": [{"url": "clip.mp4", "nframes": 4}]}
    checked = cf.check_request(model, INTERNVL, line, media)
    assert [i["modality"] for i in checked.record["items"]] == ["image", "video", "image"]


def test_video_legacy_roundtrip(model: Path, media: Path) -> None:
    line = {"request_id": "vid", "prompt": f"Watch:{VID}\nok", "videos": [{"url": "clip.mp4", "nframes": 4}]}
    records = cf.check_legacy_roundtrip(cf.check_request(model, INTERNVL, line, media))
    assert [[i["modality"] for i in r["items"]] for r in records] == [["video"], ["video"]]


def test_chat_messages(model: Path, media: Path) -> None:
    messages = cf.chat(
        ("user", "Compare\n", {"image": "big.jpg"}, {"image": "thin.jpg"}, " with this"),
        ("assistant", "Sure."),
        ("user", {"image": "small.jpg"}, "and this?"),
    )
    checked, hf_text = cf.check_chat(model, INTERNVL, messages, media)
    assert f"{IMG}\n{IMG}\n" in hf_text
    assert checked.record["path"] == "fast" and len(checked.record["items"]) == 3
    cf.check_legacy_roundtrip(checked)


def test_chat_messages_with_a_video(model: Path, media: Path) -> None:
    messages = cf.chat(("user", {"video": {"url": "clip.mp4", "nframes": 4}}, "What happens?"))
    checked, hf_text = cf.check_chat(model, INTERNVL, messages, media, "chat-v")
    assert [i["modality"] for i in checked.record["items"]] == ["video"]


def test_corrupted_expansions_are_400s_that_say_what_was_expected(images: cf.Checked) -> None:
    cf.check_corruptions(images, ("short_run", "text"))  # "text": the first image's </img> is damaged
    # The first image's <img> dropped.
    (s, _), = images.record["items"][0]["offsets"]
    cf.assert_alignment_error(cf.run_ids(images, "no-start", images.hf_ids[: s - 1] + images.hf_ids[s:]), "expected")


def test_count_mismatches_both_ways_are_400s(images: cf.Checked) -> None:
    prompt = images.line["prompt"]
    messages = cf.check_count_mismatches(images, (prompt + IMG, prompt.removesuffix(IMG)))
    assert len(messages) == 4  # each prompt, one placeholder too many as ids, one item too few


def test_encoder_gives_one_row_per_feature_token(model: Path, media: Path) -> None:
    line = {"request_id": "enc", "prompt": f"A{IMG}{VID}{IMG}", "images": [str(media / "big.jpg"), str(media / "small.jpg")],
            "videos": [{"url": str(media / "clip.mp4"), "nframes": 2}]}
    encoded = cf.check_encoder_rows(Preprocessor(model, cf.config_for(media)), line)
    # The model's own feature path on the request's whole pixel_values (video frames included), same weights.
    rows = cf.check_whole_request_rows(encoded, cf.pack(encoded.outcome.item_features, ["pixel_values"]))
    assert rows == sum(i["num_tokens"] for i in encoded.outcome.record["items"])
