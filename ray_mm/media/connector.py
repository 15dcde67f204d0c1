"""``MediaConnector``: turn a media source into bytes, safely.

Owns every way bytes get in: http(s), ``data:`` URIs, ``file://`` URLs and
plain paths under the allowed root, raw bytes and bare base64 strings.
Decoding is not done here; see ``image``, ``video``, ``audio``.

http(s) has one code path, the async one: ``fetch_async`` awaits it and the
sync ``fetch`` runs it on a private event loop. Every http(s) fetch has:

- a hard wall-clock deadline, ``fetch_timeout_s``, on the whole operation
  (DNS, connect, every redirect hop, headers, body), enforced by cancelling
  the fetch when it runs out, so a server that trickles bytes cannot hold it
  (per-read timeouts restart at every byte and cannot bound it). Running out
  is a ``MediaFetchError`` with status 504;
- SSRF checks on each redirect hop, with the connection pinned to the
  addresses that were checked;
- a byte cap, ``max_download_bytes``, counted on the raw bytes as they
  arrive. ``Accept-Encoding: identity`` is sent and a compressed body
  (``Content-Encoding`` other than identity) is refused, so nothing is ever
  inflated.

Local files are opened with ``O_NOFOLLOW | O_NONBLOCK`` and read only if the
opened descriptor is a regular file, so a FIFO or device under the allowed
root can neither block nor stream without end.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import socket
import ssl
import stat
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote_to_bytes, urljoin

import httpx

from ray_mm.config import MediaPolicy
from ray_mm.errors import (
    MediaFetchError,
    MediaLimitError,
    MediaPolicyError,
    MMError,
    describe_source,
)
from ray_mm.media import policy as pol

_T = TypeVar("_T")
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_IDENTITY_ENCODINGS = frozenset({"", "identity"})
# Leading bytes of the containers we decode. A bare string counts as base64
# only if it decodes strictly AND starts with one of these, which no real
# file name does by accident.
_MAGIC: tuple[bytes, ...] = (
    b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"RIFF", b"BM", b"II*\x00", b"MM\x00*",
    b"\x1a\x45\xdf\xa3", b"ID3", b"fLaC", b"OggS", b"\xff\xf1", b"\xff\xf9", b"\xff\xfb", b"\x00\x00\x00",
)  # fmt: skip
_MIN_BARE_BASE64 = 32
# DNS lookups (getaddrinfo blocks) run on this small pool, so the fetch deadline also
# bounds a slow resolver: the fetch gives up on time and the lookup finishes in the
# background. A pool of our own, not the loop's default executor, because closing a
# loop waits for its default executor, which would put the slow lookup back in the path.
_DNS_WORKERS = 8
_dns_pool: tuple[int, ThreadPoolExecutor] | None = None
_dns_pool_lock = threading.Lock()


def _dns_executor() -> ThreadPoolExecutor:
    global _dns_pool
    with _dns_pool_lock:
        # Keyed by pid: a forked child inherits the object but not its threads.
        if _dns_pool is None or _dns_pool[0] != os.getpid():
            _dns_pool = (os.getpid(), ThreadPoolExecutor(_DNS_WORKERS, thread_name_prefix="ray-mm-dns"))
        return _dns_pool[1]


def _run_blocking(make: Callable[[], Awaitable[_T]]) -> _T:
    """Run the coroutine ``make()`` to completion from sync code and return its result.

    Normally on a private event loop in this thread. A private loop rather than
    ``asyncio.run``, which would also replace this thread's current event loop
    (``set_event_loop``) and wait for the default executor on exit. If this thread
    already runs a loop (sync API called from async code), a loop cannot nest, so the
    coroutine runs on a private loop in a helper thread while this one blocks, as any
    sync call made there does.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_on_private_loop(make)
    with ThreadPoolExecutor(1, thread_name_prefix="ray-mm-fetch") as helper:
        return helper.submit(_run_on_private_loop, make).result()


