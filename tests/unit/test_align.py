"""Alignment without a model: fast path, legacy scan, frame expansion, offsets, errors."""

from __future__ import annotations

import pytest

from ray_mm.align import SpliceRequired, align, align_by_text, find_runs
from ray_mm.errors import AlignmentError
from ray_mm.types import Expansion, ItemMeta

IMG, VID, AUD = 900, 901, 902
PH = {"image": IMG, "video": VID, "audio": AUD}


def meta(modality: str, index: int, n: int) -> ItemMeta:
    return ItemMeta(modality, index, n, None, f"{index + 1:064x}", [n, 4], "float32")  # type: ignore[arg-type]


def test_find_runs_at_both_ends_without_wraparound() -> None:
    ids = [7, 7, 1, 2, 7, 3, 7, 7, 7]
    assert find_runs(ids, 7) == [(0, 1), (4, 4), (6, 8)]
    assert find_runs([7] * 5, 7) == [(0, 4)]
    assert find_runs([1, 2], 7) == []


def test_fast_path_expands_in_place_with_offsets() -> None:
    ids = [1, 2, IMG, 3, VID, 4, IMG]
    items = {"image": [meta("image", 0, 3), meta("image", 1, 2)], "video": [meta("video", 0, 4)]}
    out = align(ids, PH, items, request_id="r")
    assert out.path == "fast"
    assert out.input_ids == [1, 2, IMG, IMG, IMG, 3, VID, VID, VID, VID, 4, IMG, IMG]
    # Prompt order across modalities: image0, video0, image1.
    assert [(i.meta.modality, i.meta.index) for i in out.items] == [("image", 0), ("video", 0), ("image", 1)]
    assert [i.offsets for i in out.items] == [[(2, 4)], [(6, 9)], [(11, 12)]]


def test_offsets_of_runs_at_start_and_end() -> None:
    ids = [IMG, 5, 6, IMG]
    out = align(ids, PH, {"image": [meta("image", 0, 3), meta("image", 1, 2)]})
    assert out.input_ids == [IMG, IMG, IMG, 5, 6, IMG, IMG]
    assert [i.offsets for i in out.items] == [[(0, 2)], [(5, 6)]]


def test_legacy_keeps_already_expanded_ids_unchanged() -> None:
    expanded = [1, IMG, IMG, IMG, 2, AUD, AUD, 3]
    items = {"image": [meta("image", 0, 3)], "audio": [meta("audio", 0, 2)]}
    out = align(expanded, PH, items, skip_tokenizer_init=True)
    assert out.path == "legacy"
    assert out.input_ids == expanded
    assert [i.offsets for i in out.items] == [[(1, 3)], [(5, 6)]]


def test_legacy_matches_fast_offsets_on_processor_expanded_ids() -> None:
    compact = [9, IMG, 8, IMG, 7]
    items = {"image": [meta("image", 0, 4), meta("image", 1, 2)]}
    fast = align(compact, PH, items)
    legacy = align(fast.input_ids, PH, items, skip_tokenizer_init=True)
    assert legacy.input_ids == fast.input_ids
    assert [i.offsets for i in legacy.items] == [i.offsets for i in fast.items]


def test_legacy_mixed_expanded_and_unexpanded_runs() -> None:
    ids = [1, IMG, IMG, IMG, 2, IMG, 3]
    items = {"image": [meta("image", 0, 3), meta("image", 1, 2)]}
    out = align(ids, PH, items, skip_tokenizer_init=True)
    assert out.input_ids == [1, IMG, IMG, IMG, 2, IMG, IMG, 3]
    assert [i.offsets for i in out.items] == [[(1, 3)], [(5, 6)]]


def test_legacy_run_of_wrong_length_names_item_and_counts() -> None:
    ids = [1, IMG, IMG, IMG, IMG, IMG, 2]
    with pytest.raises(AlignmentError) as err:
        align(ids, PH, {"image": [meta("image", 0, 3)]}, request_id="r9", skip_tokenizer_init=True)
    msg = str(err.value)
    assert "image 0" in msg and "r9" in msg and "5" in msg and "3" in msg
    assert err.value.status == 400


def test_expanded_run_without_skip_flag_goes_legacy() -> None:
    # Counts differ (one run of 3 tokens read as 3 placeholders), so dispatch picks legacy and keeps it.
    ids = [IMG, IMG, IMG, 4]
    out = align(ids, PH, {"image": [meta("image", 0, 3)]})
    assert out.path == "legacy" and out.input_ids == ids


