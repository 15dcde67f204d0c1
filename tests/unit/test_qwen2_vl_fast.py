"""The hand-tuned Qwen2-VL pixel path against the HF processor on the whole request.

Every expected value comes from ``AutoProcessor(...)(text=..., images=..., videos=...)``
(the real HF processor, one call for the request), never from ray-mm code. The adapters
under test are fresh instances whose own HF image / video processors are made to fail,
so a pass means the hand path produced the values, not a silent fallback.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from ray_mm.bench.micro_media import make_bench_model
from ray_mm.models.qwen2_vl import Qwen2VLAdapter, pixels_from_patches
from ray_mm.models.qwen2_vl_fast import FastPathUnsupported, QwenPixelPath
from tests.unit.media_factory import noisy_rgb, noisy_video, rows_per_item

IMG = "<|vision_start|><|image_pad|><|vision_end|>"
VID = "<|vision_start|><|video_pad|><|vision_end|>"


_rgb = noisy_rgb


def _jpeg_decoded(width: int, height: int, seed: int) -> Image.Image:
    """A PIL image as the media layer hands it over: decoded from JPEG bytes."""
    buf = io.BytesIO()
    Image.fromarray(_rgb(width, height, seed)).save(buf, "JPEG", quality=90)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


_video = noisy_video


def _images() -> list[Any]:
    rgba = np.dstack([_rgb(50, 40, 6), np.tile(np.arange(50, dtype=np.uint8) * 5, (40, 1))])
    return [
        Image.fromarray(_rgb(20, 30, 1)),  # tiny: grown to min_pixels
        Image.fromarray(_rgb(37, 91, 2)),  # odd sizes
        _jpeg_decoded(1920, 1080, 3),  # 1080p, decoded like the media layer does
        Image.fromarray(_rgb(64, 48, 4)[..., 0], "L"),  # grayscale: converted to RGB as the processor does
        Image.fromarray(_rgb(2400, 60, 5)),  # very wide (aspect 40)
        Image.fromarray(rgba, "RGBA"),  # alpha composited on white, as the processor does
        _rgb(333, 517, 7),  # an (H, W, 3) uint8 array
    ]


def _hand_only(model_dir: Path, cls: type[Qwen2VLAdapter] = Qwen2VLAdapter) -> Qwen2VLAdapter:
    """A fresh adapter (not the per-process cached one) whose HF pixel processors raise if called."""
    adapter = cls(model_dir)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the HF processor was called: the hand path fell back")

    adapter.processor.image_processor.preprocess = refuse  # type: ignore[method-assign]
    adapter.processor.video_processor.preprocess = refuse  # type: ignore[method-assign]
    return adapter


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with serving pixel budgets (1280*28*28 per image, 768*28*28 per frame)."""
    return make_bench_model(tmp_path_factory.mktemp("qwen2_vl_serving"))


@pytest.fixture(scope="module", params=["tiny_budget", "serving_budget"])
def model_dir(request: pytest.FixtureRequest, qwen2_vl_dir: Path, bench_dir: Path) -> Path:
    return qwen2_vl_dir if request.param == "tiny_budget" else bench_dir


@pytest.fixture(scope="module")
def hf(model_dir: Path) -> Any:
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def adapter(model_dir: Path) -> Qwen2VLAdapter:
    return _hand_only(model_dir)


def _request(images: list[Any], videos: list[np.ndarray]) -> str:
    return " ".join([f"image {IMG}" for _ in images] + [f"video {VID}" for _ in videos])



def test_images_and_videos_float32_match_processor(adapter: Qwen2VLAdapter, hf: Any) -> None:
    images = _images()
    videos = [_video(16, 360, 640, 8), _video(5, 90, 200, 9)]
    ref = hf(text=[_request(images, videos)], images=images, videos=videos, return_tensors="np")
    for kind, items, key, grid_key in (
        ("image", images, "pixel_values", "image_grid_thw"),
        ("video", videos, "pixel_values_videos", "video_grid_thw"),
    ):
        expected = rows_per_item(ref[key], ref[grid_key])
        for data, exp, grid in zip(items, expected, ref[grid_key], strict=True):
            (item,) = adapter.process(kind, data)
            assert item.grid_thw == grid.tolist()  # exact
            np.testing.assert_array_equal(item.features[grid_key], grid[None])
            got = item.features[key]
            assert got.dtype == np.float32 and got.shape == exp.shape
            np.testing.assert_allclose(got, exp, atol=1e-5, rtol=0)
            assert item.num_tokens == int(np.prod(grid)) // hf.image_processor.merge_size**2
    # Odd frame count: the last frame is repeated up to the temporal patch, as the processor pads.
    assert ref["video_grid_thw"][1][0] == 3


