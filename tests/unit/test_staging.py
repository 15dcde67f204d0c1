"""HostStaging on CPU: values and dtypes survive packing, the buffer is reused, and callers own what they get."""

from __future__ import annotations

import numpy as np
import torch

from ray_mm.handoff.staging import HostStaging


def _request(rows: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    pixels = rng.standard_normal((rows, 1176)).astype(np.float32)
    pixels.setflags(write=False)  # as object-store views arrive
    grid = np.array([[1, 2, rows // 2]], dtype=np.int64)
    patches_u8 = rng.integers(0, 256, size=(rows, 7), dtype=np.uint8)  # odd byte count: next array must stay aligned
    return [patches_u8, pixels, grid]


def test_values_dtypes_and_shapes_survive() -> None:
    staging = HostStaging("cpu", pin=False)
    arrays = _request(64, seed=0)
    out = staging.to_device(arrays)
    assert [t.dtype for t in out] == [torch.uint8, torch.float32, torch.int64]
    for array, tensor in zip(arrays, out):
        np.testing.assert_array_equal(tensor.numpy(), array)


def test_buffer_is_reused_for_requests_that_fit() -> None:
    staging = HostStaging("cpu", pin=False)
    staging.to_device(_request(64, seed=0))
    ptr, capacity = staging.buffer_ptr(), staging.capacity
    for seed in range(1, 6):
        staging.to_device(_request(48 if seed % 2 else 64, seed=seed))
    assert staging.allocations == 1
    assert staging.buffer_ptr() == ptr and staging.capacity == capacity
    staging.to_device(_request(256, seed=9))  # larger request: grows once
    assert staging.allocations == 2 and staging.capacity > capacity


def test_returned_tensors_do_not_alias_the_buffer() -> None:
    staging = HostStaging("cpu", pin=False)
    first = _request(32, seed=1)
    kept = staging.to_device(first)
    staging.to_device(_request(32, seed=2))  # overwrites the buffer
    for array, tensor in zip(first, kept):
        np.testing.assert_array_equal(tensor.numpy(), array)
