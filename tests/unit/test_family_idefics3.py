"""Idefics3 through the generic adapter (no family code), against its HF processor, on whole requests.

``Idefics3Processor`` turns each ``<image>`` into its tiles: per tile
``<fake_token_around_image><row_r_col_c>`` + 4 x ``<image>``, rows closed by ``"\\n"``, then
``"\\n<fake_token_around_image><global-img>"`` + 4 x ``<image>`` + ``<fake_token_around_image>``.
The request's tiles are packed along axis 1 of ``pixel_values`` / ``pixel_attention_mask``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import conformance as cf

IMG = "<image>"
FAMILY = cf.Family("idefics3", IMG, concat_axis={"pixel_values": 1, "pixel_attention_mask": 1})
TOKENS_PER_TILE = 4


model, media = cf.family_fixtures("idefics3", {
    "wide.jpg": (600, 400),  # 192x128 -> 2 rows x 3 cols
    "tiny.png": (37, 91),  # upscaled: 3 rows x 2 cols
    "odd.jpg": (333, 517),
    "thin.png": (300, 20),  # 1 row x 3 cols
    "square.jpg": (64, 64),
})


@pytest.fixture(scope="module")
def several(model: Path, media: Path) -> cf.Checked:
    """Odd-sized images and a repeat, text and newlines right against every placeholder."""
    line = {"request_id": "several", "prompt": f"1:{IMG}\n2:{IMG}{IMG}\n\n{IMG}x {IMG}\nend",
            "images": ["odd.jpg", "tiny.png", "thin.png", "wide.jpg", "odd.jpg"]}
    return cf.check_request(model, FAMILY, line, media)


def test_one_image_through_the_generic_adapter(model: Path, media: Path) -> None:
    checked = cf.check_request(model, FAMILY, {"request_id": "one", "prompt": f"Describe{IMG}please", "images": ["wide.jpg"]}, media)
    rec = checked.record
    assert checked.pre.adapter.name == "generic" and rec["path"] == "fast"
    (item,) = rec["items"]
    # 2 rows x 3 cols of tiles, then the global view: one run of 4 tokens each.
    assert cf.run_lengths(item) == [TOKENS_PER_TILE] * 7 and item["num_tokens"] == 28
    assert item["feature_shape"] == [1, 7, 3, 64, 64]
    text = checked.pre.adapter.decode(rec["input_ids"])
    assert text.startswith("Describe<fake_token_around_image><row_1_col_1><image>")
    assert "<row_1_col_3><image><image><image><image>\n<fake_token_around_image><row_2_col_1>" in text
    assert "<image>\n\n<fake_token_around_image><global-img>" in text and text.endswith("<fake_token_around_image>please")
    cf.check_legacy_roundtrip(checked)


def test_several_odd_images_and_a_repeat(several: cf.Checked) -> None:
    rec = several.record
    assert rec["path"] == "fast" and [i["index"] for i in rec["items"]] == [0, 1, 2, 3, 4]
    tiles = [i["feature_shape"][1] for i in rec["items"]]
    assert tiles[2] == 4 and tiles[3] == 7 and tiles[0] == tiles[4]  # thin: 1x3 + global; wide: 2x3 + global
    assert several.pre.cache.hits >= 1
    cf.check_legacy_roundtrip(several)


def test_placeholders_side_by_side_and_newlines(model: Path, media: Path) -> None:
    line = {"request_id": "adj", "prompt": f"{IMG}{IMG}\n{IMG}\n\n", "images": ["square.jpg", "tiny.png", "thin.png"]}
    checked = cf.check_request(model, FAMILY, line, media)
    assert checked.record["path"] == "fast"
    cf.check_legacy_roundtrip(checked)
    # Compact ids from the client (skip_tokenizer_init), side by side: the legacy scan expands each.
    line = {**line, "request_id": "adj2", "prompt": f"{IMG}{IMG} x{IMG}\n\n"}
    checked = cf.check_request(model, FAMILY, line, media)
    cf.check_legacy_ids(checked, checked.pre.adapter.tokenize(line["prompt"]), "adj-ids")
    # Side by side and then "\n": "\n" also borders a run inside the expansion (a row's end), so the
    # scan cannot tell compact placeholders from a damaged expansion there and refuses them (400).
    compact = checked.pre.adapter.tokenize(f"{IMG}{IMG}\n{IMG}")
    cf.assert_alignment_error(cf.run_ids(checked, "adj-nl", compact), "expected")


def test_chat_messages(model: Path, media: Path) -> None:
    messages = cf.chat(
        ("user", {"image": "wide.jpg"}, "Compare\n", {"image": "thin.png"}, {"image": "odd.jpg"}),
        ("assistant", "Sure."),
        ("user", "and ", {"image": "tiny.png"}),
    )
    checked, hf_text = cf.check_chat(model, FAMILY, messages, media)
    assert hf_text.startswith(f"<|begin_of_text|>User:{IMG}Compare\n{IMG}{IMG}<end_of_utterance>\n") and hf_text.endswith("Assistant:")
    assert checked.record["path"] == "fast" and len(checked.record["items"]) == 4
    cf.check_legacy_roundtrip(checked)


def test_corrupted_expansions_are_400s_that_say_what_was_expected(several: cf.Checked) -> None:
    cf.check_corruptions(several, ("short_run", "text"))
    # A tile marker of the first image: its <row_1_col_2> becomes <row_2_col_2>.
    tok = several.pre.adapter.tokenizer
    start, length, _ = cf.item_spans(several)[0]
    ids = list(several.hf_ids)
    mark = ids.index(tok.convert_tokens_to_ids("<row_1_col_2>"), start)
    assert mark < start + length
    ids[mark] = tok.convert_tokens_to_ids("<row_2_col_2>")
    cf.assert_alignment_error(cf.run_ids(several, "tile", ids), "expected", "image 0", f"differs at {mark}")


def test_count_mismatches_both_ways_are_400s(several: cf.Checked) -> None:
    messages = cf.check_count_mismatches(several, (IMG * 6, f"{IMG} and {IMG}"))
    assert len(messages) == 4  # each prompt, one placeholder too many as ids, one item too few


def test_encoder_gives_one_row_per_feature_token(several: cf.Checked) -> None:
    encoded = cf.check_encoder_rows(several.pre, several.line)
    # The model's own call on the whole request's packed tiles gives the same rows, in prompt order.
    packed = cf.pack(encoded.outcome.item_features, ["pixel_values", "pixel_attention_mask"], FAMILY.concat_axis)
    rows = cf.check_whole_request_rows(encoded, packed)
    assert rows == sum(i["num_tokens"] for i in encoded.outcome.record["items"])
