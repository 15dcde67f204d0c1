"""ImageMediaIO: modes, EXIF, alpha, header pixel cap, format allow-list, broken input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from ray_mm.config import MediaPolicy
from ray_mm.errors import MediaDecodeError, MediaLimitError
from ray_mm.media.image import ImageMediaIO
from tests.unit import media_factory as mf

L = "image 2 of request r17"


@pytest.fixture()
def io_() -> ImageMediaIO:
    return ImageMediaIO(MediaPolicy())


def _check_rgb(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    assert img.mode == "RGB" and img.size == size
    arr = np.asarray(img)
    assert arr.dtype == np.uint8 and arr.shape == (size[1], size[0], 3)
    return arr


@pytest.mark.parametrize("make", [mf.make_jpeg, mf.make_png, mf.make_webp])
def test_rgb_formats(io_: ImageMediaIO, make) -> None:  # type: ignore[no-untyped-def]
    arr = _check_rgb(io_.load_bytes(make(64, 48), label=L), (64, 48))
    assert np.abs(arr.astype(int) - mf.gradient(64, 48)).mean() < 6


def test_grayscale_becomes_rgb(io_: ImageMediaIO) -> None:
    arr = _check_rgb(io_.load_bytes(mf.make_gray_jpeg(), label=L), (64, 48))
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])


def test_cmyk_becomes_rgb(io_: ImageMediaIO) -> None:
    assert Image.open(io.BytesIO(mf.make_cmyk_jpeg())).mode == "CMYK"
    arr = _check_rgb(io_.load_bytes(mf.make_cmyk_jpeg(), label=L), (64, 48))
    assert np.abs(arr.astype(int) - mf.gradient(64, 48)).mean() < 12


def test_rgba_composited_on_white(io_: ImageMediaIO) -> None:
    arr = _check_rgb(io_.load_bytes(mf.make_rgba_png(64, 48), label=L), (64, 48))
    assert (arr[:, :32] == 255).all()  # transparent half: white, not black
    assert np.array_equal(arr[:, 32:], mf.gradient(64, 48)[:, 32:])  # opaque half untouched


def test_palette_and_16bit(io_: ImageMediaIO) -> None:
    _check_rgb(io_.load_bytes(mf.make_image("PNG", 20, 10, mode="P"), label=L), (20, 10))
    buf = io.BytesIO()
    Image.fromarray(np.full((10, 20), 65535, np.uint16)).save(buf, format="PNG")
    arr = _check_rgb(io_.load_bytes(buf.getvalue(), label=L), (20, 10))
    assert (arr == 255).all()


def test_exif_orientation_applied(io_: ImageMediaIO) -> None:
    img = io_.load_bytes(mf.make_exif_rotated_jpeg(64, 48, orientation=6), label=L)
    arr = _check_rgb(img, (48, 64))  # rotated 90 degrees: width and height swap
    # Orientation 6 = rotate 90 clockwise for display: the original top-left (dark red) goes top-right.
    expected = np.rot90(mf.gradient(64, 48), k=-1)
    assert np.abs(arr.astype(int) - expected).mean() < 6


@pytest.mark.parametrize("orientation", range(0, 10))
def test_every_exif_orientation_matches_pillows_exif_transpose(io_: ImageMediaIO, orientation: int) -> None:
    data = mf.make_exif_rotated_jpeg(40, 24, orientation=orientation)
    reference = Image.open(io.BytesIO(data))
    reference.load()
    expected = ImageOps.exif_transpose(reference).convert("RGB")  # the library's own answer
    assert np.array_equal(np.asarray(io_.load_bytes(data, label=L)), np.asarray(expected))


def test_an_upright_image_is_not_copied(io_: ImageMediaIO) -> None:
    # exif_transpose copies every upright image (some 8% of a 1080p image's media path): not here.
    img = Image.open(io.BytesIO(mf.make_exif_rotated_jpeg(40, 24, orientation=1)))
    assert io_.load_pil(img, label=L) is img
    plain = Image.fromarray(mf.gradient(40, 24), "RGB")
    assert io_.load_pil(plain, label=L) is plain


def test_animated_gif_first_frame(io_: ImageMediaIO) -> None:
    arr = _check_rgb(io_.load_bytes(mf.make_gif(frames=5), label=L), (32, 32))
    assert arr.max() < 10  # frame 0 is black; later frames are brighter


@pytest.mark.parametrize("side,shown", [(50000, "2500000000 pixels"), (8000, "8000x8000")])
def test_pixel_cap_checked_from_header(io_: ImageMediaIO, monkeypatch: pytest.MonkeyPatch, side: int, shown: str) -> None:
    # 50000^2 trips Pillow's own bomb check inside Image.open; 8000^2 is only over our 40M cap.
    data = mf.make_png_header(side, side)
    loaded: list[bool] = []
    monkeypatch.setattr(Image.Image, "load", lambda self: loaded.append(True))
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", lambda self: loaded.append(True))
    with pytest.raises(MediaLimitError) as ei:
        io_.load_bytes(data, label=L)
    assert ei.value.status == 413 and L in ei.value.message and shown in ei.value.message
    assert "over the cap" in ei.value.message
    assert loaded == []  # refused before any decode


def test_policy_pixel_cap(io_: ImageMediaIO) -> None:
    small = ImageMediaIO(MediaPolicy(max_image_pixels=1000))
    with pytest.raises(MediaLimitError):
        small.load_bytes(mf.make_jpeg(64, 48), label=L)
    with pytest.raises(MediaLimitError):
        small.load_array(np.zeros((100, 100, 3), np.uint8), label=L)


@pytest.mark.parametrize(
    "data",
    [b"", mf.make_jpeg(64, 48)[:300], b"hello, I am definitely a picture" * 10, b"\x89PNG\r\n\x1a\n" + b"\x00" * 40],
    ids=["empty", "truncated-jpeg", "text", "bad-png"],
)
def test_broken_input_is_400(io_: ImageMediaIO, data: bytes) -> None:
    with pytest.raises(MediaDecodeError) as ei:
        io_.load_bytes(data, label=L)
    assert ei.value.status == 400 and L in ei.value.message


def test_format_allow_list() -> None:
    only_png = ImageMediaIO(MediaPolicy(image_formats=["PNG"]))
    only_png.load_bytes(mf.make_png(), label=L)
    with pytest.raises(MediaDecodeError):
        only_png.load_bytes(mf.make_jpeg(), label=L)


def test_in_process_inputs(io_: ImageMediaIO) -> None:
    arr = mf.gradient(30, 20)
    assert np.array_equal(np.asarray(io_.load_array(arr, label=L)), arr)
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    assert (np.asarray(io_.load_pil(rgba, label=L)) == 255).all()
    for bad in [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 2), np.uint8)]:
        with pytest.raises(MediaDecodeError):
            io_.load_array(bad, label=L)


def test_base64_and_file_helpers(io_: ImageMediaIO, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import base64

    data = mf.make_png(8, 8)
    from_b64 = _check_rgb(io_.load_base64("image/png", base64.b64encode(data).decode(), label=L), (8, 8))
    (tmp_path / "a.png").write_bytes(data)
    from_file = _check_rgb(io_.load_file(tmp_path / "a.png", label=L), (8, 8))
    assert np.array_equal(from_b64, from_file)
