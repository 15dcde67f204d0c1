"""``MediaLoader``: one ``MediaSpec`` in, one ``DecodedMedia`` out (fetch, decode, hash, time).

Owns the glue between the connector and the per-modality decoders: picking
the decoder, reading the per-item options it understands (video ``fps``,
``nframes``, ``min_frames``, ``max_frames``; everything else passes through
for the model adapter), the content hash, stage timings, and the guarantee
that only ``MMError`` leaves this module.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ray_mm.config import RayMMConfig
from ray_mm.errors import MediaDecodeError, MediaFetchError, MMError, RequestError
from ray_mm.media.audio import AudioMediaIO
from ray_mm.media.connector import MediaConnector
from ray_mm.media.image import ImageMediaIO
from ray_mm.media.video import DecodedVideo, VideoMediaIO
from ray_mm.types import MediaSpec, Modality

PRECOMPUTED_FORMATS = frozenset({"processor_output", "precomputed_embedding"})


@dataclass
class FetchedMedia:
    data: bytes
    content_hash: str
    fetch_s: float


@dataclass
class DecodedMedia:
    modality: Modality
    data: Image.Image | DecodedVideo | np.ndarray
    content_hash: str  # sha256 hex of the fetched bytes (or array bytes) plus the canonical options
    timings: dict[str, float] = field(default_factory=dict)  # "fetch_s", "decode_s"


def is_precomputed(source: object) -> bool:
    """True for ``{"format": "processor_output" | "precomputed_embedding", ...}``: not media to decode."""
    return isinstance(source, dict) and source.get("format") in PRECOMPUTED_FORMATS


def canonical_options(options: dict[str, Any]) -> bytes:
    """Options as canonical JSON, so equal options hash equally whatever their order."""
    return json.dumps(options or {}, sort_keys=True, separators=(",", ":"), default=str).encode()


def content_hash(payload_digest: bytes, options: dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(payload_digest)
    h.update(b"\x00")
    h.update(canonical_options(options))
    return h.hexdigest()


def _bytes_hash(data: bytes, options: dict[str, Any]) -> str:
    """:func:`content_hash` of fetched bytes."""
    return content_hash(hashlib.sha256(data).digest(), options)


def _fetched(spec: MediaSpec, data: bytes, t0: float) -> FetchedMedia:
    """Fetched bytes with their content hash; ``fetch_s`` counts from ``t0`` to the hash's end."""
    return FetchedMedia(data, _bytes_hash(data, spec.options or {}), time.perf_counter() - t0)


def _in_process_digest(source: object) -> bytes:
    """sha256 of in-process media: dtype and shape go in too, so a reshape is a different item."""
    h = hashlib.sha256()
    if isinstance(source, tuple):  # (waveform, sample_rate)
        h.update(f"rate={source[1]}".encode())
        source = source[0]
    if isinstance(source, Image.Image):
        h.update(f"pil:{source.mode}:{source.size}".encode())
        h.update(source.tobytes())
    elif isinstance(source, list):
        for item in source:
            h.update(_in_process_digest(item))
    else:
        arr = np.ascontiguousarray(source)
        h.update(f"nd:{arr.dtype.str}:{arr.shape}".encode())
        h.update(memoryview(arr).cast("B"))
    return h.digest()


def _is_in_process(source: object) -> bool:
    return isinstance(source, (Image.Image, np.ndarray, tuple)) or (
        isinstance(source, list) and bool(source) and all(isinstance(f, Image.Image) for f in source)
    )