def test_uint8_transport_matches_processor(adapter: Qwen2VLAdapter, hf: Any) -> None:
    images = _images()
    videos = [_video(16, 360, 640, 8), _video(5, 90, 200, 9)]
    text = [_request(images, videos)]
    ref = hf(text=text, images=images, videos=videos, return_tensors="np")
    raw = hf(text=text, images=images, videos=videos, do_rescale=False, do_normalize=False, return_tensors="np")
    assert raw["pixel_values"].dtype == np.uint8 and raw["pixel_values_videos"].dtype == np.uint8
    for kind, items, key, grid_key in (
        ("image", images, "pixel_values", "image_grid_thw"),
        ("video", videos, "pixel_values_videos", "video_grid_thw"),
    ):
        exp_float = rows_per_item(ref[key], ref[grid_key])
        exp_raw = rows_per_item(raw[key], raw[grid_key])
        for data, f32, u8, grid in zip(items, exp_float, exp_raw, ref[grid_key], strict=True):
            (item,) = adapter.process(kind, data, {"transport": "uint8"})
            assert item.grid_thw == grid.tolist()
            got = item.features[key]
            # The resized pixels, each frame once, bit for bit those inside the processor's uint8 patches.
            frames = 1 if kind == "image" else len(data)
            assert got.dtype == np.uint8 and got.shape[0] == frames and got.ndim == 4
            np.testing.assert_array_equal(got, pixels_from_patches(adapter.processor.image_processor, u8,
                                                                   grid.tolist(), frames))
            finished = adapter.finish_features(item.features)[key]
            assert finished.dtype == np.float32
            np.testing.assert_array_equal(finished, f32)


def test_per_item_pixel_options(adapter: Qwen2VLAdapter, hf: Any) -> None:
    img = Image.fromarray(_rgb(1920, 1080, 10))
    opts = {"min_pixels": 8 * 28 * 28, "max_pixels": 32 * 28 * 28, "fps": 2.0}  # fps: media-layer key, ignored
    size = {"shortest_edge": opts["min_pixels"], "longest_edge": opts["max_pixels"]}
    ref = hf(text=[IMG], images=[img], size=size, return_tensors="np")
    (item,) = adapter.process("image", img, opts)
    assert item.grid_thw == ref["image_grid_thw"][0].tolist()
    np.testing.assert_allclose(item.features["pixel_values"], ref["pixel_values"], atol=1e-5, rtol=0)


def test_frames_adapter_images_match_processor(model_dir: Path, hf: Any) -> None:
    """The frame-expanding adapter processes each frame as an image through the same hand path."""
    from ray_mm.models.frames import Qwen2VLFramesAdapter

    frames_adapter = _hand_only(model_dir, Qwen2VLFramesAdapter)
    video = _video(3, 120, 160, 11)
    ref = hf(text=[IMG * 3], images=list(video), return_tensors="np")
    items = frames_adapter.process("video", video)
    got = np.concatenate([i.features["pixel_values"] for i in items])
    np.testing.assert_allclose(got, ref["pixel_values"], atol=1e-5, rtol=0)
    assert [i.grid_thw for i in items] == ref["image_grid_thw"].tolist()


