"""Pure checks enforcing ``MediaPolicy``: schemes, URLs, resolved addresses, local paths.

Nothing here does I/O except ``Path.resolve`` (which must look at the file
system to follow symlinks). ``connector`` calls these on every hop of every
fetch; keeping them pure makes the SSRF rules easy to test on their own.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

from ray_mm.config import MediaPolicy
from ray_mm.errors import MediaFetchError, MediaPolicyError, describe_source

REMOTE_SCHEMES = frozenset({"http", "https"})
ALLOWED_SCHEMES = frozenset({"http", "https", "data", "file"})

# A URL scheme per RFC 3986. Two characters at least, so a Windows drive
# letter ("C:\\x.png") is never mistaken for one.
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):")

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
# NAT64 well-known prefix: the low 32 bits are an IPv4 address the gateway
# will reach, so they must pass the IPv4 rules too.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def url_scheme(source: str) -> str | None:
    """The lower-cased scheme of ``source``, or ``None`` for a plain path."""
    m = _SCHEME_RE.match(source)
    return m.group(1).lower() if m else None


def check_scheme(source: str, label: str) -> str | None:
    """Refuse any scheme other than http, https, data and file (403)."""
    scheme = url_scheme(source)
    if scheme is not None and scheme not in ALLOWED_SCHEMES:
        raise MediaPolicyError(f"{label}: URL scheme {scheme!r} is not allowed ({describe_source(source)})")
    return scheme


def check_remote_url(url: str, policy: MediaPolicy, label: str) -> SplitResult:
    """Check an http(s) URL before any name resolution: scheme, length, credentials, domain."""
    if len(url) > policy.max_url_chars:
        raise MediaPolicyError(f"{label}: URL longer than {policy.max_url_chars} characters")
    scheme = url_scheme(url)
    if scheme not in REMOTE_SCHEMES:
        raise MediaPolicyError(f"{label}: URL scheme {scheme!r} is not allowed here ({describe_source(url)})")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise MediaFetchError(f"{label}: malformed URL {describe_source(url)} ({exc})") from None
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        # Credentials in URLs leak into logs and let a client make us authenticate somewhere.
        raise MediaPolicyError(f"{label}: URLs with credentials are not allowed ({describe_source(url)})")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise MediaFetchError(f"{label}: URL has no host ({describe_source(url)})")
    check_domain(host, policy, label)
    return parts


def check_domain(host: str, policy: MediaPolicy, label: str) -> None:
    """Apply the optional allow-list: an entry ``a.com`` matches exactly, ``.a.com`` any subdomain."""
    if policy.allowed_domains is None:
        return
    host = host.lower().rstrip(".")
    for entry in policy.allowed_domains:
        entry = entry.lower().rstrip(".")
        if entry.startswith("."):
            if host.endswith(entry):
                return
        elif host == entry:
            return
    raise MediaPolicyError(f"{label}: host {host!r} is not in the allowed domains")


def is_public_address(address: str | IPAddress) -> bool:
    """True only for globally routable unicast addresses, looking inside IPv4-in-IPv6 forms."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str) else address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        # ::ffff:a.b.c.d, 64:ff9b::a.b.c.d, 2002:a.b.c.d::/48 and Teredo all carry an IPv4
        # address that the packet really reaches; judge that one as well.
        embedded: list[ipaddress.IPv4Address] = []
        if ip.ipv4_mapped is not None:
            embedded.append(ip.ipv4_mapped)
        if ip in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.sixtofour is not None:
            embedded.append(ip.sixtofour)
        if ip.teredo is not None:
            embedded.extend(ip.teredo)
        if any(not is_public_address(v4) for v4 in embedded):
            return False
        if embedded and ip.ipv4_mapped is not None:
            return True  # a mapped address is exactly its IPv4 address
    if (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT)
        or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local)
    ):
        return False
    return ip.is_global


def check_address(address: str, policy: MediaPolicy, label: str, host: str = "") -> None:
    """Refuse a resolved address that is not public, unless private targets are allowed."""
    if policy.allow_private_addresses:
        return
    if not is_public_address(address):
        where = f"host {host!r} resolves to" if host and host != address else "address"
        raise MediaPolicyError(f"{label}: {where} non-public address {address}; refused")


def resolve_local_path(source: str, policy: MediaPolicy, label: str) -> Path:
    """Map a ``file://`` URL or plain path to a real path under ``allowed_local_media_path``.

    ``file://`` URLs are percent-decoded (that is what the URL means); plain
    paths are taken literally, because that literal name is what would be
    opened. Relative plain paths are relative to the root, never to the
    process's working directory. ``..`` and symlinks are resolved before the
    containment check, so neither can escape the root.
    """
    if policy.allowed_local_media_path is None:
        raise MediaPolicyError(f"{label}: local files are disabled (no allowed_local_media_path configured)")
    root = Path(policy.allowed_local_media_path).resolve()
    if url_scheme(source) == "file":
        parts = urlsplit(source)
        if parts.netloc not in ("", "localhost"):
            raise MediaPolicyError(f"{label}: file:// URL with a remote host is not allowed")
        raw = unquote(parts.path)
    else:
        raw = source
    if "\x00" in raw:
        raise MediaPolicyError(f"{label}: path contains a NUL byte")
    candidate = Path(raw)
    if not candidate.is_absolute():
        candidate = root / candidate
    try:
        resolved = candidate.resolve()
    except (OSError, RuntimeError) as exc:  # symlink loops
        raise MediaPolicyError(f"{label}: cannot resolve local path ({type(exc).__name__})") from None
    if not resolved.is_relative_to(root):
        raise MediaPolicyError(f"{label}: local path {describe_source(source)} is outside the allowed media root")
    return resolved
