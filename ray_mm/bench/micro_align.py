"""Alignment microbenchmarks (fast path against the legacy scan) for ``ray-mm bench`` and ``benchmarks/align_bench.py``.

They return plain dicts of measured numbers; nothing here asserts a speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..align import align
from ..types import Expansion, ItemMeta


def best_of(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _structured_items(total_tokens: int, n_videos: int, n_images: int) -> tuple[dict[str, list[ItemMeta]], int, int]:
    """Qwen3-VL-shaped videos (per temporal group: timestamp text, vision start, a run, vision end) and
    MiniCPM-V-shaped sliced images (id prefix, overview run, 3x3 slice rows joined by newlines), about
    ``total_tokens`` in all. Token ids are made up: alignment only compares them."""
    image_tok, video_tok, vs, ve, sl_s, sl_e, im_s, im_e, nl = 151655, 151656, 151652, 151653, 7, 8, 9, 10, 198
    per_item = total_tokens // (n_videos + n_images)
    items: dict[str, list[ItemMeta]] = {"image": [], "video": []}
    for k in range(n_videos):
        groups = per_item // 68  # 64 tokens per temporal group plus 4 of text
        texts = [[27, 15 + k % 10, 13, 20, 6193, 29, vs]]
        for g in range(groups):
            texts.append([ve] + ([27, 16 + g % 10, 13, 20, 6193, 29, vs] if g + 1 < groups else []))
        exp = Expansion(texts, [64] * groups, video_tok, open_start=True)
        items["video"].append(ItemMeta("video", k, exp.num_tokens, None, f"{k + 1:x}", [exp.num_tokens, 8], "float32", expansion=exp))
    for k in range(n_images):
        n = max(1, per_item // 10 - 3)
        texts = [[11, 15 + k % 10, 12, im_s], [im_e, sl_s]]
        for r in range(3):
            for c in range(3):
                texts.append([sl_e] + ([nl] if c == 2 and r < 2 else []) + ([sl_s] if (r, c) != (2, 2) else []))
        exp = Expansion(texts, [n] * 10, image_tok)
        items["image"].append(ItemMeta("image", k, exp.num_tokens, None, f"{k + 99:x}", [exp.num_tokens, 8], "float32", expansion=exp))
    return items, image_tok, video_tok


def align_fast_vs_legacy_structured(total_tokens: int = 32768, n_videos: int = 4, n_images: int = 8,
                                    repeats: int = 20) -> dict[str, Any]:
    """As :func:`align_fast_vs_legacy`, with structured expansions (timestamped video groups, sliced images)."""
    items, image_tok, video_tok = _structured_items(total_tokens, n_videos, n_images)
    rng = np.random.default_rng(1)
    text = rng.integers(0, 150000, size=1024).tolist()
    compact: list[int] = []
    order = [("video", k) for k in range(n_videos)] + [("image", k) for k in range(n_images)]
    step = len(text) // len(order)
    for j, (modality, _) in enumerate(order):
        compact.extend(text[j * step : (j + 1) * step] + [151652])  # a vision start before each, as chat templates put it
        compact.append(video_tok if modality == "video" else image_tok)
    placeholders = {"image": image_tok, "video": video_tok}
    fast = align(compact, placeholders, items)
    expanded = fast.input_ids
    legacy = align(expanded, placeholders, items, skip_tokenizer_init=True)
    assert legacy.input_ids == expanded and [i.offsets for i in legacy.items] == [i.offsets for i in fast.items]
    fast_s = best_of(lambda: align(compact, placeholders, items), repeats)
    legacy_s = best_of(lambda: align(expanded, placeholders, items, skip_tokenizer_init=True), repeats)
    return {"total_tokens": len(expanded), "n_videos": n_videos, "n_images": n_images,
            "fast_ms": fast_s * 1e3, "legacy_ms": legacy_s * 1e3, "speedup": legacy_s / fast_s}


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
    fast_s = best_of(lambda: align(compact, placeholders, items), repeats)
    legacy_s = best_of(lambda: align(expanded, placeholders, items, skip_tokenizer_init=True), repeats)
    return {
        "total_tokens": len(expanded),
        "n_images": n_images,
        "fast_ms": fast_s * 1e3,
        "legacy_ms": legacy_s * 1e3,
        "speedup": legacy_s / fast_s,
    }
