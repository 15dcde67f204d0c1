"""Typed errors for ray-mm: every failure a request can meet, with an HTTP-like status.

Hierarchy::

    ValueError
    └── MMError                   status 500 unless a subclass says otherwise
        ├── RequestError          400  request line does not match the schema
        ├── MediaFetchError       400  media could not be fetched (HTTP error, bad base64, missing file);
        │                         504  when the fetch ran past fetch_timeout_s
        ├── MediaDecodeError      400  bytes are not a valid image / video / audio
        ├── MediaPolicyError      403  refused by policy (SSRF, scheme, path outside root, credentials)
        ├── MediaLimitError       413  over a cap (bytes, pixels, frames, duration, precomputed bytes)
        ├── MediaUnsupportedError 422  valid media the model cannot take (e.g. an aspect ratio over its limit)
        ├── AlignmentError        400  placeholders and media items do not line up
        ├── PoolSaturatedError    503  admission limit reached; retry later
        ├── RequestTimeoutError   504  the whole request ran past its deadline
        └── InternalError         500  a fault of ray-mm itself

Library errors (PIL, av, httpx) are translated into these at the edge, and
messages name the offending item ("image 2 of request r17") without echoing a
whole ``data:`` URI or a credential.
"""

from __future__ import annotations

from typing import Any


class MMError(ValueError):
    """Base of every ray-mm error; ``status`` follows HTTP conventions."""

    status: int = 500

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def to_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "message": self.message, "status": self.status}

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the status when the error crosses a process boundary (Ray pickles it).
        return (_rebuild_error, (type(self), self.message, self.status))


def _rebuild_error(cls: type[MMError], message: str, status: int) -> MMError:
    return cls(message, status=status)


class RequestError(MMError):
    status = 400


class MediaFetchError(MMError):
    status = 400


class MediaDecodeError(MMError):
    status = 400


class MediaPolicyError(MMError):
    status = 403


class MediaLimitError(MMError):
    status = 413


class MediaUnsupportedError(MMError):
    """The media decoded fine but the model's processor cannot take it (aspect ratio over its limit, and the like)."""

    status = 422


class AlignmentError(MMError):
    status = 400


class PoolSaturatedError(MMError):
    status = 503


class RequestTimeoutError(MMError):
    status = 504


class InternalError(MMError):
    status = 500


def describe_source(source: object, limit: int = 64) -> str:
    """A short, secret-free description of a media source for error messages."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if not isinstance(source, str):
        return f"<{type(source).__name__}>"
    if source.startswith("data:"):
        head = source.split(",", 1)[0]
        return f"{head[:40]},...<{len(source)} chars>"
    text = _strip_credentials(source)
    if len(text) > limit:
        return f"{text[:limit]}...<{len(text)} chars>"
    return text


def _strip_credentials(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    return f"{scheme}://{netloc}{slash}{path}"
