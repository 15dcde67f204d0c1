"""LLaVA-1.5 against its HF processor (``LlavaProcessor``, transformers 5.24, in tree), through the
shared conformance helper, on whole requests. No family code: the generic adapter serves it.

An image's ``<image>`` becomes a bare run of ``<image>`` x 16 (a 56-pixel center crop, CLIP patch 14,
plus CLS, minus CLS for the ``default`` feature strategy); every image has the same size after
resize and crop, whatever its aspect. The expansion has no text of its own, so the only damage an
expansion can take is a wrong run length.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import conformance as cf

IMG = "<image>"
LLAVA = cf.Family("llava", IMG)
TOKENS = 16


model, media = cf.family_fixtures("llava", {
    "big.jpg": (600, 400),
    "tiny.png": (37, 91),  # upscaled before the crop
    "odd.jpg": (333, 517),
    "vga.png": (640, 480),
    "thin.jpg": (90, 300),
})


@pytest.fixture(scope="module")
def several(model: Path, media: Path) -> cf.Checked:
    """Odd-sized images and a repeat, text and newlines right against each placeholder."""
    line = {"request_id": "odd", "prompt": f"1:{IMG}\n2:{IMG}3 {IMG}\n\n{IMG}\nthen{IMG}.",
            "images": ["odd.jpg", "vga.png", "tiny.png", "thin.jpg", "odd.jpg"]}
    return cf.check_request(model, LLAVA, line, media)


def test_generic_adapter_serves_it(model: Path) -> None:
    from ray_mm.models import load_adapter
    from ray_mm.models.generic import GenericAdapter

    adapter = load_adapter(str(model))
    assert type(adapter) is GenericAdapter and adapter.modalities == {"image"}
    assert adapter.placeholder_tokens == adapter.feature_tokens == {"image": IMG}
    assert adapter.feature_token_ids["image"] == adapter.config.image_token_index


def test_one_image(model: Path, media: Path) -> None:
    checked = cf.check_request(model, LLAVA, {"request_id": "one", "prompt": f"Describe{IMG}please", "images": ["big.jpg"]}, media)
    rec = checked.record
    assert rec["path"] == "fast"
    (item,) = rec["items"]
    assert item["num_tokens"] == TOKENS and item["offsets"] == [[1, TOKENS]] and item["feature_shape"] == [1, 3, 56, 56]
    cf.check_legacy_roundtrip(checked)


def test_several_odd_images_and_a_repeat(several: cf.Checked) -> None:
    rec = several.record
    assert rec["path"] == "fast" and [i["num_tokens"] for i in rec["items"]] == [TOKENS] * 5
    assert several.pre.cache.hits >= 1
    cf.check_legacy_roundtrip(several)


def test_newlines_right_against_the_placeholder(model: Path, media: Path) -> None:
    line = {"request_id": "nl", "prompt": f"\n\n{IMG}\n\n{IMG}\n", "images": ["thin.jpg", "tiny.png"]}
    records = cf.check_legacy_roundtrip(cf.check_request(model, LLAVA, line, media))
    assert [len(r["items"]) for r in records] == [2, 2]


def test_placeholders_side_by_side(model: Path, media: Path) -> None:
    """In a text prompt every placeholder is one item's, as the processor reads text: <image><image> is two."""
    checked = cf.check_request(model, LLAVA, {"request_id": "adj", "prompt": f"A{IMG}{IMG}", "images": ["big.jpg", "thin.jpg"]}, media)
    assert checked.record["path"] == "fast" and [i["index"] for i in checked.record["items"]] == [0, 1]


def test_chat_messages(model: Path, media: Path) -> None:
    messages = cf.chat(
        ("user", "Compare\n", {"image": "big.jpg"}, {"image": "thin.jpg"}, " with this"),
        ("assistant", "Sure."),
        ("user", {"image": "tiny.png"}, "and this?"),
    )
    checked, hf_text = cf.check_chat(model, LLAVA, messages, media)
    assert f"{IMG}\n{IMG}\n" in hf_text
    assert checked.record["path"] == "fast" and len(checked.record["items"]) == 3
    cf.check_legacy_roundtrip(checked)


def test_corrupted_expansions_are_400s_that_say_what_was_expected(several: cf.Checked) -> None:
    assert set(cf.check_corruptions(several, ("short_run",))) == {"short_run"}
    # "text" damage does not apply (no text in the expansion); a run one token too long instead.
    messages = cf.check_corruptions(several, ("long_run",), ("expected", f"found a run of {TOKENS + 1}"))
    assert f"found a run of {TOKENS + 1}" in messages["long_run"]


def test_count_mismatches_both_ways_are_400s(several: cf.Checked) -> None:
    image_id = several.pre.adapter.placeholder_token_ids["image"]
    prompt = several.line["prompt"]
    messages = cf.check_count_mismatches(several, (prompt + IMG, prompt.replace(f"then{IMG}", "then")), extra=[1, image_id])
    assert len(messages) == 4  # each prompt, placeholders too many as ids, one item too few


def test_encoder_gives_one_row_per_feature_token(several: cf.Checked) -> None:
    encoded = cf.check_encoder_rows(several.pre, several.line)
    # The model's own feature path on the request's whole pixel_values, same weights.
    rows = cf.check_whole_request_rows(encoded, cf.pack(encoded.outcome.item_features, ["pixel_values"]))
    assert rows == sum(i["num_tokens"] for i in encoded.outcome.record["items"])
