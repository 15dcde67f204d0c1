"""The uint8 transport for the Qwen families: each image or video ships once as its resized uint8
pixels, ``(F, H, W, 3)`` (F = 1 for an image, the sampled frame count for a video), and
``finish_features`` (the GPU side) rebuilds exactly the float32 ``pixel_values`` /
``pixel_values_videos`` of the HF processor.

Every expected value comes from the HF processor called once on the whole request
(``AutoProcessor(...)(text=..., images=..., videos=...)``), never from ray-mm code. Both pixel
paths are checked: the hand path (its adapter's HF image / video processors made to fail, so a
pass means the hand path shipped the pixels) and the HF path (``process_hf``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from ray_mm.config import RayMMConfig
from ray_mm.models import load_adapter
from tests.unit.media_factory import noisy_rgb, noisy_video, rows_per_item, sampled_video_meta

IMG = "<|vision_start|><|image_pad|><|vision_end|>"
VID = "<|vision_start|><|video_pad|><|vision_end|>"
FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
U8 = {"transport": "uint8"}


def _images() -> list[Any]:
    return [
        Image.fromarray(noisy_rgb(20, 30, 1)),  # tiny: grown to min_pixels
        Image.fromarray(noisy_rgb(37, 91, 2)),  # odd sizes
        Image.fromarray(noisy_rgb(150, 90, 3)),  # odd merge grid (h/m, w/m odd for patch 14 and 16)
        Image.fromarray(noisy_rgb(640, 360, 4)),
        Image.fromarray(noisy_rgb(64, 48, 5)[..., 0], "L"),  # grayscale
        noisy_rgb(333, 517, 6),  # an (H, W, 3) uint8 array
    ]



def _videos() -> list[tuple[np.ndarray, dict[str, Any]]]:
    return [
        (noisy_video(4, 180, 320, 7), sampled_video_meta(4, 120, 30.0)),  # even frame count
        (noisy_video(5, 90, 200, 8), sampled_video_meta(5, 50, 10.0)),  # odd: the last frame repeated
        (noisy_video(3, 70, 110, 9), sampled_video_meta(3, 30, 10.0)),  # odd, odd sizes
        (noisy_video(2, 20, 30, 10), sampled_video_meta(2, 10, 5.0)),  # tiny frames: grown to the minimum
    ]



def _fresh(model_dir: Path) -> Any:
    """A new adapter instance (not load_adapter's cached one, which other tests share)."""
    return type(load_adapter(str(model_dir)))(model_dir)


def _hand_only(model_dir: Path) -> Any:
    adapter = _fresh(model_dir)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the HF processor was called: the hand path fell back")

    adapter.processor.image_processor.preprocess = refuse
    adapter.processor.video_processor.preprocess = refuse
    return adapter


@pytest.fixture(scope="module", params=FAMILIES)
def family(request: pytest.FixtureRequest, family_dir: Any) -> tuple[str, Path, Any]:
    model_dir = family_dir(request.param)
    images, videos = _images(), _videos()
    hf = AutoProcessor.from_pretrained(model_dir)
    text = " ".join([f"image {IMG}" for _ in images] + [f"video {VID}" for _ in videos])
    call: dict[str, Any] = {"text": [text], "images": images, "videos": [v for v, _ in videos],
                            "do_sample_frames": False, "return_tensors": "np"}
    if load_adapter(str(model_dir)).takes_video_metadata:
        call["video_metadata"] = [dict(m) for _, m in videos]
    return request.param, model_dir, hf(**call)


def _shipped_and_expected(adapter: Any, ref: Any, hf_path: bool) -> list[tuple[Any, np.ndarray, str, int]]:
    """(shipped item, the processor's float32 values for it, key, frame count) for every image and video
    of the request."""
    process = adapter.process_hf if hf_path else adapter.process
    out = []
    for kind, items, key, grid_key in (("image", [(i, {}) for i in _images()], "pixel_values", "image_grid_thw"),
                                       ("video", _videos(), "pixel_values_videos", "video_grid_thw")):
        for (data, meta), exp, grid in zip(items, rows_per_item(ref[key], ref[grid_key]), ref[grid_key], strict=True):
            options = {**U8, **({"video_metadata": meta} if kind == "video" and adapter.takes_video_metadata else {})}
            (item,) = process(kind, data, options)
            assert item.grid_thw == grid.tolist()
            out.append((item, exp, key, 1 if kind == "image" else len(data)))
    return out


@pytest.mark.parametrize("hf_path", [False, True], ids=["hand", "hf"])
def test_finished_pixels_equal_the_processor(family: tuple[str, Path, Any], hf_path: bool) -> None:
    name, model_dir, ref = family
    adapter = _fresh(model_dir) if hf_path else _hand_only(model_dir)
    assert adapter.uint8_transport
    p, m = int(adapter.processor.image_processor.patch_size), adapter.merge_size
    worst = 0.0
    for item, expected, key, frames in _shipped_and_expected(adapter, ref, hf_path):
        shipped = item.features[key]
        _, grid_h, grid_w = item.grid_thw
        # Each frame once (an image is not tiled over the temporal patch, an odd video not padded).
        assert shipped.dtype == np.uint8 and shipped.shape == (frames, grid_h * p, grid_w * p, 3)
        assert shipped.flags.c_contiguous and grid_h % m == 0 and grid_w % m == 0
        # numpy in, numpy out (the in-process pipeline's dumps); torch in, torch out (the GPU worker).
        finished = adapter.finish_features(item.features)[key]
        assert finished.dtype == np.float32 and finished.shape == expected.shape
        on_device = adapter.finish_features({k: torch.from_numpy(v) for k, v in item.features.items()})[key]
        assert isinstance(on_device, torch.Tensor) and on_device.dtype == torch.float32
        np.testing.assert_array_equal(on_device.numpy(), finished)
        worst = max(worst, float(np.abs(finished - expected).max()))
    assert worst == 0.0, f"{name}: max abs difference {worst}"  # the processor's own float ops: bit for bit


def test_video_frames_ship_once(family: tuple[str, Path, Any]) -> None:
    """A video ships each sampled frame once: an odd count is not padded on the CPU side."""
    _, model_dir, _ = family
    adapter = _hand_only(model_dir)
    for frames, meta in _videos():
        options = {**U8, **({"video_metadata": meta} if adapter.takes_video_metadata else {})}
        (item,) = adapter.process("video", frames, options)
        assert item.features["pixel_values_videos"].shape[0] == len(frames)
        (hf_item,) = _fresh(model_dir).process_hf("video", frames, options)
        np.testing.assert_array_equal(hf_item.features["pixel_values_videos"], item.features["pixel_values_videos"])


def test_image_bytes_are_an_eighth_of_float32(family: tuple[str, Path, Any]) -> None:
    """Shipped bytes per image (pixels + grid) against the float32 patches: 1/8 plus the 24-byte grid."""
    _, model_dir, _ = family
    adapter = _hand_only(model_dir)
    for image in _images():
        (u8,) = adapter.process("image", image, U8)
        (f32,) = adapter.process("image", image)
        shipped = sum(a.nbytes for a in u8.features.values())
        float_bytes = sum(a.nbytes for a in f32.features.values())
        assert shipped <= f32.features["pixel_values"].nbytes / 8 + 64, (shipped, float_bytes)
        assert u8.features["image_grid_thw"].nbytes <= 64


def test_float32_transport_and_other_families_pass_unchanged(family_dir: Any) -> None:
    """float32 features are left as they are; adapters without the uint8 transport ship float32 under it."""
    adapter = load_adapter(str(family_dir("qwen2_vl")))
    (item,) = adapter.process("image", Image.fromarray(noisy_rgb(64, 48, 1)))
    finished = adapter.finish_features(item.features)
    assert finished["pixel_values"] is item.features["pixel_values"]
    assert RayMMConfig().transport == "uint8" and RayMMConfig(transport="float32").transport == "float32"


def test_patchify_order_is_checked() -> None:
    """The parity test can fail: pixels transposed before finishing no longer match."""
    from ray_mm.models.qwen2_vl_fast import fused_mean_std, patchify_uint8

    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(rng.integers(0, 256, (1, 56, 56, 3), dtype=np.uint8))
    mean, std = fused_mean_std((0.5,) * 3, (0.5,) * 3, 1 / 255)
    kwargs = {"patch_size": 14, "temporal_patch_size": 2, "merge_size": 2, "mean": mean, "std": std}
    good = patchify_uint8(pixels, **kwargs)
    bad = patchify_uint8(pixels.transpose(1, 2).contiguous(), **kwargs)
    assert good.shape == bad.shape == (16, 3 * 2 * 14 * 14)
    assert not torch.equal(good, bad)
    with pytest.raises(ValueError, match="merge blocks"):
        patchify_uint8(pixels[:, :50], **kwargs)
