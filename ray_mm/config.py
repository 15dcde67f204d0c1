"""Configuration: pydantic models (``extra="forbid"``) loaded from YAML.

One ``RayMMConfig`` holds everything; each section is usable on its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MediaPolicy(_Strict):
    """What media may be fetched and opened, and how much of it."""

    allowed_domains: list[str] | None = Field(
        default=None, description="If set, only these host names (exact or '.suffix') may be fetched."
    )
    allow_private_addresses: bool = Field(
        default=False,
        description="Allow private, loopback, link-local and CGNAT targets. Off by default (SSRF guard); "
        "tests serving on 127.0.0.1 turn it on.",
    )
    allowed_local_media_path: str | None = Field(
        default=None, description="Root directory under which file:// URLs and plain paths may be read. None: no local files."
    )
    max_redirects: int = Field(default=5, ge=0, le=20, description="Redirect hops followed, each re-checked.")
    fetch_timeout_s: float = Field(default=10.0, gt=0, description="Timeout for one fetch, connect to last byte.")
    max_download_bytes: int = Field(default=64 << 20, gt=0, description="Cap on bytes of one media item, counted while streaming.")
    max_url_chars: int = Field(default=8192, gt=0, description="Longest accepted http(s) URL; data: URIs are capped by bytes.")
    max_image_pixels: int = Field(default=40_000_000, gt=0, description="Cap on width*height read from an image header before decoding.")
    max_video_frames: int = Field(default=768, ge=4, description="Cap on sampled frames per video; a client's nframes is clamped to it.")
    max_video_frame_pixels: int = Field(default=4096 * 2160, gt=0, description="Cap on width*height of a video frame.")
    max_video_decoded_bytes: int = Field(
        default=1 << 30, gt=0,
        description="Cap on one video's sampled frames as decoded RGB (frames x width x height x 3 bytes), "
        "checked from the header before any frame is decoded.",
    )
    max_audio_duration_s: float = Field(default=600.0, gt=0, description="Cap on the duration of one audio item.")
    max_items_per_request: int = Field(
        default=64, gt=0, description="Cap on media items (images, videos, audio) in one request, checked before any is fetched."
    )
    image_formats: list[str] = Field(
        default=["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"], description="Pillow formats opened as images."
    )
    video_formats: list[str] = Field(
        default=["mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi", "mpegts", "gif"],
        description="PyAV container names (any in a comma list) opened as video.",
    )
    audio_formats: list[str] = Field(
        default=["wav", "mp3", "flac", "ogg", "aac", "mov", "mp4", "m4a", "matroska", "webm", "adts"],
        description="PyAV container names (any in a comma list) opened as audio.",
    )


class VideoSampling(_Strict):
    """Frame sampling defaults (the qwen-vl-utils rule)."""

    fps: float = Field(default=2.0, gt=0, description="Frames sampled per second of video unless nframes is given.")
    min_frames: int = Field(default=4, ge=2, description="Fewest frames sampled.")
    frame_factor: int = Field(default=2, ge=1, description="Sampled frame count is a multiple of this.")


class AudioSampling(_Strict):
    """Audio decode target."""

    sample_rate: int = Field(default=16000, gt=0, description="Resample to this rate (Hz), mono float32.")


class RayMMConfig(_Strict):
    """Top-level configuration for ``ray-mm align`` and ``ray-mm run``."""

    media: MediaPolicy = Field(default_factory=MediaPolicy, description="Fetch policy and caps.")
    video: VideoSampling = Field(default_factory=VideoSampling, description="Video sampling.")
    audio: AudioSampling = Field(default_factory=AudioSampling, description="Audio decode.")
    transport: Literal["float32", "uint8"] = Field(
        default="float32",
        description="Feature transport. 'uint8': media workers ship resized uint8 patches (4x fewer bytes) and the "
        "GPU worker normalises them (ModelAdapter.finish_features); 'float32': the processor's output as is.",
    )
    jpeg_draft: bool = Field(
        default=False,
        description="Opt-in DCT-scaled JPEG decode: decode at 1/2, 1/4 or 1/8 scale when that still covers the "
        "processor's target size. Faster; pixels differ slightly from a full decode (see BENCHMARKS.md).",
    )
    cache_bytes: int = Field(
        default=256 << 20,
        ge=0,
        description="Per-process LRU of processed items keyed by content hash (bytes + options), bounded by "
        "feature bytes; a repeat is fetched but not decoded again. 0 disables it.",
    )
    request_timeout_s: float = Field(default=120.0, gt=0, description="End-to-end deadline of one request.")
    pool: dict[str, Any] = Field(default_factory=dict, description="Pool section, validated by the pool's own model.")


def load_config(path: str | Path | None) -> RayMMConfig:
    """Read a YAML file into ``RayMMConfig``; ``None`` gives the defaults."""
    if path is None:
        return RayMMConfig()
    data = yaml.safe_load(Path(path).read_text()) or {}
    return RayMMConfig.model_validate(data)
