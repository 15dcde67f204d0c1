"""MediaConnector: inline data, local files, and http(s) against a server on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio
import pytest

from ray_mm.config import MediaPolicy
from ray_mm.errors import MediaFetchError, MediaLimitError, MediaPolicyError
from ray_mm.media import connector as conn_mod
from ray_mm.media.connector import MediaConnector
from tests.unit.media_factory import make_jpeg, make_png

L = "image 2 of request r17"
JPEG = make_jpeg(32, 32)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[str] = []

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        type(self).seen.append(self.path)
        path = self.path.split("?", 1)[0]
        if path == "/img.jpg":
            self._send(200, JPEG)
        elif path.startswith("/chunked/"):
            n = int(path.rsplit("/", 1)[1])
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            block = b"x" * 4096
            sent = 0
            while sent < n:
                part = block[: min(4096, n - sent)]
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                sent += len(part)
            self.wfile.write(b"0\r\n\r\n")
        elif path.startswith("/redirect/"):
            self.send_response(302)
            self.send_header("Location", self.path.split("?to=", 1)[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/slow":
            time.sleep(1.5)
            self._send(200, JPEG)
        elif path == "/host":
            self._send(200, (self.headers.get("Host") or "").encode())
        else:
            self._send(404, b"nope")

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that stop reading past a cap cause broken pipes here, by design


@pytest.fixture()
def server() -> Iterator[str]:
    _Handler.seen = []
    httpd = _QuietServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


LOCAL = MediaPolicy(allow_private_addresses=True, fetch_timeout_s=5)


# ----------------------------------------------------------------------- inline


def test_raw_bytes_and_empty() -> None:
    c = MediaConnector(MediaPolicy())
    assert c.fetch(JPEG, L) == JPEG
    for empty in (b"", "", "   "):
        with pytest.raises(MediaFetchError) as ei:
            c.fetch(empty, L)
        assert ei.value.status == 400 and L in ei.value.message


def test_data_uri_roundtrip_and_bad_base64() -> None:
    c = MediaConnector(MediaPolicy())
    b64 = base64.b64encode(JPEG).decode()
    assert c.fetch(f"data:image/jpeg;base64,{b64}", L) == JPEG
    assert c.fetch(f"data:image/jpeg;base64,{b64[:60]}\n{b64[60:]}", L) == JPEG  # line breaks are tolerated
    for bad in ["data:image/jpeg;base64,@@@@" + b64, "data:image/jpeg;base64," + b64[:-1], "data:image/jpeg;base64"]:
        with pytest.raises(MediaFetchError) as ei:
            c.fetch(bad, L)
        assert ei.value.status == 400
        assert b64[:100] not in ei.value.message  # never echo the payload
        assert L in ei.value.message


def test_data_uri_size_cap() -> None:
    c = MediaConnector(MediaPolicy(max_download_bytes=100))
    with pytest.raises(MediaLimitError):
        c.fetch("data:image/png;base64," + base64.b64encode(b"\x89PNG" + b"0" * 1000).decode(), L)


def test_bare_base64_detected_only_for_media() -> None:
    c = MediaConnector(MediaPolicy())
    assert c.fetch(base64.b64encode(JPEG).decode(), L) == JPEG
    assert c.fetch(base64.b64encode(make_png(8, 8)).decode(), L)[:4] == b"\x89PNG"
    # Valid base64 of non-media is taken as a path (and refused: no local root configured).
    with pytest.raises(MediaPolicyError):
        c.fetch(base64.b64encode(b"hello world, this is not media at all!").decode(), L)


def test_unsupported_scheme(server: str) -> None:
    c = MediaConnector(LOCAL)
    for url in ["ftp://127.0.0.1/x.jpg", "gopher://127.0.0.1:70/_x"]:
        with pytest.raises(MediaPolicyError) as ei:
            c.fetch(url, L)
        assert ei.value.status == 403


# ------------------------------------------------------------------ local files


def test_local_files(tmp_path: Path) -> None:
    root = tmp_path / "media"
    root.mkdir()
    (root / "a.jpg").write_bytes(JPEG)
    (tmp_path / "outside.jpg").write_bytes(JPEG)
    (root / "esc.jpg").symlink_to(tmp_path / "outside.jpg")
    c = MediaConnector(MediaPolicy(allowed_local_media_path=str(root)))
    assert c.fetch(str(root / "a.jpg"), L) == JPEG
    assert c.fetch(f"file://{root}/a.jpg", L) == JPEG
    with pytest.raises(MediaFetchError) as ei:
        c.fetch(str(root / "missing.jpg"), L)
    assert ei.value.status == 400
    for escape in [str(tmp_path / "outside.jpg"), f"{root}/../outside.jpg", f"file://{root}/%2e%2e/outside.jpg",
                   str(root / "esc.jpg")]:  # fmt: skip
        with pytest.raises(MediaPolicyError):
            c.fetch(escape, L)


# ------------------------------------------------------------------------- http


def test_http_fetch_and_host_header(server: str) -> None:
    c = MediaConnector(LOCAL)
    assert c.fetch(f"{server}/img.jpg", L) == JPEG
    port = server.rsplit(":", 1)[1]
    assert c.fetch(f"{server}/host", L) == f"127.0.0.1:{port}".encode()


def test_http_async(server: str) -> None:
    c = MediaConnector(LOCAL)
    assert asyncio.run(c.fetch_async(f"{server}/img.jpg", L)) == JPEG


def test_private_address_refused_by_default(server: str) -> None:
    with pytest.raises(MediaPolicyError):
        MediaConnector(MediaPolicy()).fetch(f"{server}/img.jpg", L)
    assert _Handler.seen == []  # refused before connecting


def test_http_status_error(server: str) -> None:
    with pytest.raises(MediaFetchError) as ei:
        MediaConnector(LOCAL).fetch(f"{server}/missing", L)
    assert "404" in ei.value.message and L in ei.value.message


@pytest.mark.parametrize("use_async", [False, True])
def test_chunked_body_over_cap_is_413(server: str, use_async: bool) -> None:
    c = MediaConnector(MediaPolicy(allow_private_addresses=True, max_download_bytes=10_000))
    url = f"{server}/chunked/200000"
    with pytest.raises(MediaLimitError) as ei:
        asyncio.run(c.fetch_async(url, L)) if use_async else c.fetch(url, L)
    assert ei.value.status == 413
    assert len(c.fetch(f"{server}/chunked/9000", L)) == 9000


@pytest.mark.parametrize("use_async", [False, True])
def test_timeout_is_504(server: str, use_async: bool) -> None:
    c = MediaConnector(MediaPolicy(allow_private_addresses=True, fetch_timeout_s=0.3))
    with pytest.raises(MediaFetchError) as ei:
        asyncio.run(c.fetch_async(f"{server}/slow", L)) if use_async else c.fetch(f"{server}/slow", L)
    assert ei.value.status == 504
    assert L in ei.value.message and "0.3 s fetch deadline" in ei.value.message


def test_redirect_followed_and_capped(server: str) -> None:
    c = MediaConnector(LOCAL)
    assert c.fetch(f"{server}/redirect/1?to=/img.jpg", L) == JPEG
    with pytest.raises(MediaFetchError) as ei:
        c.fetch(f"{server}/loop", L)
    assert "redirect" in ei.value.message
    assert _Handler.seen.count("/loop") == LOCAL.max_redirects + 1


def test_redirect_to_file_scheme_refused(server: str) -> None:
    with pytest.raises(MediaPolicyError):
        MediaConnector(LOCAL).fetch(f"{server}/redirect/1?to=file:///etc/passwd", L)


@pytest.mark.parametrize("use_async", [False, True])
def test_redirect_hop_rechecked_metadata_ip_never_contacted(
    server: str, monkeypatch: pytest.MonkeyPatch, use_async: bool
) -> None:
    """The first hop is allowed (a public-looking name served locally); the redirect target
    resolves to the cloud metadata address and must be refused before any connection."""
    port = int(server.rsplit(":", 1)[1])
    resolved: list[str] = []

    def fake_resolve(host: str, p: int) -> list[str]:
        resolved.append(host)
        return {"media.example": ["127.0.0.1"], "metadata.example": ["169.254.169.254"]}[host]

    connects: list[object] = []
    real_connect = anyio.connect_tcp

    # Every http(s) fetch (sync too) goes through httpx's async transport, which connects with anyio.
    async def spy_connect(remote_host, *a, **kw):  # type: ignore[no-untyped-def]
        connects.append(str(remote_host))
        return await real_connect(remote_host, *a, **kw)

    monkeypatch.setattr(conn_mod, "resolve_host", fake_resolve)
    monkeypatch.setattr(anyio, "connect_tcp", spy_connect)
    # Only loopback is let through (for the local server); link-local stays refused.
    monkeypatch.setattr(
        conn_mod.pol, "check_address",
        lambda addr, policy, label, host="": None if addr == "127.0.0.1" else _refuse(addr, label),
    )  # fmt: skip
    c = MediaConnector(MediaPolicy())
    url = f"http://media.example:{port}/redirect/1?to=http://metadata.example/latest/meta-data/"
    with pytest.raises(MediaPolicyError) as ei:
        asyncio.run(c.fetch_async(url, L)) if use_async else c.fetch(url, L)
    assert "169.254.169.254" in ei.value.message and ei.value.status == 403
    assert resolved == ["media.example", "metadata.example"]
    assert connects == ["127.0.0.1"]  # the first hop only: the metadata address is never contacted
    assert _Handler.seen == ["/redirect/1?to=http://metadata.example/latest/meta-data/"]


def test_redirect_hop_rechecked_with_real_policy(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same attack with the real policy functions: private addresses allowed only via config,
    so with the default policy the very first hop (loopback) is already refused."""
    monkeypatch.setattr(conn_mod, "resolve_host", lambda host, port: ["169.254.169.254"])
    with pytest.raises(MediaPolicyError):
        MediaConnector(MediaPolicy()).fetch("http://metadata.example/latest/", L)


