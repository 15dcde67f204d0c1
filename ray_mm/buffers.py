"""Per-call output arena: where a media worker's feature arrays live until Ray has stored them.

Each item's features are 7-45 MB. Allocated fresh, they land on new pages that fault in on
first touch, which on the development machine cost as much as the pixel work itself. A
media worker's outputs only need to live until its call returns: Ray copies the return
value into the object store before the actor runs its next call. So the worker hands the
pixel path one grow-only buffer (:class:`CallArena`), resets it at the start of each call,
and outputs are bump-allocated from it. In steady state no large output buffer is allocated
per request, and its pages stay mapped.

Only code that knows its outputs die with the call may activate an arena
(:func:`output_arena`). Everything else (the in-process pipeline, ``ray-mm align``, the
content-hash cache's stored copies) gets fresh arrays from :func:`new_output`.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator, Sequence

import numpy as np
import torch

#: Outputs start on this boundary (any dtype's alignment, and cache lines).
_ALIGN = 64

_active = threading.local()


class CallArena:
    """Bump allocation over one grow-only byte buffer; :meth:`reset` frees everything at once.

    When a call needs more than the buffer holds, a larger buffer replaces it; outputs
    already handed out keep the old one alive through their own references, so they stay
    valid. From then on calls of that size reuse the larger buffer. A buffer larger than
    ``max_retained_bytes`` is let go at the next reset, so one outsized request (many items)
    does not hold a worker's memory up for good.
    """

    def __init__(self, max_retained_bytes: int = 256 << 20) -> None:
        self.max_retained_bytes = max_retained_bytes
        self._buffer: torch.Tensor | None = None
        self._used = 0
        self._call_bytes = 0  # everything handed out since reset, across buffers
        self.allocations = 0

    @property
    def capacity(self) -> int:
        return 0 if self._buffer is None else int(self._buffer.numel())

    def buffer_ptr(self) -> int:
        return 0 if self._buffer is None else int(self._buffer.data_ptr())

    def reset(self) -> None:
        """Forget every output handed out so far: only once the last call's outputs are stored elsewhere."""
        self._used = 0
        self._call_bytes = 0
        if self.capacity > self.max_retained_bytes:
            self._buffer = None

    def take(self, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised contiguous tensor of ``shape`` and ``dtype`` inside the buffer."""
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        size = (nbytes + _ALIGN - 1) // _ALIGN * _ALIGN
        self._call_bytes += size
        if self._buffer is None or self._used + size > self._buffer.numel():
            # Big enough for everything this call has taken, so the next call of this size fits at once.
            self._buffer = torch.empty(max(2 * self.capacity, self._call_bytes), dtype=torch.uint8)
            self._used = 0
            self.allocations += 1
        start = self._used
        self._used += size
        return self._buffer[start : start + nbytes].view(dtype).view(tuple(shape))

    def holds(self, array: np.ndarray) -> bool:
        """Whether ``array``'s memory lies in the current buffer."""
        if self._buffer is None:
            return False
        lo = self._buffer.data_ptr()
        ptr = array.__array_interface__["data"][0]
        return lo <= ptr < lo + self._buffer.numel()


@contextlib.contextmanager
def output_arena(arena: CallArena) -> Iterator[CallArena]:
    """Route :func:`new_output` on this thread to ``arena`` for the duration of the block."""
    previous = getattr(_active, "arena", None)
    _active.arena = arena
    try:
        yield arena
    finally:
        _active.arena = previous


def active_arena() -> CallArena | None:
    return getattr(_active, "arena", None)


def new_output(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """An output tensor: from the thread's active arena, else freshly allocated."""
    arena = active_arena()
    return arena.take(shape, dtype) if arena is not None else torch.empty(tuple(shape), dtype=dtype)


class ArenaPool:
    """Arenas for calls that overlap (an async media worker runs several calls at once).

    A call takes an arena with :meth:`acquire` and returns its features in the
    :class:`CallOutputs` list that :meth:`outputs` makes. The arena goes back to the
    pool only when that list is garbage: Ray drops the return value once it has copied
    it into the object store, so an arena is never reused while its outputs may still
    be read. Should anything keep the list alive longer, the pool just makes another arena.
    """

    def __init__(self, max_retained_bytes: int = 256 << 20) -> None:
        self.max_retained_bytes = max_retained_bytes
        self._free: list[CallArena] = []
        self._lock = threading.Lock()
        self.created = 0

    def acquire(self) -> CallArena:
        with self._lock:
            if self._free:
                return self._free.pop()
            self.created += 1
        return CallArena(self.max_retained_bytes)

    def release(self, arena: CallArena) -> None:
        arena.reset()
        with self._lock:
            self._free.append(arena)

    def outputs(self, arena: CallArena) -> CallOutputs:
        return CallOutputs(self, arena)

    @property
    def allocations(self) -> int:
        """Buffer allocations over every arena this pool made (grows only while calls grow)."""
        with self._lock:
            return sum(a.allocations for a in self._free)

    @property
    def capacity(self) -> int:
        with self._lock:
            return sum(a.capacity for a in self._free)


class CallOutputs(list):  # type: ignore[type-arg]
    """A call's output list; releases the call's arena to its pool when garbage. Pickles as a
    plain list, so readers of the object store never see this class."""

    def __init__(self, pool: ArenaPool, arena: CallArena) -> None:
        super().__init__()
        self._pool: ArenaPool | None = pool
        self._arena = arena

    def __reduce__(self) -> tuple[type, tuple[list]]:  # type: ignore[type-arg]
        return (list, (list(self),))

    def __del__(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.release(self._arena)
