"""The hand-tuned pixel path with Qwen3-VL's settings against the HF processor on the whole request.

Patch 16 (resize factor 32), mean / std 0.5 for images; for videos, ``Qwen3VLVideoProcessor``'s
sizing: ``size`` bounds the whole video and ``cap_pixels_per_frame`` gives each frame a share of it.
Every expected value comes from the HF processor (one call per request), never from ray-mm code,
and the adapters under test have their HF image / video processors made to fail, so a pass means
the hand path produced the values.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from transformers import AutoProcessor

from ray_mm.models.qwen2_vl import pixels_from_patches
from ray_mm.models.qwen2_vl_fast import FastPathUnsupported, PixelSettings, QwenPixelPath
from ray_mm.models.qwen3_vl import Qwen3VLAdapter
from tests.unit.media_factory import noisy_rgb, noisy_video, rows_per_item, sampled_video_meta

IMG = "<|vision_start|><|image_pad|><|vision_end|>"
VID = "<|vision_start|><|video_pad|><|vision_end|>"


def _jpeg_decoded(width: int, height: int, seed: int) -> Image.Image:
    buf = io.BytesIO()
    Image.fromarray(noisy_rgb(width, height, seed)).save(buf, "JPEG", quality=90)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _images() -> list[Any]:
    rgba = np.dstack([noisy_rgb(50, 40, 6), np.tile(np.arange(50, dtype=np.uint8) * 5, (40, 1))])
    return [
        Image.fromarray(noisy_rgb(20, 30, 1)),  # tiny: grown to min_pixels
        Image.fromarray(noisy_rgb(37, 91, 2)),  # odd sizes
        _jpeg_decoded(1920, 1080, 3),  # 1080p
        Image.fromarray(noisy_rgb(64, 48, 4)[..., 0], "L"),  # grayscale
        Image.fromarray(noisy_rgb(2400, 60, 5)),  # very wide (aspect 40)
        Image.fromarray(rgba, "RGBA"),  # alpha composited on white
        noisy_rgb(333, 517, 7),  # an (H, W, 3) uint8 array
    ]



def _videos() -> list[tuple[np.ndarray, dict[str, Any]]]:
    return [
        (noisy_video(4, 180, 320, 8), sampled_video_meta(4, 120, 30.0)),
        (noisy_video(5, 90, 200, 9), sampled_video_meta(5, 50, 10.0)),  # odd count: last frame repeated, last index padded
        (noisy_video(16, 360, 640, 10), sampled_video_meta(16, 240, 24.0)),  # per-frame cap binds (64 tokens a frame)
        (noisy_video(2, 20, 30, 11), sampled_video_meta(2, 10, 5.0)),  # tiny frames: grown to the minimum
    ]


def _hand_only(model_dir: Path) -> Qwen3VLAdapter:
    adapter = Qwen3VLAdapter(model_dir)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the HF processor was called: the hand path fell back")

    adapter.processor.image_processor.preprocess = refuse  # type: ignore[method-assign]
    adapter.processor.video_processor.preprocess = refuse  # type: ignore[method-assign]
    return adapter


@pytest.fixture(scope="module")
def model_dir(family_dir: Any) -> Path:
    return family_dir("qwen3_vl")


@pytest.fixture(scope="module")
def hf(model_dir: Path) -> Any:
    return AutoProcessor.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def adapter(model_dir: Path) -> Qwen3VLAdapter:
    return _hand_only(model_dir)



def _reference(hf: Any, images: list[Any], videos: list[tuple[np.ndarray, dict[str, Any]]], **kwargs: Any) -> Any:
    text = " ".join([f"image {IMG}" for _ in images] + [f"video {VID}" for _ in videos])
    call: dict[str, Any] = {"text": [text], "return_tensors": "np", **kwargs}
    if images:
        call["images"] = images
    if videos:
        call.update(videos=[v for v, _ in videos], do_sample_frames=False, video_metadata=[dict(m) for _, m in videos])
    return hf(**call)


def test_settings_read_from_the_processors(hf: Any) -> None:
    from transformers import Qwen2VLVideoProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    image = PixelSettings.from_processor(hf.image_processor)
    assert (image.patch_size, image.merge_size, image.image_mean, image.image_std) == (16, 2, (0.5,) * 3, (0.5,) * 3)
    video = PixelSettings.from_processor(hf.video_processor)
    assert video.video_budget == "video" and video.cap_pixels_per_frame and video.max_video_tokens == 64
    assert PixelSettings.from_processor(Qwen2VLVideoProcessor()).video_budget == "frame"

    class OwnResize(Qwen3VLVideoProcessor):
        def resize(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - never called
            raise NotImplementedError

    with pytest.raises(FastPathUnsupported, match="resize"):
        PixelSettings.from_processor(OwnResize())


def test_images_and_videos_float32_match_processor(adapter: Qwen3VLAdapter, hf: Any) -> None:
    images, videos = _images(), _videos()
    ref = _reference(hf, images, videos)
    for data, exp, grid in zip(images, rows_per_item(ref["pixel_values"], ref["image_grid_thw"]), ref["image_grid_thw"], strict=True):
        (item,) = adapter.process("image", data)
        assert item.grid_thw == grid.tolist()
        assert item.features["pixel_values"].dtype == np.float32
        np.testing.assert_allclose(item.features["pixel_values"], exp, atol=1e-5, rtol=0)
    expected = rows_per_item(ref["pixel_values_videos"], ref["video_grid_thw"])
    # The whole request as text with every item's expansion spliced in must tokenize to HF's ids.
    pieces = [f"image <|vision_start|>{'<|image_pad|>' * (int(np.prod(grid)) // 4)}<|vision_end|>"
              for grid in ref["image_grid_thw"]]
    for (frames, meta), exp, grid in zip(videos, expected, ref["video_grid_thw"], strict=True):
        (item,) = adapter.process("video", frames, {"video_metadata": meta})
        assert item.grid_thw == grid.tolist()
        np.testing.assert_allclose(item.features["pixel_values_videos"], exp, atol=1e-5, rtol=0)
        assert item.num_tokens == int(np.prod(grid)) // 4 == item.expansion.num_tokens
        pieces.append(f"video <|vision_start|>{item.expansion.text('<|video_pad|>')}<|vision_end|>")
    assert adapter.tokenize(" ".join(pieces)) == ref["input_ids"][0].tolist()
    assert ref["video_grid_thw"][1][0] == 3  # odd frame count padded
    assert ref["video_grid_thw"][2].tolist() == [8, 12, 20]  # 640x360 frames capped at 64 tokens a frame


def test_uint8_transport_matches_processor(adapter: Qwen3VLAdapter, hf: Any) -> None:
    images, videos = _images()[:3], _videos()[:2]
    ref = _reference(hf, images, videos)
    raw = _reference(hf, images, videos, do_rescale=False, do_normalize=False)
    for kind, items, key, grid_key in (("image", images, "pixel_values", "image_grid_thw"),
                                       ("video", videos, "pixel_values_videos", "video_grid_thw")):
        for data, f32, u8 in zip(items, rows_per_item(ref[key], ref[grid_key]), rows_per_item(raw[key], raw[grid_key]), strict=True):
            options: dict[str, Any] = {"transport": "uint8"}
            if kind == "video":
                data, options["video_metadata"] = data
            (item,) = adapter.process(kind, data, options)
            # The resized pixels, each frame once, bit for bit those inside the processor's uint8 patches.
            frames = 1 if kind == "image" else len(data)
            assert item.features[key].dtype == np.uint8 and item.features[key].shape[0] == frames
            np.testing.assert_array_equal(item.features[key], pixels_from_patches(
                adapter.processor.image_processor, u8, item.grid_thw, frames))
            np.testing.assert_array_equal(adapter.finish_features(item.features)[key], f32)


def test_per_item_budget_binds_the_per_frame_share(adapter: Qwen3VLAdapter, hf: Any) -> None:
    """A client ``max_pixels`` for the whole video: 8 frames of a 65536-pixel budget get 8192 pixels each."""
    frames, meta = noisy_video(8, 360, 640, 12), sampled_video_meta(8, 80, 20.0)
    options = {"min_pixels": 4096, "max_pixels": 65536, "video_metadata": meta}
    ref = hf.video_processor(videos=[frames], size={"shortest_edge": 4096, "longest_edge": 65536},
                             do_sample_frames=False, return_tensors="np")
    (item,) = adapter.process("video", frames, options)
    assert item.grid_thw == ref["video_grid_thw"][0].tolist()
    assert int(np.prod(item.grid_thw[1:])) * 16 * 16 <= 8192
    np.testing.assert_allclose(item.features["pixel_values_videos"], ref["pixel_values_videos"], atol=1e-5, rtol=0)


def test_uncapped_video_processor() -> None:
    """``cap_pixels_per_frame=False``: ``size`` alone bounds ``t * h * w``."""
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    proc = Qwen3VLVideoProcessor(size={"shortest_edge": 4096, "longest_edge": 6 * 32 * 32 * 40}, cap_pixels_per_frame=False,
                                 image_mean=[0.5] * 3, image_std=[0.5] * 3)
    path = QwenPixelPath.from_processor(proc)
    for frames in (noisy_video(6, 360, 640, 13), noisy_video(3, 100, 70, 14)):
        ref = proc(videos=[frames], do_sample_frames=False, return_tensors="np")
        got = path.video(frames)
        assert list(got.grid_thw) == ref["video_grid_thw"][0].tolist()
        np.testing.assert_allclose(got.values, ref["pixel_values_videos"], atol=1e-5, rtol=0)


def test_one_frame_video_is_refused_like_the_processor(adapter: Qwen3VLAdapter, hf: Any) -> None:
    frames = noisy_video(1, 64, 64, 15)
    with pytest.raises(ValueError, match="temporal_factor") as theirs:
        hf.video_processor(videos=[frames], do_sample_frames=False)
    with pytest.raises(ValueError) as ours:
        adapter.process("video", frames, {"video_metadata": sampled_video_meta(1, 10, 5.0)})
    assert str(ours.value) == str(theirs.value)