def test_pil_modes_and_large_images_match_processor(bench_dir: Path) -> None:
    """Palette, alpha, 16-bit, CMYK, RGB with a transparency key, a cropped view, and a 4K image
    (too big for Pillow's single-block export, so it takes the copying branch)."""
    from transformers import AutoProcessor

    hf = AutoProcessor.from_pretrained(bench_dir)
    adapter = _hand_only(bench_dir)
    rng = np.random.default_rng(22)
    keyed = Image.fromarray(_rgb(160, 120, 23))
    keyed.info["transparency"] = (0, 0, 0)
    images = [
        Image.fromarray(_rgb(160, 120, 24)).convert("P"),
        Image.fromarray(rng.integers(0, 255, (120, 160, 2), dtype=np.uint8), "LA"),
        Image.fromarray(rng.integers(0, 65535, (120, 160), dtype=np.uint16)),
        Image.fromarray(_rgb(160, 120, 25)).convert("CMYK"),
        keyed,
        Image.fromarray(_rgb(600, 500, 26)).crop((13, 7, 411, 333)),
        Image.fromarray(_rgb(3840, 2160, 27)),
    ]
    ref = hf(text=[_request(images, [])], images=images, return_tensors="np")
    for img, exp, grid in zip(images, rows_per_item(ref["pixel_values"], ref["image_grid_thw"]), ref["image_grid_thw"], strict=True):
        (item,) = adapter.process("image", img)
        assert item.grid_thw == grid.tolist(), img.mode
        np.testing.assert_allclose(item.features["pixel_values"], exp, atol=1e-5, rtol=0, err_msg=img.mode)


# --------------------------------------------------------------------------- fallback and HF mode


def test_unsupported_inputs_fall_back_to_the_processor(qwen2_vl_dir: Path) -> None:
    adapter = Qwen2VLAdapter(qwen2_vl_dir)
    from transformers import AutoProcessor

    hf = AutoProcessor.from_pretrained(qwen2_vl_dir)
    path = adapter._pixel_paths["image"]
    assert path is not None
    as_float = _rgb(40, 30, 12).astype(np.float32)
    chw = np.ascontiguousarray(_rgb(40, 30, 13).transpose(2, 0, 1))
    tensor = torch.from_numpy(_rgb(40, 30, 14))
    for data in (as_float, chw, tensor):
        with pytest.raises(FastPathUnsupported):
            path.image(data)
        (item,) = adapter.process("image", data)
        ref = hf.image_processor(images=[data], return_tensors="np")
        np.testing.assert_allclose(item.features["pixel_values"], ref["pixel_values"], atol=1e-5, rtol=0)
        assert item.grid_thw == ref["image_grid_thw"][0].tolist()


def test_hand_only_adapter_really_refuses_the_processor(qwen2_vl_dir: Path) -> None:
    """Guard for the tests above: with the hand path off, the patched adapter must fail."""
    adapter = _hand_only(qwen2_vl_dir)
    img = Image.fromarray(_rgb(40, 30, 20))
    adapter.process("image", img)
    with pytest.raises(AssertionError, match="fell back"):
        adapter.process_hf("image", img)
    with pytest.raises(AssertionError, match="fell back"):
        adapter.process_hf("video", _video(2, 40, 30, 21))


def test_resample_settings() -> None:
    """Bilinear (natively uint8 in torchvision on x86 AVX2+/arm64) is reproduced; nearest / Lanczos are refused."""
    from transformers import Qwen2VLImageProcessor

    img = Image.fromarray(_rgb(333, 517, 28))
    for resample, name in ((3, "bicubic"), (2, "bilinear")):
        proc = Qwen2VLImageProcessor(resample=resample)
        try:
            path = QwenPixelPath.from_processor(proc)
        except FastPathUnsupported:
            assert resample == 2  # bilinear on a CPU where torchvision goes through float32
            continue
        assert path.settings.interpolation == name
        ref = proc(images=[img], return_tensors="np")
        np.testing.assert_array_equal(path.image(img).values, ref["pixel_values"])
    for resample in (0, 1):  # nearest, Lanczos
        with pytest.raises(FastPathUnsupported, match="resample"):
            QwenPixelPath.from_processor(Qwen2VLImageProcessor(resample=resample))


