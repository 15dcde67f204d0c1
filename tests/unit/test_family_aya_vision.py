"""Aya Vision through the generic adapter (no family code), against its in-tree ``AyaVisionProcessor``.

The prompt's ``<image>`` becomes ``<|START_OF_IMG|>``, per crop tile ``TILE_k`` (plain text) and a
run of ``<|IMG_PATCH|>``, then ``TILE_GLOBAL`` and the thumbnail's run, then ``<|END_OF_IMG|>``.
The feature token (``image_token_index``, ``<|IMG_PATCH|>``) differs from the placeholder, and the
processor's own ``image_token_id`` names the feature token, not ``<image>`` (the generic adapter
takes the placeholder's id from the tokenizer). Tiles are concatenated along the first axis of
``pixel_values``, so per-item processing equals the whole request exactly. Every request is
checked whole by the shared helper (:mod:`tests.conformance`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import conformance as cf

IMG = "<image>"
AYA = cf.Family("aya_vision", IMG)


model, media = cf.family_fixtures("aya_vision", {
    "wide.jpg": (600, 400),  # 4 crop tiles + thumbnail: 20 tokens
    "tall.png": (37, 91),  # 3 + thumbnail: 16
    "odd.jpg": (333, 517),  # 2 + thumbnail: 12
    "one.png": (60, 50, "RGBA"),  # one tile, no crops: TILE_GLOBAL only, 4
    "gray.png": (17, 200, "L"),  # 4 + thumbnail: 20
})


@pytest.fixture(scope="module")
def several(model: Path, media: Path) -> cf.Checked:
    """Odd sizes and tile counts, a repeat, text and newlines right against each placeholder."""
    line = {"request_id": "several", "prompt": f"<|im_start|>user\nA{IMG}\n{IMG}B {IMG}.\n\n{IMG}x\n{IMG}\n",
            "images": ["odd.jpg", "one.png", "wide.jpg", "tall.png", "odd.jpg"]}
    return cf.check_request(model, AYA, line, media)


def test_one_image_tiles_and_thumbnail(model: Path, media: Path) -> None:
    checked = cf.check_request(model, AYA, {"request_id": "one", "prompt": f"Describe{IMG}please", "images": ["wide.jpg"]}, media)
    rec = checked.record
    adapter = checked.pre.adapter
    assert rec["path"] == "fast" and adapter.name == "generic"
    assert adapter.placeholder_tokens == {"image": IMG} and adapter.feature_tokens == {"image": "<|IMG_PATCH|>"}
    (item,) = rec["items"]
    assert cf.run_lengths(item) == [4] * 5 and item["feature_shape"] == [5, 3, 56, 56]
    patches = "<|IMG_PATCH|>" * 4
    assert adapter.decode(rec["input_ids"]) == ("Describe<|START_OF_IMG|>" + "".join(f"TILE_{k}{patches}" for k in range(1, 5))
                                                + f"TILE_GLOBAL{patches}<|END_OF_IMG|>please")
    cf.check_legacy_roundtrip(checked)


def test_several_odd_images(several: cf.Checked) -> None:
    rec = several.record
    assert rec["path"] == "fast"
    assert [i["num_tokens"] for i in rec["items"]] == [12, 4, 20, 16, 12]
    assert [len(i["offsets"]) for i in rec["items"]] == [3, 1, 5, 4, 3]
    assert several.pre.cache.hits >= 1
    cf.check_legacy_roundtrip(several)


def test_placeholders_side_by_side(model: Path, media: Path) -> None:
    """Bracketed expansions: bare placeholders touching each other are told apart, as text and as compact ids."""
    line = {"request_id": "adj", "prompt": f"{IMG}{IMG}{IMG}", "images": ["one.png", "odd.jpg", "one.png"]}
    checked = cf.check_request(model, AYA, line, media)
    records = [*cf.check_legacy_roundtrip(checked), cf.check_legacy_ids(checked, checked.pre.adapter.tokenize(line["prompt"]), "adj-ids")]
    assert all(len(r["items"]) == 3 for r in records)
    assert records[-1]["items"][0]["hash"] == records[-1]["items"][2]["hash"] != records[-1]["items"][1]["hash"]


def test_compact_ids_from_the_client(several: cf.Checked) -> None:
    rec = cf.check_legacy_ids(several, several.pre.adapter.tokenize(several.line["prompt"]), "compact")
    assert len(rec["input_ids"]) > len(several.pre.adapter.tokenize(several.line["prompt"]))  # every item expanded


def test_chat_messages(model: Path, media: Path) -> None:
    messages = cf.chat(
        ("user", "Compare\n", {"image": "odd.jpg"}, {"image": "tall.png"}, " with ", {"image": "one.png"}),
        ("assistant", "Sure."),
        ("user", {"image": "gray.png"}, "and this?"),
    )
    checked, hf_text = cf.check_chat(model, AYA, messages, media)
    assert f"{IMG}{IMG} with {IMG}" in hf_text
    assert checked.record["path"] == "fast" and len(checked.record["items"]) == 4
    cf.check_legacy_roundtrip(checked)


def test_corrupted_expansions_are_400s_that_say_what_was_expected(several: cf.Checked) -> None:
    cf.check_corruptions(several, ("short_run", "text"))  # a tile's run one patch short; the text after the first run (TILE_2)
    # The first image's TILE_GLOBAL turned into <|END_OF_IMG|> (its thumbnail run then looks like text).
    tok = several.pre.adapter.tokenizer
    glob, end = tok.convert_tokens_to_ids(["TILE_GLOBAL", "<|END_OF_IMG|>"])
    ids = list(several.hf_ids)
    ids[ids.index(glob)] = end
    cf.assert_alignment_error(cf.run_ids(several, "global", ids), "expected", "image 0")


def test_count_mismatches_both_ways_are_400s(several: cf.Checked) -> None:
    prompt = several.line["prompt"]
    messages = cf.check_count_mismatches(several, (prompt + IMG, prompt.replace(IMG, "", 1)))
    assert len(messages) == 4  # each prompt, one placeholder too many as ids, one item too few


def test_encoder_gives_one_row_per_feature_token(several: cf.Checked, media: Path) -> None:
    """Per item, one embedding per ``<|IMG_PATCH|>``; the model on the processor's whole ``pixel_values`` gives the same rows."""
    encoded = cf.check_encoder_rows(several.pre, several.line)
    ref = cf.oracle(several.pre.adapter.model_dir, AYA, several.line["prompt"], several.line, media)
    rows = cf.check_whole_request_rows(encoded, {"pixel_values": ref["pixel_values"]})
    assert rows == sum(i["num_tokens"] for i in several.record["items"])
