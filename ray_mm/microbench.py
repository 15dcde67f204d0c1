"""Microbenchmarks shared by ``benchmarks/*.py`` and ``ray-mm bench``.

They return plain dicts of measured numbers; nothing here asserts a speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .align import align
from .types import ItemMeta


def _best_of(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def align_fast_vs_legacy(total_tokens: int = 32768, n_images: int = 16, repeats: int = 20) -> dict[str, Any]:
    """Fast path on a text prompt against the legacy scan on the same request's expanded ids.

    The prompt expands to ``total_tokens`` with ``n_images`` images of equal size.
    """
    image_token, text_len = 151655, 1024
    per_image = (total_tokens - text_len) // n_images
    rng = np.random.default_rng(0)
    text = rng.integers(0, 150000, size=text_len).tolist()
    compact: list[int] = []
    step = text_len // n_images
    for k in range(n_images):
        compact.extend(text[k * step : (k + 1) * step])
        compact.append(image_token)
    items = {"image": [ItemMeta("image", k, per_image, None, f"{k + 1:x}", [per_image, 8], "float32") for k in range(n_images)]}
    placeholders = {"image": image_token}
    fast = align(compact, placeholders, items)
    expanded = fast.input_ids
    legacy = align(expanded, placeholders, items, skip_tokenizer_init=True)
    assert legacy.input_ids == expanded
    fast_s = _best_of(lambda: align(compact, placeholders, items), repeats)
    legacy_s = _best_of(lambda: align(expanded, placeholders, items, skip_tokenizer_init=True), repeats)
    return {
        "total_tokens": len(expanded),
        "n_images": n_images,
        "fast_ms": fast_s * 1e3,
        "legacy_ms": legacy_s * 1e3,
        "speedup": legacy_s / fast_s,
    }
