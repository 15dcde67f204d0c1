"""Alignment without a model: fast path, legacy scan, frame expansion, offsets, errors."""

from __future__ import annotations

import pytest

from ray_mm.align import align, find_runs
from ray_mm.errors import AlignmentError
from ray_mm.types import ItemMeta

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
