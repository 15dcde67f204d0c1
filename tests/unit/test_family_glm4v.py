"""GLM-4.1V (``glm4v``) against its HF processor (``Glm4vProcessor``, in tree), on whole requests.

The adapter is the generic one with one override: a video's embedding positions are ``<|image|>``
tokens (``Glm4vModel.get_placeholder_mask``), not the config's ``video_token_id``. An image is one
run of ``<|image|>``; a video ``<|video|>`` becomes, per frame pair, ``<|begin_of_image|>`` run
``<|end_of_image|>`` and the frame's whole second as text. The chat template wraps them as
``<|begin_of_image|><|image|><|end_of_image|>`` / ``<|begin_of_video|><|video|><|end_of_video|>``.

Image and video runs share the ``<|image|>`` token: the legacy scan tells them apart by which
item's full expansion is there, and the text splice reads each item's runs from that token's
positions in prompt order.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests import conformance as cf

IMG = "<|begin_of_image|><|image|><|end_of_image|>"
VID = "<|begin_of_video|><|video|><|end_of_video|>"
BARE_IMG, BARE_VID = "<|image|>", "<|video|>"
FAMILY = cf.Family("glm4v", IMG, VID)
NFRAMES = {"url": "v.mp4", "nframes": 4}  # 3 s at 10 fps: frames [0, 10, 19, 29] -> groups at 0 s and 1.9 s
FPS = {"url": "v.mp4", "fps": 2.0}  # 6 frames -> 3 groups


model, media = cf.family_fixtures("glm4v", cf.USUAL_MEDIA)  # b.png is under the 28-pixel factor: upscaled


@pytest.fixture(scope="module")
def mixed(model: Path, media: Path) -> cf.Checked:
    """Image, video, image in that prompt order, text and newlines right against each placeholder."""
    line = {"request_id": "mixed", "prompt": f"A{IMG}\n{VID}B {IMG}.", "images": ["a.jpg", "b.png"], "videos": [FPS]}
    return cf.check_request(model, FAMILY, line, media)


def _seconds(checked: cf.Checked) -> list[str]:
    return re.findall(r"<\|end_of_image\|>(\d+)", checked.pre.adapter.decode(checked.hf_ids))


def test_adapter_and_tokens(model: Path) -> None:
    from ray_mm.models import load_adapter
    from ray_mm.models.glm4v import Glm4vAdapter

    adapter = load_adapter(model)
    assert isinstance(adapter, Glm4vAdapter) and adapter.name == "glm4v"
    assert adapter.modalities == {"image", "video"}
    assert adapter.placeholder_tokens == {"image": BARE_IMG, "video": BARE_VID}
    assert adapter.feature_tokens == {"image": BARE_IMG, "video": BARE_IMG}
    assert adapter.feature_token_ids["video"] == adapter.config.image_token_id


def test_one_image(model: Path, media: Path) -> None:
    checked = cf.check_request(model, FAMILY, {"request_id": "one", "prompt": f"Describe {IMG}.", "images": ["a.jpg"]}, media)
    (item,) = checked.record["items"]
    assert checked.record["path"] == "fast" and len(item["offsets"]) == 1 and item["grid_thw"][0] == 1
    assert item["num_tokens"] == item["grid_thw"][1] * item["grid_thw"][2] // 4
    cf.check_legacy_roundtrip(checked)


def test_several_images_of_odd_sizes(model: Path, media: Path) -> None:
    checked = cf.check_several_images(model, FAMILY, media)
    assert len(checked.record["items"]) == 4 and all(len(i["offsets"]) == 1 for i in checked.record["items"])


@pytest.mark.parametrize(("entry", "seconds"), [(NFRAMES, ["0", "1"]), (FPS, ["0", "1", "2"])], ids=["nframes", "fps"])
def test_video_alone(model: Path, media: Path, entry: dict[str, Any], seconds: list[str]) -> None:
    line = {"request_id": "vid", "prompt": f"What happens in {VID}?", "videos": [entry]}
    checked = cf.check_request(model, FAMILY, line, media)
    (item,) = checked.record["items"]
    assert checked.record["path"] == "fast" and len(item["offsets"]) == len(seconds)  # one run per frame pair
    assert _seconds(checked) == seconds  # the source fps and the sampled indices, not a 24 fps guess


def test_image_video_image_in_prompt_order(mixed: cf.Checked) -> None:
    rec = mixed.record
    assert rec["path"] == "fast"
    assert [(i["modality"], i["index"]) for i in rec["items"]] == [("image", 0), ("video", 0), ("image", 1)]
    assert len(rec["items"][1]["offsets"]) == 3


def test_legacy_with_images_expanded_and_the_video_compact(mixed: cf.Checked) -> None:
    """HF's ids with the video put back to its compact ``<|video|>`` (images left expanded): legacy
    path, the processor's ids and offsets."""
    start, length, modality = [s for s in cf.item_spans(mixed) if s[2] == "video"][0]
    assert modality == "video"
    ids = mixed.hf_ids[:start] + [mixed.pre.adapter.placeholder_token_ids["video"]] + mixed.hf_ids[start + length :]
    cf.check_legacy_ids(mixed, ids, "vid-compact")


