"""MediaLoader: dispatch per modality, options, content hash, timings, error translation."""

from __future__ import annotations

import asyncio
import base64
import hashlib

import numpy as np
import pytest
from PIL import Image

from ray_mm.config import MediaPolicy, RayMMConfig
from ray_mm.errors import MediaDecodeError, MediaFetchError, MediaPolicyError, MMError, RequestError
from ray_mm.media import DecodedMedia, DecodedVideo, MediaLoader, canonical_options
from ray_mm.media import image as image_mod
from ray_mm.types import MediaSpec
from tests.unit.media_factory import make_audio, make_jpeg, make_video


@pytest.fixture()
def loader(tmp_path) -> MediaLoader:  # type: ignore[no-untyped-def]
    return MediaLoader(RayMMConfig(media=MediaPolicy(allowed_local_media_path=str(tmp_path))))


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def test_image_from_data_uri(loader: MediaLoader) -> None:
    data = make_jpeg(40, 30)
    out = loader.load(MediaSpec("image", 0, _data_uri("image/jpeg", data), {"max_pixels": 1000}, "r1"))
    assert isinstance(out, DecodedMedia) and out.modality == "image"
    assert isinstance(out.data, Image.Image) and out.data.size == (40, 30)
    expected = hashlib.sha256(hashlib.sha256(data).digest() + b"\x00" + canonical_options({"max_pixels": 1000}))
    assert out.content_hash == expected.hexdigest()
    assert set(out.timings) == {"fetch_s", "decode_s"}


def test_hash_depends_on_bytes_and_options_not_key_order(loader: MediaLoader) -> None:
    a, b = make_jpeg(40, 30), make_jpeg(40, 31)
    h = lambda src, opts: loader.load(MediaSpec("image", 0, src, opts, "r")).content_hash  # noqa: E731
    assert h(a, {"x": 1, "y": 2}) == h(a, {"y": 2, "x": 1})
    assert h(a, {"x": 1}) != h(a, {"x": 2})
    assert h(a, {}) != h(b, {})


def test_video_options_and_file_source(loader: MediaLoader, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "clip.mp4").write_bytes(make_video(fps=10, duration_s=4))
    out = loader.load(MediaSpec("video", 0, str(tmp_path / "clip.mp4"), {"nframes": 6, "extra": "kept"}, "r2"))
    assert isinstance(out.data, DecodedVideo) and len(out.data.indices) == 6
    out = loader.load(MediaSpec("video", 0, f"file://{tmp_path}/clip.mp4", {"fps": 1.0}, "r2"))
    assert len(out.data.indices) == 4


def test_audio_and_async(loader: MediaLoader) -> None:
    spec = MediaSpec("audio", 1, make_audio(1.0), {}, "r3")
    out = loader.load(spec)
    assert out.data.dtype == np.float32 and out.data.shape == (16000,)
    out2 = asyncio.run(loader.load_async(spec))
    assert out2.content_hash == out.content_hash and np.array_equal(out2.data, out.data)


def test_in_process_sources(loader: MediaLoader) -> None:
    arr = np.zeros((8, 9, 3), np.uint8)
    img = loader.load(MediaSpec("image", 0, arr, {}, "r"))
    assert img.data.size == (9, 8)
    assert loader.load(MediaSpec("image", 0, arr + 1, {}, "r")).content_hash != img.content_hash
    pil = loader.load(MediaSpec("image", 0, Image.new("RGB", (9, 8)), {}, "r"))
    assert pil.data.size == (9, 8)
    vid = loader.load(MediaSpec("video", 0, np.zeros((4, 8, 8, 3), np.uint8), {}, "r"))
    assert vid.data.frames.shape == (4, 8, 8, 3)
    aud = loader.load(MediaSpec("audio", 0, (np.zeros(32000, np.float32), 32000), {}, "r"))
    assert abs(aud.data.size - 16000) <= 1
    assert asyncio.run(loader.load_async(MediaSpec("image", 0, arr, {}, "r"))).content_hash == img.content_hash


def test_errors_name_the_item(loader: MediaLoader) -> None:
    cases = [
        (MediaSpec("image", 2, b"garbage" * 10, {}, "r17"), MediaDecodeError),
        (MediaSpec("image", 2, "ftp://x/y.jpg", {}, "r17"), MediaPolicyError),
        (MediaSpec("image", 2, "data:image/png;base64,!!!!", {}, "r17"), MediaFetchError),
        (MediaSpec("image", 2, "", {}, "r17"), MediaFetchError),
        (MediaSpec("video", 2, make_jpeg(), {}, "r17"), MediaDecodeError),
        (MediaSpec("image", 2, {"format": "processor_output"}, {}, "r17"), RequestError),
        (MediaSpec("image", 2, 12345, {}, "r17"), MediaFetchError),
    ]
    for spec, kind in cases:
        with pytest.raises(kind) as ei:
            loader.load(spec)
        assert f"{spec.modality} 2 of request r17" in ei.value.message


def test_library_errors_never_escape(loader: MediaLoader, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(img):  # type: ignore[no-untyped-def]
        raise RuntimeError("library blew up")

    monkeypatch.setattr(image_mod, "to_rgb", boom)
    with pytest.raises(MediaDecodeError) as ei:
        loader.load(MediaSpec("image", 0, make_jpeg(), {}, "r9"))
    assert isinstance(ei.value, MMError) and "image 0 of request r9" in ei.value.message
    monkeypatch.setattr(loader.image_io, "load_bytes", lambda data, label, options=None: 1 / 0)
    with pytest.raises(MediaDecodeError):
        loader.load(MediaSpec("image", 0, make_jpeg(), {}, "r9"))