def _run_on_private_loop(make: Callable[[], Awaitable[_T]]) -> _T:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(make())
    finally:
        try:
            leftover = asyncio.all_tasks(loop)
            for task in leftover:
                task.cancel()
            if leftover:
                loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


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
        """Return the bytes of ``source``; raises ``MMError`` subclasses only.

        http(s) runs the async fetch to completion (same deadline, same checks);
        safe from any thread, including one that runs an event loop.
        """
        local = self._fetch_local(source, label)
        if local is not None:
            return local
        url = str(source)
        return _run_blocking(lambda: self._fetch_http(url, label))

    async def fetch_async(self, source: object, label: str) -> bytes:
        """Async ``fetch``: http(s) on the running loop, file reads in a thread."""
        if isinstance(source, str):
            scheme = pol.url_scheme(source)
            if scheme in pol.REMOTE_SCHEMES:
                return await self._fetch_http(source, label)
            if scheme == "file" or (scheme is None and not self._looks_base64(source)):
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
        # O_NOFOLLOW: the path was resolved, so a symlink here means it was swapped after the check.
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever.
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            raise MediaFetchError(f"{label}: local file not found: {describe_source(source)}") from None
        except OSError as exc:
            raise MediaFetchError(f"{label}: cannot open local file {describe_source(source)} ({exc.strerror})") from None
        try:
            # Check what was opened, not the path: only a regular file has an end (a FIFO,
            # socket or device could block or stream without one; a directory is no media).
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise MediaFetchError(f"{label}: not a regular file: {describe_source(source)}")
            self._check_size(st.st_size, label)
            with os.fdopen(fd, "rb", closefd=False) as fh:
                data = fh.read(self.policy.max_download_bytes + 1)  # +1: a file that grew is still caught
        except OSError as exc:
            raise MediaFetchError(f"{label}: cannot read local file {describe_source(source)} ({exc.strerror})") from None
        finally:
            os.close(fd)
        self._check_size(len(data), label)
        if not data:
            raise MediaFetchError(f"{label}: local file is empty: {describe_source(source)}")
        return data

    # -------------------------------------------------------------------- http
    def _deadline_error(self, url: str, label: str) -> MediaFetchError:
        return MediaFetchError(
            f"{label}: fetch of {describe_source(url)} did not finish within the {self.policy.fetch_timeout_s:g} s fetch deadline",
            status=504,
        )

    async def _fetch_http(self, url: str, label: str) -> bytes:
        """The one http(s) path: the whole fetch under a hard wall-clock deadline.

        ``wait_for`` cancels the fetch wherever it is waiting (DNS, connect, TLS, a
        redirect hop, headers, any body read) when ``fetch_timeout_s`` has passed.
        """
        try:
            return await asyncio.wait_for(self._fetch_http_unbounded(url, label), self.policy.fetch_timeout_s)
        except asyncio.TimeoutError:
            # Only the deadline gets here: the fetch itself turns every error it meets into an MMError.
            raise self._deadline_error(url, label) from None

    async def _fetch_http_unbounded(self, url: str, label: str) -> bytes:
        current, hops = url, 0
        try:
            async with httpx.AsyncClient(**self._client_kwargs()) as client:  # type: ignore[arg-type]
                while True:
                    hop = await self._prepare_hop(current, label)
                    response = await self._send(client, hop)
                    try:
                        target = self._next_url(response, hop, hops, label)
                        if target is None:
                            return await self._read_body(response, url, label)
                    finally:
                        await response.aclose()
                    current, hops = target, hops + 1
        except MMError:
            raise
        except httpx.TimeoutException:
            # httpx's own timeouts are the whole budget, a backstop: this is the same deadline running out.
            raise self._deadline_error(url, label) from None
        except (httpx.HTTPError, OSError, ssl.SSLError) as exc:
            raise MediaFetchError(f"{label}: fetching {describe_source(url)} failed ({type(exc).__name__})") from None

    async def _prepare_hop(self, url: str, label: str) -> _Hop:
        """Check the URL, resolve its host once, check every address, and pin the request to them."""
        parts = pol.check_remote_url(url, self.policy, label)
        host = (parts.hostname or "").rstrip(".")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            # The module-level name is looked up at each call, so tests can monkeypatch it.
            addresses = await asyncio.get_running_loop().run_in_executor(_dns_executor(), resolve_host, host, port)
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

    @staticmethod
    async def _send(client: httpx.AsyncClient, hop: _Hop) -> httpx.Response:
        """Send the hop to its checked addresses in turn until one connects."""
        *others, last = hop.pinned_urls
        for pinned in others:
            try:
                return await client.send(client.build_request("GET", pinned, headers=hop.headers, extensions=hop.extensions), stream=True)
            except httpx.ConnectError:
                continue
        return await client.send(client.build_request("GET", last, headers=hop.headers, extensions=hop.extensions), stream=True)

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
        # We asked for identity. A compressed body is refused rather than inflated: a few
        # kilobytes of gzip can expand to gigabytes, and media containers are compressed already.
        encoding = response.headers.get("content-encoding", "")
        if any(token.strip().lower() not in _IDENTITY_ENCODINGS for token in encoding.split(",")):
            raise MediaFetchError(
                f"{label}: compressed response bodies are refused (Content-Encoding {encoding[:40]!r} from {describe_source(hop.url)})"
            )
        declared = response.headers.get("content-length")
        if declared and declared.isdigit():
            self._check_size(int(declared), label)
        return None

    async def _read_body(self, response: httpx.Response, url: str, label: str) -> bytes:
        """The body as received, checked against the byte cap as each piece arrives (also
        without a Content-Length). ``aiter_raw``: raw bytes, never content-decoded, so the
        cap counts what came off the wire."""
        chunks: list[bytes] = []
        total = 0
        async for chunk in response.aiter_raw():
            total += len(chunk)
            self._check_size(total, label)
            chunks.append(chunk)
        data = b"".join(chunks)
        if not data:
            raise MediaFetchError(f"{label}: empty response body from {describe_source(url)}")
        return data

    def _client_kwargs(self) -> dict[str, object]:
        # trust_env=False: an environment proxy would resolve names itself and bypass the pinning.
        # The timeout is only a backstop (each httpx timeout restarts per operation); the deadline
        # in _fetch_http is what bounds the fetch.
        return {"timeout": httpx.Timeout(self.policy.fetch_timeout_s), "follow_redirects": False,
                "trust_env": False, "verify": self._ssl}  # fmt: skip
