"""Policy checks: schemes, URL shape, domain allow-list, address classes, local paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ray_mm.config import MediaPolicy
from ray_mm.errors import MediaPolicyError
from ray_mm.media import policy as pol

L = "image 0 of request t"


@pytest.mark.parametrize("url", ["ftp://example.com/a.jpg", "gopher://example.com/", "javascript:alert(1)", "jar:x"])
def test_unsupported_scheme_is_403(url: str) -> None:
    with pytest.raises(MediaPolicyError) as ei:
        pol.check_scheme(url, L)
    assert ei.value.status == 403
    assert L in ei.value.message


@pytest.mark.parametrize("url", ["http://a/x", "HTTPS://a/x", "data:image/png;base64,AA==", "file:///x", "/abs/p", "rel/p"])
def test_allowed_schemes_pass(url: str) -> None:
    # Plain paths have no scheme (None); the rest come back lower-cased.
    assert pol.check_scheme(url, L) in {"http", "https", "data", "file", None}


def test_credentials_refused_and_not_echoed() -> None:
    with pytest.raises(MediaPolicyError) as ei:
        pol.check_remote_url("https://user:hunter2@example.com/a.jpg", MediaPolicy(), L)
    assert "hunter2" not in ei.value.message


def test_url_length_cap() -> None:
    policy = MediaPolicy(max_url_chars=50)
    with pytest.raises(MediaPolicyError):
        pol.check_remote_url("https://example.com/" + "a" * 100, policy, L)


def test_domain_allow_list() -> None:
    policy = MediaPolicy(allowed_domains=["cdn.example.com", ".media.org"])
    pol.check_remote_url("https://cdn.example.com/a", policy, L)
    pol.check_remote_url("https://x.media.org/a", policy, L)
    for bad in ["https://evil.com/a", "https://example.com/a", "https://cdn.example.com.evil.com/a", "https://xmedia.org/a"]:
        with pytest.raises(MediaPolicyError):
            pol.check_remote_url(bad, policy, L)


@pytest.mark.parametrize(
    "addr",
    [
        "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "100.127.255.254",
        "0.0.0.0", "224.0.0.1", "240.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fc00::1", "ff02::1",
        "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1", "64:ff9b::a9fe:a9fe", "2002:7f00:1::1",
        "fe80::1%eth0", "not-an-ip",
    ],
)  # fmt: skip
def test_non_public_addresses_refused(addr: str) -> None:
    assert not pol.is_public_address(addr)
    with pytest.raises(MediaPolicyError) as ei:
        pol.check_address(addr, MediaPolicy(), L, host="h.example")
    assert ei.value.status == 403


@pytest.mark.parametrize("addr", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(addr: str) -> None:
    assert pol.is_public_address(addr)
    pol.check_address(addr, MediaPolicy(), L)


def test_private_allowed_when_configured() -> None:
    assert pol.check_address("127.0.0.1", MediaPolicy(allow_private_addresses=True), L) is None
    with pytest.raises(MediaPolicyError):
        pol.check_address("127.0.0.1", MediaPolicy(), L)


@pytest.fixture()
def media_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    (root / "ok.jpg").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("s")
    os.symlink(tmp_path / "secret.txt", root / "link.jpg")
    return root


def test_local_path_inside_root(media_root: Path) -> None:
    policy = MediaPolicy(allowed_local_media_path=str(media_root))
    real = media_root.resolve()
    assert pol.resolve_local_path(str(media_root / "ok.jpg"), policy, L) == real / "ok.jpg"
    assert pol.resolve_local_path("ok.jpg", policy, L) == real / "ok.jpg"  # relative to the root
    assert pol.resolve_local_path(f"file://{media_root}/ok%2Ejpg", policy, L) == real / "ok.jpg"


@pytest.mark.parametrize(
    "make",
    [
        lambda r: str(r.parent / "secret.txt"),
        lambda r: str(r / ".." / "secret.txt"),
        lambda r: "../secret.txt",
        lambda r: f"file://{r}/%2E%2E/secret.txt",
        lambda r: f"file://{r}/..%2Fsecret.txt",
        lambda r: str(r / "link.jpg"),
        lambda r: f"file://{r}/link.jpg",
        lambda r: "file://otherhost/etc/passwd",
        lambda r: "/etc/passwd",
    ],
)
def test_local_path_escapes_refused(media_root: Path, make) -> None:  # type: ignore[no-untyped-def]
    policy = MediaPolicy(allowed_local_media_path=str(media_root))
    with pytest.raises(MediaPolicyError) as ei:
        pol.resolve_local_path(make(media_root), policy, L)
    assert ei.value.status == 403


def test_local_files_disabled_by_default(media_root: Path) -> None:
    with pytest.raises(MediaPolicyError):
        pol.resolve_local_path(str(media_root / "ok.jpg"), MediaPolicy(), L)
