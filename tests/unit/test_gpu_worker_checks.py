"""The GPU worker's routing check: features read for a request must have the shapes its record names."""

from __future__ import annotations

import numpy as np

from actors.gpu_worker import _first_shape_mismatch


def _item(rows: int) -> dict[str, np.ndarray]:
    return {"pixel_values": np.zeros((rows, 8), np.float32), "image_grid_thw": np.array([[1, 2, rows // 2]])}


def test_matching_items_pass() -> None:
    described = [{"feature_shape": [4, 8]}, {"feature_shape": [6, 8]}]
    assert _first_shape_mismatch([_item(4), _item(6)], described) is None


def test_swapped_items_are_caught() -> None:
    described = [{"feature_shape": [4, 8]}, {"feature_shape": [6, 8]}]
    assert _first_shape_mismatch([_item(6), _item(4)], described) == 0


def test_missing_item_is_caught() -> None:
    described = [{"feature_shape": [4, 8]}, {"feature_shape": [6, 8]}]
    assert _first_shape_mismatch([_item(4)], described) == 1
