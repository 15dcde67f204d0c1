"""Generate test media in memory with Pillow and PyAV (no files, no network).

Import from any test::

    from tests.unit.media_factory import make_jpeg, make_png, make_video, make_audio

Images: ``make_image(fmt, w, h, mode=...)`` and the shortcuts ``make_jpeg``,
``make_png``, ``make_webp``, ``make_gray_jpeg``, ``make_cmyk_jpeg``,
``make_rgba_png``, ``make_exif_rotated_jpeg``, ``make_gif``,
``make_png_header(w, h)`` (a PNG that only *declares* its size). Videos:
``make_video(width, height, fps, duration_s, gop, bframes)`` writes H.264 mp4
whose frame ``i`` shows ``i`` in binary as eight black/white bars, read back
with ``frame_index_of(rgb_frame)``. Audio: ``make_audio(duration_s,
sample_rate, channels, fmt)`` for ``wav``, ``aac`` (ADTS), ``m4a`` or ``flac``.
"""

from __future__ import annotations

import io
import struct
import zlib
from fractions import Fraction
from typing import Any

import av
import numpy as np
from PIL import Image

# ----------------------------------------------------------------------- images


def gradient(width: int, height: int) -> np.ndarray:
    """An HxWx3 uint8 gradient: every pixel differs from its neighbours, so rotations are visible."""
    ys, xs = np.mgrid[0:height, 0:width]
    r = (xs * 255 // max(width - 1, 1)).astype(np.uint8)
    g = (ys * 255 // max(height - 1, 1)).astype(np.uint8)
    b = np.full_like(r, 64)
    return np.stack([r, g, b], axis=-1)


def make_image(fmt: str, width: int = 64, height: int = 48, mode: str = "RGB", **save_kw: object) -> bytes:
    """Encode a gradient image of ``mode`` as ``fmt`` ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")."""
    img = Image.fromarray(gradient(width, height), "RGB")
    if mode == "RGBA":
        img = img.convert("RGBA")
        alpha = np.zeros((height, width), np.uint8)
        alpha[:, width // 2 :] = 255  # left half transparent, right half opaque
        img.putalpha(Image.fromarray(alpha, "L"))
    elif mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save_kw)
    return buf.getvalue()


def make_jpeg(width: int = 64, height: int = 48, quality: int = 90) -> bytes:
    return make_image("JPEG", width, height, quality=quality)


def make_png(width: int = 64, height: int = 48, mode: str = "RGB") -> bytes:
    return make_image("PNG", width, height, mode=mode)


def make_webp(width: int = 64, height: int = 48) -> bytes:
    return make_image("WEBP", width, height, quality=90)


def make_gray_jpeg(width: int = 64, height: int = 48) -> bytes:
    return make_image("JPEG", width, height, mode="L", quality=95)


def make_cmyk_jpeg(width: int = 64, height: int = 48) -> bytes:
    return make_image("JPEG", width, height, mode="CMYK", quality=95)


def make_rgba_png(width: int = 64, height: int = 48) -> bytes:
    """Left half fully transparent, right half opaque gradient."""
    return make_png(width, height, mode="RGBA")


def make_exif_rotated_jpeg(width: int = 64, height: int = 48, orientation: int = 6) -> bytes:
    """A ``width`` x ``height`` JPEG whose EXIF says to rotate it (6: 90 degrees clockwise)."""
    img = Image.fromarray(gradient(width, height), "RGB")
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def make_gif(width: int = 32, height: int = 32, frames: int = 5) -> bytes:
    """An animated GIF; frame ``i`` is a flat grey of level ``40 * i``."""
    imgs = [Image.new("RGB", (width, height), (40 * i,) * 3) for i in range(frames)]
    buf = io.BytesIO()
    imgs[0].save(buf, format="GIF", save_all=True, append_images=imgs[1:], duration=100, loop=0)
    return buf.getvalue()


def make_png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` but carries one tiny IDAT: a pixel-bomb header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


# ----------------------------------------------------------------------- video

_BITS = 8


def index_frame(i: int, width: int, height: int) -> np.ndarray:
    """Frame ``i``: eight vertical bars, bar ``b`` white when bit ``b`` of ``i`` is set."""
    frame = np.zeros((height, width, 3), np.uint8)
    bar = width // _BITS
    for b in range(_BITS):
        if (i >> b) & 1:
            frame[:, b * bar : (b + 1) * bar] = 255
    return frame


def frame_index_of(frame: np.ndarray) -> int:
    """Inverse of ``index_frame`` (robust to H.264 loss): read the bars' mean brightness."""
    width = frame.shape[1]
    bar = width // _BITS
    value = 0
    for b in range(_BITS):
        if frame[:, b * bar + bar // 4 : (b + 1) * bar - bar // 4].mean() > 127:
            value |= 1 << b
    return value


def make_video(
    width: int = 128,
    height: int = 64,
    fps: int = 10,
    duration_s: float = 2.0,
    gop: int = 10,
    bframes: int = 0,
    container: str = "mp4",
    codec: str = "libx264",
) -> bytes:
    """An H.264 clip with a keyframe every ``gop`` frames; frame ``i`` encodes ``i % 256`` (see ``index_frame``)."""
    n = int(round(fps * duration_s))
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_count = 1
        if codec == "libx264":
            stream.codec_context.options = {
                "preset": "ultrafast",
                "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}",
            }
        else:
            stream.codec_context.gop_size = gop
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(index_frame(i % 256, width, height), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps) if float(fps).is_integer() else stream.codec_context.time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


# ----------------------------------------------------------------------- audio

_AUDIO = {  # fmt -> (container, codec, sample format)
    "wav": ("wav", "pcm_s16le", "s16"),
    "aac": ("adts", "aac", "fltp"),
    "m4a": ("mp4", "aac", "fltp"),
    "flac": ("flac", "flac", "s16"),
}


def make_audio(
    duration_s: float = 1.0, sample_rate: int = 44100, channels: int = 2, fmt: str = "wav", freq: float = 440.0
) -> bytes:
    """A sine tone of ``duration_s`` seconds encoded as ``fmt`` (wav, aac, m4a, flac)."""
    container, codec, sample_fmt = _AUDIO[fmt]
    n = int(round(duration_s * sample_rate))
    t = np.arange(n) / sample_rate
    wave = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    layout = "mono" if channels == 1 else "stereo"
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=sample_rate, layout=layout)
        stream.codec_context.thread_count = 1
        frame_size = stream.codec_context.frame_size or 1024
        pts = 0
        for start in range(0, n, frame_size):
            chunk = wave[start : start + frame_size]
            if sample_fmt == "s16":
                data = np.tile((chunk * 32767).astype(np.int16), (channels, 1)).T.reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format="s16", layout=layout)
            else:
                frame = av.AudioFrame.from_ndarray(np.tile(chunk, (channels, 1)), format="fltp", layout=layout)
            frame.sample_rate = sample_rate
            frame.pts = pts
            pts += len(chunk)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def noisy_rgb(width: int, height: int, seed: int) -> np.ndarray:
    """HWC uint8: a smooth gradient plus noise, so resizes are exercised on structure and high frequencies."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)), (x + y) % 256], axis=-1)
    return np.clip(base + rng.integers(-40, 40, size=(height, width, 3)), 0, 255).astype(np.uint8)


def noisy_video(frames: int = 8, height: int = 360, width: int = 640, seed: int = 7) -> np.ndarray:
    """(T, H, W, 3) uint8 frames: a moving pattern plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames)[:, None, None, None]
    y = np.arange(height)[None, :, None, None]
    x = np.arange(width)[None, None, :, None]
    c = np.arange(3)[None, None, None, :]
    base = (x * 2 + y + t * 17 + c * 50) % 256
    return np.clip(base + rng.integers(-20, 20, size=(frames, height, width, 3)), 0, 255).astype(np.uint8)


def sampled_video_meta(num_frames: int, total: int, fps: float) -> dict[str, Any]:
    """Video metadata as the HF video processors take it: ``num_frames`` indices spread over ``total``."""
    indices = np.linspace(0, total - 1, num_frames).round().astype(int).tolist()
    return {"fps": fps, "total_num_frames": total, "frames_indices": indices, "duration": total / fps}


def rows_per_item(values: np.ndarray, grids: np.ndarray) -> list[np.ndarray]:
    """Split a request's concatenated patches into per-item row blocks by grid."""
    out, offset = [], 0
    for grid in grids:
        n = int(np.prod(grid))
        out.append(values[offset : offset + n])
        offset += n
    assert offset == values.shape[0]
    return out