def test_dynamic_frame_expansion_maps_frames_in_order() -> None:
    ids = [1, IMG, 2, IMG, 3, IMG, 4]
    frames = [meta("image", k, k + 2) for k in range(3)]
    out = align(ids, PH, {"image": frames}, dynamic_frame_expansion=True)
    assert out.path == "legacy"
    assert [i.meta.index for i in out.items] == [0, 1, 2]
    assert out.input_ids == [1, IMG, IMG, 2, IMG, IMG, IMG, 3, IMG, IMG, IMG, IMG, 4]


@pytest.mark.parametrize(
    "ids, n_items, phrase",
    [([1, IMG, 2, IMG], 1, "more image placeholders"), ([1, IMG, 2], 2, "2 image items but only 1")],
)
def test_count_mismatch_is_alignment_error(ids: list[int], n_items: int, phrase: str) -> None:
    with pytest.raises(AlignmentError, match=phrase):
        align(ids, PH, {"image": [meta("image", k, 2) for k in range(n_items)]}, request_id="r1")


def test_modality_without_placeholder_is_refused() -> None:
    with pytest.raises(AlignmentError, match="no placeholder for audio"):
        align([1, IMG], {"image": IMG}, {"image": [meta("image", 0, 1)], "audio": [meta("audio", 0, 1)]})


def test_pad_value_formula() -> None:
    m = meta("image", 4, 1)  # hash = 5 in hex
    assert m.pad_value == 1_000_005
    big = ItemMeta("image", 0, 1, None, "f" * 64, [1], "float32")
    assert big.pad_value == 1_000_000 + (16**64 - 1) % 2**30


# --------------------------------------------------------------------------- structured expansions
# A MiniCPM-V-like image: <image_id>0</image_id><image> n*IMG </image> then slices joined by "\n".
ID_S, ID_E, IM_S, IM_E, SL_S, SL_E, NL, ZERO = 910, 911, 912, 913, 914, 915, 10, 48
VS, VE = 920, 921
SPECIAL = frozenset({IMG, VID, AUD, ID_S, ID_E, IM_S, IM_E, SL_S, SL_E, VS, VE})


def sliced(index: int, n_main: int, rows: list[list[int]]) -> ItemMeta:
    texts = [[ID_S, ZERO + index, ID_E, IM_S], [IM_E]]
    runs = [n_main]
    for r, row in enumerate(rows):
        for c, n in enumerate(row):
            texts[-1] = texts[-1] + ([NL] if r and not c else []) + [SL_S]
            runs.append(n)
            texts.append([SL_E])
    exp = Expansion(texts=texts, runs=runs, token=IMG)
    m = meta("image", index, exp.num_tokens)
    m.expansion = exp
    return m


def timed_video(index: int, groups: list[tuple[list[int], int]]) -> ItemMeta:
    """A Qwen3-VL-like video: per group, timestamp text ids, VS, n*VID, VE."""
    texts: list[list[int]] = [groups[0][0] + [VS]]
    runs = []
    for k, (_, n) in enumerate(groups):
        runs.append(n)
        texts.append([VE] + (groups[k + 1][0] + [VS] if k + 1 < len(groups) else []))
    exp = Expansion(texts=texts, runs=runs, token=VID, open_start=True)
    m = meta("video", index, exp.num_tokens)
    m.expansion = exp
    return m


def test_structured_fast_path_offsets_cover_exactly_the_runs() -> None:
    img = sliced(0, 3, [[2, 2], [2, 2]])
    vid = timed_video(0, [([60, 61], 4), ([62, 63], 4)])
    ids = [1, VS, VID, VE, 2, IMG, 3]
    out = align(ids, PH, {"image": [img], "video": [vid]}, special_ids=SPECIAL)
    assert out.path == "fast"
    expected = [1, VS] + vid.expansion.ids() + [VE, 2] + img.expansion.ids() + [3]
    assert out.input_ids == expected
    for item in out.items:
        token = IMG if item.meta.modality == "image" else VID
        covered = [p for s, e in item.offsets for p in range(s, e + 1)]
        assert covered == [p for p, t in enumerate(expected) if t == token]  # exactly its feature positions
        assert sum(e - s + 1 for s, e in item.offsets) == item.meta.num_tokens
    assert len(out.items[1].offsets) == 5  # the image: main run and four slices