def test_any_private_record_refuses_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conn_mod, "resolve_host", lambda host, port: ["93.184.216.34", "10.0.0.5"])  # ok-nonloopback: patched DNS
    with pytest.raises(MediaPolicyError):
        MediaConnector(MediaPolicy()).fetch("https://mixed.example/a.jpg", L)


def _refuse(addr: str, label: str) -> None:
    raise MediaPolicyError(f"{label}: non-public address {addr}; refused")


# ------------------------------------------------------------------------ https


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A throwaway certificate for ``name`` made with ``cryptography`` (skip if it is missing)."""
    import datetime

    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.mark.parametrize("use_async", [False, True])
def test_https_pinned_to_ip_still_verifies_the_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use_async: bool) -> None:
    import ssl

    cert, key = _self_signed(tmp_path, "media.example")
    httpd = _QuietServer(("127.0.0.1", 0), _Handler)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    httpd.socket = server_ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    port = httpd.server_address[1]
    try:
        monkeypatch.setattr(conn_mod, "resolve_host", lambda host, p: ["127.0.0.1"])
        c = MediaConnector(LOCAL)
        c._ssl = ssl.create_default_context(cafile=str(cert))
        fetch = (lambda u: asyncio.run(c.fetch_async(u, L))) if use_async else (lambda u: c.fetch(u, L))
        assert fetch(f"https://media.example:{port}/img.jpg") == JPEG
        assert fetch(f"https://media.example:{port}/host") == f"media.example:{port}".encode()
        with pytest.raises(MediaFetchError):  # certificate is for media.example, not other.example
            fetch(f"https://other.example:{port}/img.jpg")
    finally:
        httpd.shutdown()
        httpd.server_close()
