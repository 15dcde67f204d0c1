"""Hostile servers and files against ``MediaConnector`` (issue 9, points 1 and 8).

- ``fetch_timeout_s`` is a hard wall-clock bound on a whole http(s) fetch: a server that
  trickles its body, never answers, trickles its redirect headers, or answers each redirect
  hop slowly ends the fetch at the deadline as ``MediaFetchError`` 504, for ``fetch`` and ``fetch_async``, from any thread;
- a compressed (gzip) body is refused, never inflated;
- a FIFO (or directory) under the allowed root is refused without blocking.

Loopback only: the servers listen on 127.0.0.1 and the policy allows private addresses.
Every server handler ends by itself (bounded loops, a stop event), so a regression ends
as a failed assertion, not a hung run.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import socket
import socketserver
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ray_mm.config import MediaPolicy
from ray_mm.errors import MediaFetchError, MMError
from ray_mm.media.connector import MediaConnector
from tests.unit.media_factory import make_jpeg

L = "image 0 of request r1"
JPEG = make_jpeg(16, 16)
FETCH_TIMEOUT_S = 1.5
SLACK_S = 1.0  # a fetch must end within fetch_timeout_s + this
SERVE_MAX_S = 8.0  # no handler runs longer than this, whatever the client does
BYTE_EVERY_S = 0.25  # the trickling body: one byte this often (far under any per-read timeout)
HEAD_BYTE_EVERY_S = 0.05  # trickled redirect headers: one byte this often (~3.5 s per hop)
SLOW_HOP_S = 0.6  # each redirect hop of the slow chain waits this long (5 hops allowed: 3 s)
BOMB_INFLATED = 32 << 20  # the gzip body inflates to this many bytes (from about 32 KB)
CAP = 1 << 20


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.stop = threading.Event()
        self.seen: list[str] = []
        self.bomb = gzip.compress(bytes(BOMB_INFLATED), compresslevel=9)

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that give up at their deadline cause broken pipes here, by design


class _Handler(socketserver.BaseRequestHandler):
    server: _Server
    request: socket.socket

    def handle(self) -> None:
        t0 = time.monotonic()
        self.until = t0 + SERVE_MAX_S
        self.request.settimeout(0.2)
        head = b""
        while b"\r\n\r\n" not in head and self._alive():
            try:
                part = self.request.recv(4096)
            except TimeoutError:
                continue
            if not part:
                return
            head += part
        if b"\r\n\r\n" not in head:
            return
        path = head.split(b" ", 2)[1].decode("ascii", "replace")
        self.server.seen.append(path)
        try:
            self._answer(path)
        except OSError:
            pass  # the client hung up: that is what a deadline does

    def _alive(self) -> bool:
        return not self.server.stop.is_set() and time.monotonic() < self.until

    def _answer(self, path: str) -> None:
        if path == "/ok":
            self._send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(JPEG) + JPEG)
        elif path == "/trickle-body":
            # A valid response, announced in full, whose body never finishes in time.
            self._send(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\n")
            for _ in range(1000):
                if not self._alive():
                    return
                self._send(b"\xff")
                self.server.stop.wait(BYTE_EVERY_S)
        elif path == "/silent":
            # Accepts, reads the request, and never answers.
            while self._alive():
                self.server.stop.wait(0.1)
        elif path.startswith("/trickle-redirect/"):
            # Each hop's headers arrive one byte at a time: every read succeeds, no hop is quick.
            n = int(path.rsplit("/", 1)[1])
            hop = b"HTTP/1.1 302 Found\r\nLocation: /trickle-redirect/%d\r\nContent-Length: 0\r\n\r\n" % (n + 1)
            for i in range(len(hop)):
                if not self._alive():
                    return
                self._send(hop[i : i + 1])
                self.server.stop.wait(HEAD_BYTE_EVERY_S)
        elif path.startswith("/slow-hops/"):
            # Each hop is well inside the deadline on its own; together they are not.
            n = int(path.rsplit("/", 1)[1])
            self.server.stop.wait(SLOW_HOP_S)
            self._send(b"HTTP/1.1 302 Found\r\nLocation: /slow-hops/%d\r\nContent-Length: 0\r\n\r\n" % (n + 1))
        elif path == "/gzip-bomb":
            bomb = self.server.bomb
            self._send(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(bomb) + bomb)
        elif path == "/gzip-small":
            body = gzip.compress(JPEG)
            self._send(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        else:
            self._send(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    def _send(self, data: bytes) -> None:
        self.request.sendall(data)


@pytest.fixture()
def server() -> Iterator[_Server]:
    httpd = _Server()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _url(server: _Server, path: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def _connector(**kw: object) -> MediaConnector:
    return MediaConnector(MediaPolicy(allow_private_addresses=True, fetch_timeout_s=FETCH_TIMEOUT_S, **kw))  # type: ignore[arg-type]


def _fetcher(c: MediaConnector, mode: str) -> Callable[[str], bytes]:
    if mode == "async":
        return lambda url: asyncio.run(c.fetch_async(url, L))
    return lambda url: c.fetch(url, L)


def _timed_failure(fetch: Callable[[], object]) -> tuple[MMError, float]:
    t0 = time.monotonic()
    with pytest.raises(MMError) as ei:
        fetch()
    return ei.value, time.monotonic() - t0


def _assert_deadline(err: MMError, elapsed: float, url: str) -> None:
    assert isinstance(err, MediaFetchError) and err.status == 504, f"{type(err).__name__} {err.status}: {err.message}"
    assert L in err.message and f"{FETCH_TIMEOUT_S:g} s fetch deadline" in err.message, err.message
    assert url.split("//", 1)[1] in err.message, err.message
    # It waited for the deadline (not some other early failure), and not much longer.
    assert FETCH_TIMEOUT_S - 0.1 <= elapsed <= FETCH_TIMEOUT_S + SLACK_S, f"fetch took {elapsed:.2f}s"


# ----------------------------------------------------------------- the deadline holds


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("path", ["/trickle-body", "/silent", "/trickle-redirect/0", "/slow-hops/0"])
def test_slow_server_ends_at_the_deadline(server: _Server, path: str, mode: str) -> None:
    url = _url(server, path)
    fetch = _fetcher(_connector(), mode)
    err, elapsed = _timed_failure(lambda: fetch(url))
    _assert_deadline(err, elapsed, url)


def test_sync_fetch_from_a_plain_thread_and_from_a_running_loop(server: _Server) -> None:
    c = _connector()
    url = _url(server, "/trickle-body")
    out: dict[str, object] = {}

    def in_thread() -> None:
        try:
            out["ok"] = c.fetch(_url(server, "/ok"), L)
            out["err"] = _timed_failure(lambda: c.fetch(url, L))
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertions below
            out["crash"] = exc

    t = threading.Thread(target=in_thread, daemon=True)
    t.start()
    t.join(timeout=FETCH_TIMEOUT_S + SLACK_S + 5)
    assert not t.is_alive(), "sync fetch in a thread did not end"
    assert "crash" not in out, out.get("crash")
    assert out["ok"] == JPEG
    _assert_deadline(*out["err"], url)  # type: ignore[misc]

    async def in_loop() -> tuple[bytes, tuple[MMError, float]]:
        # The sync API called from code that runs an event loop (it blocks, as any sync call does).
        return c.fetch(_url(server, "/ok"), L), _timed_failure(lambda: c.fetch(url, L))

    ok, (err, elapsed) = asyncio.run(in_loop())
    assert ok == JPEG
    _assert_deadline(err, elapsed, url)


def test_async_fetches_share_a_running_loop(server: _Server) -> None:
    """A trickling fetch does not hold up the others on the same loop, and still ends at its deadline."""
    c = _connector()
    slow, ok = _url(server, "/trickle-body"), _url(server, "/ok")

    async def timed(url: str) -> tuple[object, float]:
        t0 = time.monotonic()
        try:
            result: object = await c.fetch_async(url, L)
        except MMError as exc:
            result = exc
        return result, time.monotonic() - t0

    async def main() -> list[tuple[object, float]]:
        return await asyncio.gather(timed(slow), *(timed(ok) for _ in range(4)))

    (slow_err, slow_s), *goods = asyncio.run(main())
    for data, seconds in goods:
        assert data == JPEG and seconds < 1.0, (type(data).__name__, seconds)
    assert isinstance(slow_err, MMError)
    _assert_deadline(slow_err, slow_s, slow)


# ----------------------------------------------------------- raw bytes, never inflated


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("path", ["/gzip-bomb", "/gzip-small"])
def test_compressed_body_is_refused_not_inflated(server: _Server, path: str, mode: str) -> None:
    fetch = _fetcher(_connector(max_download_bytes=CAP), mode)
    tracemalloc.start()
    try:
        err, _ = _timed_failure(lambda: fetch(_url(server, path)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(err, MediaFetchError) and err.status == 400, f"{type(err).__name__} {err.status}: {err.message}"
    assert "compressed response bodies are refused" in err.message and L in err.message, err.message
    # The 32 MiB the bomb inflates to never existed in this process (a whole-chunk inflate would).
    assert peak < 8 << 20, f"peak traced memory {peak / 2**20:.1f} MiB"


# ------------------------------------------------------------------- local files


@pytest.mark.parametrize("use_async", [False, True])
def test_fifo_and_directory_under_root_are_refused_without_blocking(tmp_path: Path, use_async: bool) -> None:
    root = tmp_path / "media"
    root.mkdir()
    (root / "ok.jpg").write_bytes(JPEG)
    fifo = root / "pipe.jpg"
    os.mkfifo(fifo)
    (root / "dir.jpg").mkdir()
    c = MediaConnector(MediaPolicy(allowed_local_media_path=str(root)))

    def fetch(path: Path) -> bytes:
        return asyncio.run(c.fetch_async(str(path), L)) if use_async else c.fetch(str(path), L)

    assert fetch(root / "ok.jpg") == JPEG
    for target in (fifo, root / "dir.jpg"):
        out: dict[str, BaseException] = {}

        def run(path: Path = target, out: dict[str, BaseException] = out) -> None:
            try:
                fetch(path)
            except BaseException as exc:  # noqa: BLE001 - checked below
                out["err"] = exc

        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(timeout=5)
        if t.is_alive():
            # Regression: the open is waiting for a writer. Be that writer (and leave), so the
            # thread ends, then fail.
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            t.join(timeout=5)
            pytest.fail(f"fetching {target.name} blocked")
        err = out.get("err")
        assert isinstance(err, MediaFetchError) and err.status == 400, repr(err)
        assert "not a regular file" in err.message and L in err.message, err.message