class MediaLoader:
    """Fetch and decode media items under one ``RayMMConfig``."""

    #: Optional opt-in draft JPEG decode target, ``(w, h, swapped) -> (w, h)``; set by the pipeline from the model.
    image_draft_size: Callable[[int, int, bool], tuple[int, int]] | None = None

    def __init__(self, config: RayMMConfig | None = None) -> None:
        self.config = config or RayMMConfig()
        policy = self.config.media
        self.connector = MediaConnector(policy)
        self.image_io = ImageMediaIO(policy)
        self.video_io = VideoMediaIO(policy, self.config.video)
        self.audio_io = AudioMediaIO(policy, self.config.audio)

    def load(self, spec: MediaSpec) -> DecodedMedia:
        """Fetch and decode ``spec``; raises ``MMError`` subclasses only."""
        self._check_spec(spec)
        if _is_in_process(spec.source):
            return self._in_process(spec)
        return self.decode(spec, self.fetch(spec))

    def fetch(self, spec: MediaSpec) -> FetchedMedia:
        """Fetch only (for sources that are not in-process objects); the hash is known from here on."""
        self._check_spec(spec)
        t0 = time.perf_counter()
        data = self._guard(lambda: self.connector.fetch(spec.source, spec.label), spec, MediaFetchError)
        return _fetched(spec, data, t0)

    async def fetch_async(self, spec: MediaSpec) -> FetchedMedia:
        """``fetch`` on the event loop (http(s) concurrently, files in a thread); same hash and errors."""
        self._check_spec(spec)
        t0 = time.perf_counter()
        return _fetched(spec, await self._fetch_bytes_async(spec), t0)

    def decode(self, spec: MediaSpec, fetched: FetchedMedia) -> DecodedMedia:
        return self._decode(spec, fetched.data, fetched.fetch_s, fetched.content_hash)

    @staticmethod
    def is_in_process(spec: MediaSpec) -> bool:
        return _is_in_process(spec.source)

    async def load_async(self, spec: MediaSpec) -> DecodedMedia:
        """Async fetch on the loop; decoding (CPU-bound) runs in a worker thread."""
        self._check_spec(spec)
        if _is_in_process(spec.source):
            return await asyncio.to_thread(self._in_process, spec)
        t0 = time.perf_counter()
        data = await self._fetch_bytes_async(spec)
        fetch_s = time.perf_counter() - t0
        return await asyncio.to_thread(self._decode, spec, data, fetch_s)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _check_spec(spec: MediaSpec) -> None:
        if spec.modality not in ("image", "video", "audio"):
            raise RequestError(f"{spec.label}: unknown modality {spec.modality!r}")
        if is_precomputed(spec.source):
            raise RequestError(f"{spec.label}: precomputed features are not decoded media; route them to the adapter")

    async def _fetch_bytes_async(self, spec: MediaSpec) -> bytes:
        """The connector's async fetch; an error that is not an ``MMError`` becomes a ``MediaFetchError``."""
        try:
            return await self.connector.fetch_async(spec.source, spec.label)
        except MMError:
            raise
        except Exception as exc:
            raise MediaFetchError(f"{spec.label}: fetch failed ({type(exc).__name__})") from None

    @staticmethod
    def _guard(fn: Any, spec: MediaSpec, wrap: type[MMError]) -> Any:
        # Library errors must never escape: they become the given MMError naming the item.
        try:
            return fn()
        except MMError:
            raise
        except Exception as exc:
            raise wrap(f"{spec.label}: {type(exc).__name__}: {exc}") from None

    def _decode(self, spec: MediaSpec, data: bytes, fetch_s: float, known_hash: str | None = None) -> DecodedMedia:
        t0 = time.perf_counter()
        opts = spec.options or {}
        if spec.modality == "image":
            decoded: Any = self._guard(
                lambda: self.image_io.load_bytes(data, label=spec.label, draft_size=self.image_draft_size), spec, MediaDecodeError
            )
        elif spec.modality == "video":
            decoded = self._guard(lambda: self.video_io.load_bytes(data, label=spec.label, options=opts), spec, MediaDecodeError)
        else:
            decoded = self._guard(lambda: self.audio_io.load_bytes(data, label=spec.label), spec, MediaDecodeError)
        decode_s = time.perf_counter() - t0
        chash = known_hash or _bytes_hash(data, opts)
        return DecodedMedia(spec.modality, decoded, chash, {"fetch_s": fetch_s, "decode_s": decode_s})

    def _in_process(self, spec: MediaSpec) -> DecodedMedia:
        t0 = time.perf_counter()
        src, label = spec.source, spec.label
        if spec.modality == "image":
            if isinstance(src, Image.Image):
                fn: Any = lambda: self.image_io.load_pil(src, label=label)  # noqa: E731
            elif isinstance(src, np.ndarray):
                fn = lambda: self.image_io.load_array(src, label=label)  # noqa: E731
            else:
                raise RequestError(f"{label}: in-process images must be PIL images or HxWx3 uint8 arrays")
        elif spec.modality == "video":
            if isinstance(src, (np.ndarray, list)):
                fps = spec.options.get("video_fps") if spec.options else None
                fn = lambda: self.video_io.load_frames(src, label=label, video_fps=fps)  # noqa: E731
            else:
                raise RequestError(f"{label}: in-process videos must be (T,H,W,3) uint8 arrays or lists of PIL images")
        else:
            if isinstance(src, (np.ndarray, tuple)):
                fn = lambda: self.audio_io.load_array(src, label=label)  # noqa: E731
            else:
                raise RequestError(f"{label}: in-process audio must be a 1-D array or (array, sample_rate)")
        decoded = self._guard(fn, spec, MediaDecodeError)
        decode_s = time.perf_counter() - t0
        digest = self._guard(lambda: _in_process_digest(src), spec, MediaDecodeError)
        return DecodedMedia(spec.modality, decoded, content_hash(digest, spec.options), {"fetch_s": 0.0, "decode_s": decode_s})
