"""The ``MediaIO[T]`` interface: one decoder per modality, fed bytes, base64 or a file.

This module owns only the abstract contract (in the style of vLLM's
``MediaIO``). Fetching lives in ``connector``, limits in ``policy`` and the
actual decoders in ``image``, ``video`` and ``audio``. Every method takes a
keyword ``label`` ("image 2 of request r17") so errors raised while decoding
name the item they belong to.
"""

from __future__ import annotations

import base64
import binascii
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Generic, TypeVar

from ray_mm.errors import MediaFetchError

T = TypeVar("T")

DEFAULT_LABEL = "media item"


class MediaIO(ABC, Generic[T]):
    """Decode one media item of a fixed modality into ``T``."""

    @abstractmethod
    def load_bytes(self, data: bytes, *, label: str = DEFAULT_LABEL, options: dict[str, Any] | None = None) -> T:
        """Decode encoded media bytes (a JPEG, an mp4, a wav, ...)."""

    def load_base64(self, media_type: str, data: str, *, label: str = DEFAULT_LABEL, options: dict[str, Any] | None = None) -> T:
        """Decode base64 text; ``media_type`` is informational, the content is sniffed."""
        del media_type  # the decoders sniff the container; a declared type is never trusted
        try:
            raw = base64.b64decode("".join(data.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MediaFetchError(f"{label}: invalid base64 data ({exc})") from None
        return self.load_bytes(raw, label=label, options=options)

    def load_file(self, path: Path, *, label: str = DEFAULT_LABEL, options: dict[str, Any] | None = None) -> T:
        """Decode a local file. No policy check here: ``MediaConnector`` does that for user paths."""
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise MediaFetchError(f"{label}: cannot read local file ({exc.strerror or type(exc).__name__})") from None
        return self.load_bytes(raw, label=label, options=options)
