"""Synthetic media for demos, tests and benchmarks: JPEG/PNG images, H.264 clips, audio.

Generated locally with Pillow and PyAV so nothing is downloaded. Content is a
deterministic pattern seeded by the arguments, so equal arguments give equal bytes.
"""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
from PIL import Image


def _pattern(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    base = np.stack([(x + y) / 2, np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width))], axis=-1)
    noise = rng.integers(0, 40, size=(height // 8 + 1, width // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:height, :width]
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def make_image(width: int, height: int, fmt: str = "JPEG", mode: str = "RGB", seed: int = 0, quality: int = 90) -> bytes:
    """Encoded image bytes of the given size, format and Pillow mode."""
    img = Image.fromarray(_pattern(width, height, seed), "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    kwargs = {"quality": quality} if fmt.upper() in ("JPEG", "WEBP") else {}
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def make_video(
    width: int = 320, height: int = 240, fps: int = 10, seconds: float = 2.0, gop: int = 10, seed: int = 0
) -> bytes:
    """An H.264 MP4 clip with a keyframe every ``gop`` frames; each frame differs visibly."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.options = {"preset": "ultrafast", "bf": "0"}
        stream.time_base = Fraction(1, fps)
        base = _pattern(width, height, seed)
        for i in range(int(round(fps * seconds))):
            frame = np.roll(base, shift=i * 4, axis=1)
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = i
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def make_audio(seconds: float = 2.0, sample_rate: int = 44100, fmt: str = "wav", freq: float = 440.0) -> bytes:
    """A sine tone encoded as ``wav`` (PCM) or ``aac`` (ADTS) or ``m4a``."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    samples = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    buf = io.BytesIO()
    container_fmt = {"wav": "wav", "aac": "adts", "m4a": "mp4"}[fmt]
    codec = {"wav": "pcm_s16le", "aac": "aac", "m4a": "aac"}[fmt]
    with av.open(buf, mode="w", format=container_fmt) as container:
        stream = container.add_stream(codec, rate=sample_rate)
        stream.layout = "mono"
        sample_fmt = "s16" if codec == "pcm_s16le" else "fltp"
        chunk = 1024
        for start in range(0, len(samples), chunk):
            piece = samples[start : start + chunk]
            data = (piece * 32767).astype(np.int16)[None, :] if sample_fmt == "s16" else piece[None, :]
            frame = av.AudioFrame.from_ndarray(data, format=sample_fmt, layout="mono")
            frame.sample_rate = sample_rate
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()
