"""Video: the qwen-vl-utils sampler (checked against torch) and the one-pass PyAV decoder."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from ray_mm.config import MediaPolicy, VideoSampling
from ray_mm.errors import MediaDecodeError, MediaLimitError, RequestError
from ray_mm.media.video import VideoMediaIO, linspace_round, sample_frame_indices
from tests.unit.media_factory import frame_index_of, make_audio, make_video

L = "video 0 of request r1"


def qwen_reference(total: int, video_fps: float, fps: float = 2.0, nframes: int | None = None) -> list[int]:
    """qwen-vl-utils smart_nframes + torch.linspace, written out independently of the module."""
    if nframes is not None:
        n = round(nframes / 2) * 2
    else:
        min_frames = math.ceil(4 / 2) * 2
        max_frames = math.floor(min(768, total) / 2) * 2
        n = total / video_fps * fps
        n = min(min(max(n, min_frames), max_frames), total)
        n = math.floor(n / 2) * 2
    assert 2 <= n <= total
    return torch.linspace(0, total - 1, n).round().long().tolist()


@pytest.mark.parametrize(
    "total,video_fps,fps,nframes",
    [
        (300, 30.0, 2.0, None), (250, 25.0, 2.0, None), (301, 29.97, 2.0, None), (17, 24.0, 2.0, None),
        (7, 10.0, 2.0, None), (3, 30.0, 2.0, None), (100000, 30.0, 2.0, None), (1000, 23.976, 1.0, None),
        (3600, 60.0, 0.5, None), (90, 30.0, 30.0, None), (300, 30.0, 2.0, 16), (300, 30.0, 2.0, 7),
        (300, 30.0, 2.0, 5), (124, 25.0, 2.0, 124), (999, 30.0, 2.0, 333),
    ],
)  # fmt: skip
def test_sampler_matches_qwen_vl_utils(total: int, video_fps: float, fps: float, nframes: int | None) -> None:
    assert sample_frame_indices(total, video_fps, fps=fps, nframes=nframes) == qwen_reference(total, video_fps, fps, nframes)


def test_linspace_round_equals_torch_everywhere() -> None:
    for total in list(range(2, 400)) + [1000, 4501, 9000, 86400, 100003]:
        for n in {2, 3, 4, 6, 16, 30, 64, 100, 768, total}:
            if n > total:
                continue
            ref = torch.linspace(0, total - 1, n).round().long().tolist()
            assert linspace_round(total, n) == ref, (total, n)


def test_sampler_errors_when_too_short() -> None:
    with pytest.raises(ValueError):
        sample_frame_indices(1, 30.0)
    with pytest.raises(ValueError):
        sample_frame_indices(10, 30.0, nframes=12)
    with pytest.raises(ValueError):
        sample_frame_indices(123, 25.0, nframes=123)  # rounds to 124 > 123, as in qwen-vl-utils


# ----------------------------------------------------------------------- decode


def _check_content(video) -> None:  # type: ignore[no-untyped-def]
    assert video.frames.dtype == np.uint8 and video.frames.shape[0] == len(video.indices)
    assert [frame_index_of(f) for f in video.frames] == [i % 256 for i in video.indices]


def test_decode_one_pass_few_seeks() -> None:
    data = make_video(width=128, height=64, fps=30, duration_s=10, gop=30)
    v = VideoMediaIO(MediaPolicy()).load_bytes(data, label=L)
    assert v.total_frames == 300 and v.video_fps == 30.0
    assert v.indices == qwen_reference(300, 30.0)
    assert v.frames.shape == (20, 64, 128, 3)
    _check_content(v)
    assert v.seeks <= 10 < len(v.indices)  # at most one per GOP, never one per frame
    assert v.decoded_frames <= v.indices[-1] + 1


def test_decode_without_keyframes_never_seeks() -> None:
    data = make_video(width=128, height=64, fps=30, duration_s=4, gop=1000)
    v = VideoMediaIO(MediaPolicy()).load_bytes(data, label=L, options={"nframes": 8})
    _check_content(v)
    assert v.seeks == 0
    assert v.indices[-1] + 1 <= v.decoded_frames <= v.indices[-1] + 4  # up to the last wanted frame, then stop


def test_decode_with_bframes() -> None:
    data = make_video(width=128, height=64, fps=25, duration_s=6, gop=12, bframes=3)
    v = VideoMediaIO(MediaPolicy()).load_bytes(data, label=L)
    assert v.total_frames == 150
    _check_content(v)
    assert v.seeks < len(v.indices)


def test_matroska_header_without_frame_count() -> None:
    data = make_video(width=128, height=64, fps=10, duration_s=3, gop=10, container="matroska")
    v = VideoMediaIO(MediaPolicy()).load_bytes(data, label=L)
    assert v.total_frames == 30  # counted by the demux pass: mkv headers carry no frame count
    _check_content(v)


def test_options_nframes_fps_and_clamp() -> None:
    data = make_video(fps=10, duration_s=6, gop=10)
    io_ = VideoMediaIO(MediaPolicy())
    assert len(io_.load_bytes(data, label=L, options={"nframes": 7}).indices) == 8  # round_by_factor(7, 2)
    assert len(io_.load_bytes(data, label=L, options={"fps": 1.0}).indices) == 6
    capped = VideoMediaIO(MediaPolicy(max_video_frames=8))
    v = capped.load_bytes(data, label=L, options={"nframes": 40})
    assert len(v.indices) == 8
    _check_content(v)
    assert len(capped.load_bytes(data, label=L, options={"fps": 10.0}).indices) == 8
    with pytest.raises(RequestError):
        io_.load_bytes(data, label=L, options={"nframes": 4, "fps": 2})
    with pytest.raises(MediaDecodeError):
        io_.load_bytes(data, label=L, options={"nframes": 100})  # more than the video has


def test_sampling_config_used() -> None:
    data = make_video(fps=10, duration_s=6, gop=10)
    v = VideoMediaIO(MediaPolicy(), VideoSampling(fps=1.0)).load_bytes(data, label=L)
    assert len(v.indices) == 6


def test_frame_pixel_cap_from_header() -> None:
    data = make_video(width=128, height=64, duration_s=1)
    with pytest.raises(MediaLimitError) as ei:
        VideoMediaIO(MediaPolicy(max_video_frame_pixels=128 * 63)).load_bytes(data, label=L)
    assert ei.value.status == 413 and L in ei.value.message


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00" * 1000, b"not a video at all" * 50, make_video(duration_s=2)[:600], make_audio(1.0, fmt="m4a")],
    ids=["empty", "zeros", "text", "truncated", "audio-only"],
)
def test_bad_video_is_400(data: bytes) -> None:
    with pytest.raises(MediaDecodeError) as ei:
        VideoMediaIO(MediaPolicy()).load_bytes(data, label=L)
    assert ei.value.status == 400 and L in ei.value.message


def test_container_allow_list() -> None:
    only_mkv = VideoMediaIO(MediaPolicy(video_formats=["matroska"]))
    with pytest.raises(MediaDecodeError):
        only_mkv.load_bytes(make_video(duration_s=1), label=L)


def test_in_process_frames() -> None:
    io_ = VideoMediaIO(MediaPolicy())
    arr = np.zeros((6, 8, 10, 3), np.uint8)
    v = io_.load_frames(arr, label=L)
    assert v.frames.shape == (6, 8, 10, 3) and v.indices == list(range(6))
    v = io_.load_frames([Image.new("RGB", (10, 8))] * 4, label=L)
    assert v.frames.shape == (4, 8, 10, 3)
    with pytest.raises(MediaDecodeError):
        io_.load_frames(np.zeros((6, 8, 10), np.uint8), label=L)
    with pytest.raises(MediaLimitError):
        VideoMediaIO(MediaPolicy(max_video_frames=4)).load_frames(arr, label=L)


def test_decoded_bytes_cap_from_header_before_any_frame_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_video(width=128, height=64, fps=10, duration_s=1)
    exact = 4 * 128 * 64 * 3  # nframes=4 sampled frames of 128x64 RGB
    ok = VideoMediaIO(MediaPolicy(max_video_decoded_bytes=exact)).load_bytes(data, label=L, options={"nframes": 4})
    assert ok.frames.nbytes == exact

    def no_decode(*args: object, **kwargs: object) -> None:
        raise AssertionError("frames were decoded before the cap was checked")

    monkeypatch.setattr(VideoMediaIO, "_decode_pass", no_decode)
    with pytest.raises(MediaLimitError) as ei:
        VideoMediaIO(MediaPolicy(max_video_decoded_bytes=exact - 1)).load_bytes(data, label=L, options={"nframes": 4})
    assert ei.value.status == 413 and L in ei.value.message and str(exact) in ei.value.message


def test_decoded_bytes_cap_on_given_frames() -> None:
    frames = np.zeros((6, 32, 48, 3), dtype=np.uint8)
    with pytest.raises(MediaLimitError) as ei:
        VideoMediaIO(MediaPolicy(max_video_decoded_bytes=frames.nbytes - 1)).load_frames(frames, label=L)
    assert ei.value.status == 413
    assert VideoMediaIO(MediaPolicy(max_video_decoded_bytes=frames.nbytes)).load_frames(frames, label=L).frames.shape == frames.shape
