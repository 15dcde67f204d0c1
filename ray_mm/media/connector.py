"""``MediaConnector``: turn a media source into bytes, safely.

Owns every way bytes get in: http(s) (with SSRF checks on each redirect hop,
pinned DNS, streamed byte caps and a per-fetch deadline), ``data:`` URIs,
``file://`` URLs and plain paths under the allowed root, raw bytes and bare
base64 strings. Decoding is not done here; see ``image``, ``video``, ``audio``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote_to_bytes, urljoin

import httpx

from ray_mm.config import MediaPolicy
from ray_mm.errors import (
    MediaFetchError,
    MediaLimitError,
    MediaPolicyError,
    MMError,
    RequestTimeoutError,
    describe_source,
)
from ray_mm.media import policy as pol

_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 << 10
# Leading bytes of the containers we decode. A bare string counts as base64
# only if it decodes strictly AND starts with one of these, which no real
# file name does by accident.
_MAGIC: tuple[bytes, ...] = (
    b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"RIFF", b"BM", b"II*\x00", b"MM\x00*",
    b"\x1a\x45\xdf\xa3", b"ID3", b"fLaC", b"OggS", b"\xff\xf1", b"\xff\xf9", b"\xff\xfb", b"\x00\x00\x00",
)  # fmt: skip
_MIN_BARE_BASE64 = 32


def resolve_host(host: str, port: int) -> list[str]:
    """Resolve ``host`` to IP strings. Module level so tests can monkeypatch it (no real DNS)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    out: list[str] = []
    for info in infos:
        addr = str(info[4][0])
        if addr not in out:
            out.append(addr)
    return out


@dataclass(frozen=True)
class _Hop:
    """One pinned request: the URL rewritten to a checked IP, plus what keeps TLS and vhosts right."""

    url: str  # the original URL of this hop (for redirects and messages)
    pinned_urls: list[str]  # the same URL with the host replaced by each checked address
    headers: dict[str, str]
    extensions: dict[str, str]


