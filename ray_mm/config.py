"""Configuration: pydantic models (``extra="forbid"``) loaded from YAML.

One ``RayMMConfig`` holds everything; each section is usable on its own.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


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
    max_precomputed_bytes: int = Field(
        default=256 << 20,
        gt=0,
        description="Cap on the array bytes of one precomputed item (processor_output / precomputed_embedding), "
        "estimated without converting the arrays and checked at admission, before any item is dispatched.",
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
        default="uint8",
        description="Feature transport. 'uint8' (default): media workers ship each image / video once as its "
        "resized uint8 pixels (1/8 of the float32 bytes for an image) and the GPU worker rescales, normalises and "
        "patchifies them into the processor's float32 values (ModelAdapter.finish_features), for adapters that "
        "take it (the Qwen-VL families); the others ship float32. 'float32': the processor's output as is.",
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


class ConfigError(ValueError):
    """A config file that cannot be used; the message is one line (the CLI prints it and exits 2)."""


M = typing.TypeVar("M", bound=BaseModel)


def load_config(path: str | Path | None) -> RayMMConfig:
    """Read a YAML file into ``RayMMConfig``; ``None`` gives the defaults.

    Raises ``ConfigError`` (a ``ValueError``) with one line naming the file and the problem: a
    file that cannot be read, YAML that does not parse, or a key or value the model refuses (for a
    misspelt key, the nearest valid name).
    """
    if path is None:
        return RayMMConfig()
    return validate_config(RayMMConfig, read_yaml_mapping(path), path)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The YAML mapping in ``path`` (an empty file is ``{}``); ``ConfigError`` otherwise."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"cannot read config file {path}: {reason}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of keys, got a {type(data).__name__}")
    return data


def validate_config(model: type[M], data: Any, path: str | Path, prefix: str = "") -> M:
    """``model.model_validate(data)``, a refusal raised as ``ConfigError`` naming ``path`` and the key
    (``prefix`` is where ``data`` sits in the file, e.g. ``"pool."``)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"config file {path}: {describe_validation_error(exc, model, prefix)}") from exc


def describe_validation_error(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    """One line for a pydantic refusal of ``model``: its first problem by dotted key (after
    ``prefix``), with, for an unknown key, the nearest valid name at that level (``difflib``)."""
    errors = exc.errors()
    if not errors:
        return str(exc).splitlines()[0]
    first = errors[0]
    parts = [str(p) for p in first.get("loc", ())]
    key = prefix + ".".join(parts)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    if first.get("type") == "extra_forbidden" and parts:
        valid = _field_names(model, parts[:-1])
        near = difflib.get_close_matches(parts[-1], valid, n=1)
        if near:
            hint = f"; did you mean '{prefix}{'.'.join([*parts[:-1], near[0]])}'?"
        else:
            hint = f"; valid keys here: {', '.join(sorted(valid))}" if valid else ""
        return f"unknown key '{key}'{hint}{more}"
    message = " ".join(str(first.get("msg", "invalid")).split())
    return f"invalid value for '{key}': {message}{more}" if key else f"{message}{more}"


def _field_names(model: type[BaseModel], path: list[str]) -> list[str]:
    """Field names of the model found by following ``path`` (nested sections) from ``model``;
    empty where the path leaves the models (a free-form dict)."""
    current: type[BaseModel] | None = model
    for part in path:
        if current is None:
            return []
        if part.isdigit():  # an index into a list of models: same model
            continue
        field = current.model_fields.get(part)
        current = _model_in(field.annotation) if field is not None else None
    return list(current.model_fields) if current is not None else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (``X``, ``X | None``, ``list[X]``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
