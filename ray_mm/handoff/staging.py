"""Host staging for the GPU worker's host-to-device copies: one grow-only buffer, reused.

Features arrive as read-only pageable views of the object store. Copying pageable memory to a
GPU goes through the driver's own bounce buffer and blocks; ``tensor.pin_memory()`` per array
takes a fresh pinned block per request. ``HostStaging`` packs all arrays of one request into
one pinned buffer that lives as long as the worker and issues asynchronous copies from it. The
next request waits for the previous copies (a CUDA event) before it overwrites the buffer, so
the buffer is never read and written at once. The buffer only grows (to the largest request
seen), so in steady state no large host buffer is allocated per request.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

#: Each array starts on this boundary inside the buffer (any dtype's alignment, and cache lines).
_ALIGN = 64


def _aligned(nbytes: int) -> int:
    return (nbytes + _ALIGN - 1) // _ALIGN * _ALIGN


class HostStaging:
    """Pack arrays into a reused (pinned, on CUDA) host buffer and copy them to ``device``.

    On a CPU device nothing needs staging for a transfer; the returned tensors are then copies
    out of the buffer, which keeps the contract the same (the caller owns what it gets).
    """

    def __init__(self, device: str | torch.device, pin: bool | None = None) -> None:
        self.device = torch.device(device)
        self.pin = self.device.type == "cuda" if pin is None else pin
        self._buffer: torch.Tensor | None = None
        self._copies_done: Any = None  # CUDA event recorded after the last copies out of the buffer
        self.allocations = 0
        self.bytes_staged = 0

    @property
    def capacity(self) -> int:
        return 0 if self._buffer is None else int(self._buffer.numel())

    def buffer_ptr(self) -> int:
        return 0 if self._buffer is None else int(self._buffer.data_ptr())

    def _reserve(self, nbytes: int) -> torch.Tensor:
        if self._copies_done is not None:
            self._copies_done.synchronize()
            self._copies_done = None
        if self._buffer is None or self._buffer.numel() < nbytes:
            self._buffer = None  # release the old block before taking the larger one
            self._buffer = torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.pin)
            self.allocations += 1
        return self._buffer

    def to_device(self, arrays: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """``arrays`` on ``self.device``, in order (same dtypes and shapes)."""
        buffer = self._reserve(sum(_aligned(a.nbytes) for a in arrays))
        out: list[torch.Tensor] = []
        offset = 0
        for array in arrays:
            with warnings.catch_warnings():
                # Object-store arrays are read-only views; torch warns but only reads them here.
                warnings.simplefilter("ignore", UserWarning)
                source = torch.from_numpy(np.ascontiguousarray(array))
            slot = buffer[offset : offset + array.nbytes].view(source.dtype).view(source.shape)
            slot.copy_(source)
            if self.device.type == "cpu":
                out.append(slot.clone())
            else:
                out.append(slot.to(self.device, non_blocking=True))
            offset += _aligned(array.nbytes)
        self.bytes_staged += offset
        if self.device.type == "cuda":
            self._copies_done = torch.cuda.Event()
            self._copies_done.record()
        return out