def test_legacy_keeps_full_structured_expansions_and_expands_compact_ones() -> None:
    a, b = sliced(0, 3, [[2, 2]]), sliced(1, 2, [])
    full = [5] + a.expansion.ids() + [6, IMG, 7]
    out = align(full, PH, {"image": [a, b]}, skip_tokenizer_init=True)
    assert out.path == "legacy"
    assert out.input_ids == [5] + a.expansion.ids() + [6] + b.expansion.ids() + [7]
    assert out.items[0].offsets[0][0] == 1 + 4  # after the id prefix and <image>
    both = align(out.input_ids, PH, {"image": [a, b]}, skip_tokenizer_init=True)
    assert both.input_ids == out.input_ids  # fully expanded ids come out unchanged
    assert [i.offsets for i in both.items] == [i.offsets for i in out.items]


@pytest.mark.parametrize("corrupt", ["slice_marker", "short_run", "timestamp"])
def test_corrupted_structured_expansion_is_400_saying_what_was_expected(corrupt: str) -> None:
    img = sliced(0, 3, [[2, 2]])
    vid = timed_video(0, [([60, 61], 4), ([62, 63], 4)])
    ids = img.expansion.ids() + [1] + vid.expansion.ids()
    if corrupt == "slice_marker":
        ids[ids.index(SL_E)] = SL_S
    elif corrupt == "short_run":
        ids.remove(IMG)
    else:
        ids[ids.index(62)] = 64
    with pytest.raises(AlignmentError) as err:
        align(ids, PH, {"image": [img], "video": [vid]}, request_id="rc", skip_tokenizer_init=True)
    msg = str(err.value)
    assert err.value.status == 400 and "rc" in msg and "expected" in msg and "position" in msg
    assert ("video 0" if corrupt == "timestamp" else "image 0") in msg


def test_open_expansion_next_to_plain_text_needs_a_text_splice() -> None:
    vid = timed_video(0, [([60, 61], 4)])
    with pytest.raises(SpliceRequired):
        align([1, 2, VID, VE], PH, {"video": [vid]}, special_ids=SPECIAL)
    out = align([1, VS, VID, VE], PH, {"video": [vid]}, special_ids=SPECIAL)  # a special token before it: safe
    assert out.path == "fast"


def test_align_by_text_splices_text_and_reads_offsets_back() -> None:
    vid = timed_video(0, [([60, 61], 2), ([62, 63], 3)])
    vid.expansion.strings = ["<t0><vs>", "<ve><t1><vs>", "<ve>"]
    vocab = {"<vid>": VID, "<vs>": VS, "<ve>": VE, "<t0>": 60, "<t1>": 62, "a": 1}

    def tokenize(text: str) -> list[int]:
        import re

        return [vocab[t] for t in re.findall(r"<[a-z0-9]+>|a", text)]

    out = align_by_text("a<vid>a", {"video": "<vid>"}, {"video": VID}, {"video": "<vid>"}, {"video": [vid]}, tokenize)
    assert out.input_ids == [1, 60, VS, VID, VID, VE, 62, VS, VID, VID, VID, VE, 1]
    assert out.items[0].offsets == [(3, 4), (8, 10)]


@pytest.mark.parametrize("texts,runs", [
    ([[], []], [5]),  # Qwen2-VL's single run
    ([[1, 2], [3], [4, 5, 6]], [2, 3]),  # text before, between and after (MiniCPM-V, Qwen3-VL shapes)
    ([[7], [], []], [1, 4]),  # runs side by side, no text between
])
def test_extend_into_is_ids_with_the_offsets_of_relative_runs(texts: list[list[int]], runs: list[int]) -> None:
    """The fast path's one-pass writer appends exactly ``ids()`` and reports ``relative_runs()`` shifted
    to where it wrote them."""
    exp = Expansion(texts, runs, 9)
    out = [100, 101, 102]
    offsets = exp.extend_into(out)
    assert out == [100, 101, 102, *exp.ids()]
    assert offsets == [(s + 3, e + 3) for s, e in exp.relative_runs()]
    assert all(out[s : e + 1] == [9] * (e - s + 1) for s, e in offsets)
