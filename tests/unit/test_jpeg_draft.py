"""Opt-in draft JPEG decode: only JPEGs, never below the processor's target size, close to the full decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ray_mm.config import MediaPolicy, RayMMConfig
from ray_mm.media.synth import make_image
from ray_mm.pipeline import Preprocessor

IMG = "<|vision_start|><|image_pad|><|vision_end|>"


def _run(model_dir: Path, media: Path, draft: bool, name: str) -> tuple[dict, list[np.ndarray]]:
    config = RayMMConfig(media=MediaPolicy(allowed_local_media_path=str(media)), jpeg_draft=draft, cache_bytes=0)
    out = Preprocessor(model_dir, config).run({"request_id": "d", "prompt": IMG, "images": [str(media / name)]})
    assert out.ok, out.record
    return out.record, out.features


def test_draft_keeps_grid_and_stays_close(qwen2_vl_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "big.jpg").write_bytes(make_image(1920, 1080, seed=11))
    (tmp_path / "big.png").write_bytes(make_image(1920, 1080, "PNG", seed=11))
    full, full_feats = _run(qwen2_vl_dir, tmp_path, False, "big.jpg")
    draft, draft_feats = _run(qwen2_vl_dir, tmp_path, True, "big.jpg")
    # Same grid and ids: the draft never goes below the processor's target size.
    assert draft["input_ids"] == full["input_ids"] and draft["items"][0]["grid_thw"] == full["items"][0]["grid_thw"]
    diff = np.abs(draft_feats[0] - full_feats[0])
    assert 0 < diff.mean() < 0.1  # it is a different decode (documented), but a close one
    png_full, png_feats = _run(qwen2_vl_dir, tmp_path, False, "big.png")
    png_draft, png_draft_feats = _run(qwen2_vl_dir, tmp_path, True, "big.png")
    np.testing.assert_array_equal(png_feats[0], png_draft_feats[0])  # not a JPEG: untouched


def test_draft_request_is_never_smaller_than_target(qwen2_vl_dir: Path) -> None:
    pre = Preprocessor(qwen2_vl_dir, RayMMConfig(jpeg_draft=True))
    size = pre.loader.image_draft_size
    assert size is not None
    tw, th = pre.adapter.image_target_size(1920, 1080)
    assert size(1920, 1080, False) == (tw, th)
    assert size(1080, 1920, True) == (th, tw)  # EXIF-rotated file: raw axes swapped back
