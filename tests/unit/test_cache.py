"""The content-hash feature cache: repeats skip decode and processing; bounded by bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ray_mm.cache import FeatureCache
from ray_mm.config import MediaPolicy, RayMMConfig
from ray_mm.media.synth import make_image
from ray_mm.pipeline import Preprocessor
from ray_mm.types import ItemMeta, ProcessedItem

IMG = "<|vision_start|><|image_pad|><|vision_end|>"


def _item(n: int) -> ProcessedItem:
    meta = ItemMeta("image", 0, 1, None, "a" * 64, [n], "uint8")
    return ProcessedItem(meta, {"x": np.zeros(n, np.uint8)}, "x")


def test_lru_is_bounded_by_bytes() -> None:
    cache = FeatureCache(max_bytes=250)
    for k in range(3):
        cache.put(k, [_item(100)])
    assert cache.bytes <= 250 and len(cache) == 2
    assert cache.get(0) is None  # the oldest was evicted
    assert cache.get(2) is not None
    cache.put("big", [_item(1000)])  # larger than the whole cache: not kept
    assert cache.get("big") is None and cache.bytes <= 250


def test_cached_copies_do_not_share_metadata() -> None:
    cache = FeatureCache(max_bytes=1000)
    cache.put("k", [_item(10)])
    first = cache.get("k")
    assert first is not None
    first[0].meta.index = 7
    again = cache.get("k")
    assert again is not None and again[0].meta.index == 0


def test_repeat_media_is_not_decoded_again(qwen2_vl_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.jpg").write_bytes(make_image(320, 240, seed=3))
    (tmp_path / "copy.jpg").write_bytes((tmp_path / "a.jpg").read_bytes())
    config = RayMMConfig(media=MediaPolicy(allowed_local_media_path=str(tmp_path)))
    pre = Preprocessor(qwen2_vl_dir, config)
    decodes = []
    original = pre.loader.decode
    monkeypatch.setattr(pre.loader, "decode", lambda spec, fetched: decodes.append(spec.label) or original(spec, fetched))
    line = {"request_id": "r", "prompt": f"{IMG} {IMG}", "images": [str(tmp_path / "a.jpg"), str(tmp_path / "copy.jpg")]}
    first = pre.run(line)
    second = pre.run(dict(line, request_id="r2"))
    assert first.ok and second.ok
    assert len(decodes) == 1  # same bytes under two paths, then the whole request again: decoded once
    assert pre.cache.hits == 3
    assert first.record["input_ids"] == second.record["input_ids"]
    for a, b in zip(first.features, second.features, strict=True):
        np.testing.assert_array_equal(a, b)
    assert [it["hash"] for it in first.record["items"]] == [it["hash"] for it in second.record["items"]]
    assert [it["index"] for it in second.record["items"]] == [0, 1]

    other = {"request_id": "o", "prompt": IMG, "images": [{"url": str(tmp_path / "a.jpg"), "max_pixels": 50000}]}
    assert pre.run(other).ok
    assert len(decodes) == 2  # other options, other hash: processed anew