def test_legacy_with_the_video_expanded(model: Path, media: Path, mixed: cf.Checked) -> None:
    """A video's runs are <|image|> tokens: the scan still gives them to the video (its full expansion is there)."""
    checked = cf.check_request(model, FAMILY, {"request_id": "v", "prompt": f"Watch {VID}", "videos": [NFRAMES]}, media)
    records = cf.check_legacy_roundtrip(checked) + cf.check_legacy_roundtrip(mixed)  # mixed: image, video, image
    assert [[i["modality"] for i in r["items"]] for r in records[2:]] == [["image", "video", "image"]] * 2


@pytest.mark.parametrize("prompt", [
    f"\n{IMG}\n{VID}\n",  # newlines right against the wrapped placeholders
    f"x{BARE_IMG}\ny {BARE_IMG}\n",  # bare image placeholders against text
    f"{IMG}\n\n{VID}\n\nend",
    f"Look:{BARE_VID}",  # bare video at the end: its closing second meets nothing
    f"Look:{BARE_VID}5 more",  # bare video, then a digit: text splice (the second may merge with the text)
], ids=["wrapped", "bare-image", "double-newlines", "bare-video-end", "bare-video-digit"])
def test_placeholders_against_text(model: Path, media: Path, prompt: str) -> None:
    n_img = prompt.count(BARE_IMG)
    line = {"request_id": "edge", "prompt": prompt, "images": ["d.png", "b.png"][:n_img],
            "videos": [NFRAMES] if BARE_VID in prompt else []}
    checked = cf.check_request(model, FAMILY, line, media)
    assert checked.record["path"] == "fast"


def test_bare_video_before_text_after_an_image(model: Path, media: Path) -> None:
    """The text splice (a bare video's closing second meets "x"): the video's runs come after the image's
    on the shared token, not on the image's own positions."""
    line = {"request_id": "splice", "prompt": f"{IMG} then {BARE_VID}x {IMG}", "images": ["a.jpg", "d.png"],
            "videos": [NFRAMES]}
    checked = cf.check_request(model, FAMILY, line, media)
    assert [i["modality"] for i in checked.record["items"]] == ["image", "video", "image"]


def test_chat_messages(model: Path, media: Path) -> None:
    messages = cf.chat(
        ("system", "Be brief."),
        ("user", {"image": "c.jpg"}, "and\n", {"video": {"url": "v.mp4", "nframes": 4}}, {"image": "d.png"}),
        ("assistant", "Sure."),
        ("user", "again ", {"image": "b.png"}),
    )
    checked, hf_text = cf.check_chat(model, FAMILY, messages, media)
    assert f"and\n{VID}{IMG}" in hf_text
    assert checked.record["path"] == "fast"
    assert [i["modality"] for i in checked.record["items"]] == ["image", "video", "image", "image"]


def test_corrupted_expansions_are_400s(mixed: cf.Checked, model: Path, media: Path) -> None:
    # The first image one token short: the scan says what it expected.
    assert set(cf.check_corruptions(mixed, ("short_run",))) == {"short_run"}
    # An image's expansion is one bare run, with no text of its own to damage; a video's frame markers
    # and seconds are: a short run, the <|end_of_image|> after its first run, a wrong second.
    video = cf.check_request(model, FAMILY, {"request_id": "v", "prompt": f"Watch {VID}", "videos": [FPS]}, media)
    # The damaged runs are <|image|> tokens that match no item's expansion: the scan reads them as an
    # image placeholder, and with no image in the request says so (a 400 naming the position).
    assert set(cf.check_corruptions(video, ("short_run", "text"), phrases=())) == {"short_run", "text"}
    (first, second, _) = video.record["items"][0]["offsets"]
    tok = video.pre.adapter.tokenizer
    wrong_second = list(video.hf_ids)
    digit = next(p for p in range(second[0] - 1, first[1], -1) if tok.convert_ids_to_tokens(wrong_second[p]).isdigit())
    wrong_second[digit] = tok.convert_tokens_to_ids("7")
    cf.assert_alignment_error(cf.run_ids(video, "bad-video", wrong_second))
    # With images in the request the scan says what it expected at the damaged run.
    start, length, _ = [s for s in cf.item_spans(mixed) if s[2] == "video"][0]
    ids = list(mixed.hf_ids)
    end_of_image = next(p for p in range(start, start + length) if ids[p] == tok.convert_tokens_to_ids("<|end_of_image|>"))
    ids[end_of_image] = tok.convert_tokens_to_ids("<|begin_of_image|>")
    cf.assert_alignment_error(cf.run_ids(mixed, "bad-mixed", ids), "expected")


def test_count_mismatches_both_ways_are_400s(mixed: cf.Checked) -> None:
    prompts = (f"A{IMG}\n{VID}B {IMG}.{IMG}", f"A{IMG}\n{VID}B.", f"A{IMG}{VID}{VID}{IMG}")
    # As ids: the request's compact ids (one placeholder per item), not HF's.
    messages = cf.check_count_mismatches(mixed, prompts, ids=mixed.pre.adapter.tokenize(f"A{IMG}\n{VID}B {IMG}."))
    assert len(messages) == len(prompts) + 2  # each prompt, one placeholder too many as ids, one item too few


def test_encoder_gives_one_row_per_feature_token(mixed: cf.Checked) -> None:
    encoded = cf.check_encoder_rows(mixed.pre, mixed.line)
    assert type(encoded.encoder).__name__ == "Glm4vModel"
