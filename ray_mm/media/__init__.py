"""Media fetch and decode: sources to bytes (``connector``, under ``policy``), bytes to
PIL images, sampled video frames and 16 kHz waveforms (``image``, ``video``, ``audio``),
glued per item by ``MediaLoader``. Nothing here imports ``ray``.
"""

from ray_mm.media.audio import AudioMediaIO
from ray_mm.media.base import MediaIO

# Tests patch ``ray_mm.media.connector.resolve_host`` (the name the connector looks up), not this re-export.
from ray_mm.media.connector import MediaConnector, resolve_host
from ray_mm.media.image import ImageMediaIO, to_rgb
from ray_mm.media.loader import DecodedMedia, MediaLoader, canonical_options, content_hash, is_precomputed
from ray_mm.media.policy import (
    check_address,
    check_remote_url,
    check_scheme,
    is_public_address,
    resolve_local_path,
)
from ray_mm.media.video import (
    DecodedVideo,
    VideoMediaIO,
    linspace_round,
    sample_frame_indices,
    smart_nframes,
)

__all__ = [
    "AudioMediaIO",
    "DecodedMedia",
    "DecodedVideo",
    "ImageMediaIO",
    "MediaConnector",
    "MediaIO",
    "MediaLoader",
    "VideoMediaIO",
    "canonical_options",
    "check_address",
    "check_remote_url",
    "check_scheme",
    "content_hash",
    "is_precomputed",
    "is_public_address",
    "linspace_round",
    "resolve_host",
    "resolve_local_path",
    "sample_frame_indices",
    "smart_nframes",
    "to_rgb",
]