class MediaConnector:
    """Fetch media bytes under a ``MediaPolicy``. Thread-safe; holds no per-fetch state."""

    def __init__(self, policy: MediaPolicy) -> None:
        self.policy = policy
        # Building an SSL context costs ~10 ms; make it once and share it.
        self._ssl = ssl.create_default_context()

    # ----------------------------------------------------------------- dispatch
    def fetch(self, source: object, label: str) -> bytes:
        """Return the bytes of ``source``; raises ``MMError`` subclasses only."""
        local = self._fetch_local(source, label)
        if local is not None:
            return local
        return self._fetch_http_sync(str(source), label)

    async def fetch_async(self, source: object, label: str) -> bytes:
        """Async ``fetch``: http(s) on the event loop, file reads in a thread."""
        if isinstance(source, str) and pol.url_scheme(source) in pol.REMOTE_SCHEMES:
            try:
                return await asyncio.wait_for(self._fetch_http_async(source, label), self.policy.fetch_timeout_s)
            except asyncio.TimeoutError:
                raise self._timeout(source, label) from None
        if isinstance(source, str) and pol.url_scheme(source) is None and not self._looks_base64(source):
            return await asyncio.to_thread(self.fetch, source, label)
        return self.fetch(source, label)

    def _fetch_local(self, source: object, label: str) -> bytes | None:
        """Everything except http(s); ``None`` means "this is a remote URL"."""
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            if not data:
                raise MediaFetchError(f"{label}: empty media bytes")
            self._check_size(len(data), label)
            return data
        if not isinstance(source, str):
            raise MediaFetchError(f"{label}: unsupported media source type {describe_source(source)}")
        if not source.strip():
            raise MediaFetchError(f"{label}: empty media source")
        scheme = pol.check_scheme(source, label)
        if scheme in pol.REMOTE_SCHEMES:
            return None
        if scheme == "data":
            return self._decode_data_uri(source, label)
        if scheme is None and self._looks_base64(source):
            return self._b64decode("".join(source.split()), label, source)
        return self._read_local(source, label)

    # ------------------------------------------------------------- inline data
    def _check_size(self, n: int, label: str) -> None:
        if n > self.policy.max_download_bytes:
            raise MediaLimitError(f"{label}: media is over the {self.policy.max_download_bytes}-byte cap")

    def _b64decode(self, text: str, label: str, source: str) -> bytes:
        # Check the size implied by the text before allocating the decoded copy.
        self._check_size(len(text) * 3 // 4 - 2, label)
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise MediaFetchError(f"{label}: invalid base64 in {describe_source(source)}") from None
        if not data:
            raise MediaFetchError(f"{label}: empty media in {describe_source(source)}")
        return data

    def _decode_data_uri(self, uri: str, label: str) -> bytes:
        header, comma, payload = uri[5:].partition(",")
        if not comma:
            raise MediaFetchError(f"{label}: malformed data: URI (no comma) {describe_source(uri)}")
        if header.lower().endswith(";base64"):
            return self._b64decode("".join(payload.split()), label, uri)
        self._check_size(len(payload), label)
        data = unquote_to_bytes(payload)
        if not data:
            raise MediaFetchError(f"{label}: empty media in {describe_source(uri)}")
        return data

    @staticmethod
    def _looks_base64(text: str) -> bool:
        """A bare string is base64 media only if it decodes strictly to a known media signature."""
        compact = "".join(text.split())
        if len(compact) < _MIN_BARE_BASE64 or len(compact) % 4:
            return False
        try:
            head = base64.b64decode(compact[:32], validate=True)
        except (binascii.Error, ValueError):
            return False
        return head.startswith(_MAGIC) or head[4:8] == b"ftyp"

    def _read_local(self, source: str, label: str) -> bytes:
        path: Path = pol.resolve_local_path(source, self.policy, label)
        try:
            # O_NOFOLLOW: the path was resolved, so a symlink here means it was swapped after the check.
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise MediaFetchError(f"{label}: local file not found: {describe_source(source)}") from None
        except OSError as exc:
            raise MediaFetchError(f"{label}: cannot open local file {describe_source(source)} ({exc.strerror})") from None
        with os.fdopen(fd, "rb") as fh:
            if not path.is_file():
                raise MediaFetchError(f"{label}: not a regular file: {describe_source(source)}")
            data = fh.read(self.policy.max_download_bytes + 1)
        self._check_size(len(data), label)
        if not data:
            raise MediaFetchError(f"{label}: local file is empty: {describe_source(source)}")
        return data

    # -------------------------------------------------------------------- http
    def _timeout(self, url: str, label: str) -> RequestTimeoutError:
        return RequestTimeoutError(f"{label}: fetch of {describe_source(url)} timed out after {self.policy.fetch_timeout_s}s")

    def _prepare_hop(self, url: str, label: str) -> _Hop:
        """Check the URL, resolve its host once, check every address, and pin the request to them."""
        parts = pol.check_remote_url(url, self.policy, label)
        host = (parts.hostname or "").rstrip(".")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            addresses = resolve_host(host, port)
        except (OSError, UnicodeError) as exc:
            raise MediaFetchError(f"{label}: cannot resolve host of {describe_source(url)} ({exc})") from None
        if not addresses:
            raise MediaFetchError(f"{label}: host of {describe_source(url)} has no addresses")
        # Every address must pass: otherwise a name with one public and one private
        # record would reach the private one whenever the client picks it.
        for addr in addresses:
            pol.check_address(addr, self.policy, label, host)
        default_port = parts.port is None
        pinned = []
        for addr in addresses:
            ip_host = f"[{addr}]" if ":" in addr else addr
            netloc = ip_host if default_port else f"{ip_host}:{port}"
            pinned.append(parts._replace(netloc=netloc, fragment="").geturl())
        host_header = parts.netloc.rsplit("@", 1)[-1]
        return _Hop(
            url=url,
            pinned_urls=pinned,
            headers={"Host": host_header, "Accept-Encoding": "identity"},
            # TLS must still verify the certificate against the name, not the IP.
            extensions={"sni_hostname": host} if parts.scheme == "https" else {},
        )

    def _next_url(self, response: httpx.Response, hop: _Hop, hops: int, label: str) -> str | None:
        """The redirect target, or ``None`` when ``response`` carries the body."""
        if response.status_code in _REDIRECT_CODES:
            location = response.headers.get("location")
            if not location:
                raise MediaFetchError(f"{label}: redirect without Location from {describe_source(hop.url)}")
            if hops >= self.policy.max_redirects:
                raise MediaFetchError(f"{label}: more than {self.policy.max_redirects} redirects fetching media")
            target = urljoin(hop.url, location)
            if pol.url_scheme(target) not in pol.REMOTE_SCHEMES:
                raise MediaPolicyError(f"{label}: redirect to a non-http(s) URL {describe_source(target)}; refused")
            return target
        if response.status_code >= 400:
            raise MediaFetchError(f"{label}: HTTP {response.status_code} fetching {describe_source(hop.url)}")
        if response.status_code >= 300:
            raise MediaFetchError(f"{label}: unexpected HTTP {response.status_code} from {describe_source(hop.url)}")
        declared = response.headers.get("content-length")
        if declared and declared.isdigit():
            self._check_size(int(declared), label)
        return None

    def _client_kwargs(self, remaining: float) -> dict[str, object]:
        # trust_env=False: an environment proxy would resolve names itself and bypass the pinning.
        return {"timeout": httpx.Timeout(max(remaining, 0.001)), "follow_redirects": False,
                "trust_env": False, "verify": self._ssl}  # fmt: skip

    def _fetch_http_sync(self, url: str, label: str) -> bytes:
        deadline = time.monotonic() + self.policy.fetch_timeout_s
        current, hops = url, 0
        try:
            with httpx.Client(**self._client_kwargs(self.policy.fetch_timeout_s)) as client:  # type: ignore[arg-type]
                while True:
                    hop = self._prepare_hop(current, label)
                    for i, pinned in enumerate(hop.pinned_urls):
                        try:
                            req = client.build_request("GET", pinned, headers=hop.headers, extensions=hop.extensions)
                            req.extensions["timeout"] = httpx.Timeout(max(deadline - time.monotonic(), 0.001)).as_dict()
                            response = client.send(req, stream=True)
                            break
                        except httpx.ConnectError:
                            if i == len(hop.pinned_urls) - 1:
                                raise
                    try:
                        target = self._next_url(response, hop, hops, label)
                        if target is None:
                            body = _Body(self, url, label, deadline)
                            for chunk in response.iter_bytes(_CHUNK):
                                body.add(chunk)
                            return body.bytes()
                    finally:
                        response.close()
                    current, hops = target, hops + 1
        except MMError:
            raise
        except httpx.TimeoutException:
            raise self._timeout(url, label) from None
        except (httpx.HTTPError, OSError, ssl.SSLError) as exc:
            raise MediaFetchError(f"{label}: fetching {describe_source(url)} failed ({type(exc).__name__})") from None

    async def _fetch_http_async(self, url: str, label: str) -> bytes:
        deadline = time.monotonic() + self.policy.fetch_timeout_s
        current, hops = url, 0
        try:
            async with httpx.AsyncClient(**self._client_kwargs(self.policy.fetch_timeout_s)) as client:  # type: ignore[arg-type]
                while True:
                    hop = self._prepare_hop(current, label)
                    for i, pinned in enumerate(hop.pinned_urls):
                        try:
                            req = client.build_request("GET", pinned, headers=hop.headers, extensions=hop.extensions)
                            req.extensions["timeout"] = httpx.Timeout(max(deadline - time.monotonic(), 0.001)).as_dict()
                            response = await client.send(req, stream=True)
                            break
                        except httpx.ConnectError:
                            if i == len(hop.pinned_urls) - 1:
                                raise
                    try:
                        target = self._next_url(response, hop, hops, label)
                        if target is None:
                            body = _Body(self, url, label, deadline)
                            async for chunk in response.aiter_bytes(_CHUNK):
                                body.add(chunk)
                            return body.bytes()
                    finally:
                        await response.aclose()
                    current, hops = target, hops + 1
        except MMError:
            raise
        except httpx.TimeoutException:
            raise self._timeout(url, label) from None
        except (httpx.HTTPError, OSError, ssl.SSLError) as exc:
            raise MediaFetchError(f"{label}: fetching {describe_source(url)} failed ({type(exc).__name__})") from None

    @staticmethod
    def _nonempty(data: bytes, url: str, label: str) -> bytes:
        if not data:
            raise MediaFetchError(f"{label}: empty response body from {describe_source(url)}")
        return data


class _Body:
    """A streamed response body, checked while it is read: the byte cap (also without
    Content-Length) and the fetch deadline; shared by the sync and async fetch loops."""

    def __init__(self, connector: MediaConnector, url: str, label: str, deadline: float) -> None:
        self.connector, self.url, self.label, self.deadline = connector, url, label, deadline
        self.chunks: list[bytes] = []
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self.connector._check_size(self.total, self.label)
        if time.monotonic() > self.deadline:
            raise self.connector._timeout(self.url, self.label)
        self.chunks.append(chunk)

    def bytes(self) -> bytes:
        return self.connector._nonempty(b"".join(self.chunks), self.url, self.label)