def test_hf_mode_calls_the_processor(qwen2_vl_dir: Path) -> None:
    calls: list[str] = []
    hf_only = Qwen2VLAdapter(qwen2_vl_dir, use_hand_path=False)
    hand = Qwen2VLAdapter(qwen2_vl_dir)
    for a in (hf_only, hand):
        original = a.processor.image_processor.preprocess

        def spy(*args: Any, _orig: Any = original, **kwargs: Any) -> Any:
            calls.append("hf")
            return _orig(*args, **kwargs)

        a.processor.image_processor.preprocess = spy  # type: ignore[method-assign]
    img = Image.fromarray(_rgb(90, 70, 15))
    (ref,) = hf_only.process("image", img)
    assert calls == ["hf"]
    (fast,) = hand.process("image", img)
    assert calls == ["hf"]  # the hand path did not call the processor
    (forced,) = hand.process_hf("image", img)
    assert calls == ["hf", "hf"]
    np.testing.assert_allclose(fast.features["pixel_values"], ref.features["pixel_values"], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(forced.features["pixel_values"], ref.features["pixel_values"])
    (again,) = hand.process("image", img)  # process_hf's override ended with the call
    assert calls == ["hf", "hf"]
    np.testing.assert_array_equal(again.features["pixel_values"], fast.features["pixel_values"])


# --------------------------------------------------------------------------- scratch reuse and ownership


def test_second_call_reuses_scratch_and_results_are_not_aliased(bench_dir: Path) -> None:
    adapter = _hand_only(bench_dir)
    image_path, video_path = adapter._pixel_paths["image"], adapter._pixel_paths["video"]
    assert image_path is not None and video_path is not None
    img = Image.fromarray(_rgb(1920, 1080, 16))
    video = _video(16, 360, 640, 17)

    first_img = adapter.process("image", img)[0].features["pixel_values"]
    first_vid = adapter.process("video", video)[0].features["pixel_values_videos"]
    first_u8 = adapter.process("image", img, {"transport": "uint8"})[0].features["pixel_values"]
    ptrs = (image_path.arena.data_ptrs(), video_path.arena.data_ptrs())
    assert ptrs[0] and ptrs[1]  # scratch was used
    kept = (first_img.copy(), first_vid.copy(), first_u8.copy())

    second_img = adapter.process("image", img)[0].features["pixel_values"]
    second_vid = adapter.process("video", video)[0].features["pixel_values_videos"]
    second_u8 = adapter.process("image", img, {"transport": "uint8"})[0].features["pixel_values"]
    smaller = adapter.process("image", Image.fromarray(_rgb(640, 480, 18)))[0].features["pixel_values"]
    # Steady state: same (or smaller) shapes allocate no new scratch.
    assert (image_path.arena.data_ptrs(), video_path.arena.data_ptrs()) == ptrs

    # Results are fresh arrays: not each other, not scratch.
    results = (first_img, first_vid, first_u8, second_img, second_vid, second_u8, smaller)
    for i, a in enumerate(results):
        assert a.flags.writeable and a.flags.c_contiguous
        for b in results[i + 1 :]:
            assert not np.shares_memory(a, b)
        for arena in (image_path.arena, video_path.arena):
            for buf in arena.buffers().values():
                assert not np.shares_memory(a, buf.numpy())
    np.testing.assert_array_equal(second_img, kept[0])
    np.testing.assert_array_equal(second_vid, kept[1])
    np.testing.assert_array_equal(second_u8, kept[2])
    # Scribbling over every scratch buffer leaves results already handed out untouched.
    for arena in (image_path.arena, video_path.arena):
        for buf in arena.buffers().values():
            buf.fill_(7)
    np.testing.assert_array_equal(first_img, kept[0])
    np.testing.assert_array_equal(first_vid, kept[1])
    np.testing.assert_array_equal(first_u8, kept[2])


def test_arena_is_per_thread(qwen2_vl_dir: Path) -> None:
    from transformers import AutoProcessor

    path = QwenPixelPath.from_processor(AutoProcessor.from_pretrained(qwen2_vl_dir).image_processor)
    img = _rgb(300, 200, 19)
    main_result = path.image(img).values
    arenas = [path.arena]
    results: list[np.ndarray] = []

    def work() -> None:
        arenas.append(path.arena)
        results.append(path.image(img).values)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert arenas[0] is not arenas[1]
    np.testing.assert_array_equal(results[0], main_result)
