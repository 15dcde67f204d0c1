"""A reusable corpus of bad (and some good) request lines, with the error each must produce.

Built for ``ray-mm align`` today and for the Ray pool later: every case is a
plain JSON-able request line plus its expected outcome, so any front end that
writes the CLI's result records can be checked against it.

Usage::

    with serve_corpus_media(tmp_dir) as server:          # loopback HTTP server, counts hits per path
        corpus = build_corpus(tmp_dir, server.base_url)  # writes media under tmp_dir, returns a Corpus
        corpus.write_config(tmp_dir / "config.yaml")     # the policy the expectations assume
        with net_shim(corpus.fake_dns, corpus.public_standins):
            for case in corpus.cases: ...                # case.line, case.error_type, case.status
        corpus.triples()  # [(request_line, expected_error_type | None, expected_status | None), ...]

Network cases need a test resolver (no real DNS here, and SSRF cases need
names that resolve to private addresses) and one "public stand-in" name,
``media.example``, whose 127.0.0.1 answer counts as public so that the
loopback server can play a public media host while ``allow_private_addresses``
stays False. ``net_shim`` installs both in-process; in another process (a
subprocess, a Ray worker) call ``install_net_shim_from_env()`` with
``corpus.shim_env()`` in its environment, e.g. through Ray's
``runtime_env={"env_vars": corpus.shim_env(), "worker_process_setup_hook":
"tests.bad_input_corpus.install_net_shim_from_env"}``. Cases with
``needs_net_shim=False`` run anywhere with the config alone.

``python -m tests.bad_input_corpus ARGS...`` runs ``ray_mm.cli.main(ARGS)`` with the
shim taken from the environment; ``--then`` separates several CLI runs in one process.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import io
import json
import os
import random
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import yaml
from PIL import Image

from tests.unit.media_factory import make_audio, make_jpeg, make_png, make_png_header, make_video, make_webp

IMG = "<|vision_start|><|image_pad|><|vision_end|>"
VID = "<|vision_start|><|video_pad|><|vision_end|>"
AUD = "<|audio_bos|><|AUDIO|><|audio_eos|>"

VL, AUDIO = "qwen2_vl", "qwen2_audio"
STANDIN = "media.example"  # plays a public media host; served by the loopback server
SHIM_ENV = "RAY_MM_TEST_NET_SHIM"
MAX_MESSAGE_CHARS = 500  # no error message may be longer (no echoed URIs, URLs or payloads)

# The policy every expectation below assumes (written by Corpus.write_config).
FETCH_TIMEOUT_S = 1.0
SLOW_SERVER_S = 2.5
MAX_DOWNLOAD_BYTES = 1 << 20
MAX_AUDIO_S = 5.0
MAX_REDIRECTS = 3


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One request line and what must come of it."""

    name: str
    line: dict[str, Any] | str  # a request object, or a raw JSONL line (str) written verbatim
    error_type: str | None  # None: the request must succeed
    status: int | None
    model: str = VL  # which tiny model family the case is meant for
    needs_net_shim: bool = False  # uses fake DNS names / the public stand-in
    mentions: tuple[str, ...] = ()  # substrings the error message must contain
    must_not_echo: tuple[str, ...] = ()  # substrings the error message must NOT contain (secrets, payloads)
    expect_hits: tuple[tuple[str, int], ...] = ()  # (server path prefix, exact hit count) after the case ran
    note: str = ""  # the decision this case pins down

    @property
    def ok(self) -> bool:
        return self.error_type is None

    @property
    def request_id(self) -> str | None:
        """The id the result record must carry; ``None`` means the CLI's fallback ``line<N>``."""
        if isinstance(self.line, dict):
            rid = self.line.get("request_id")
            if isinstance(rid, (str, int)) and not isinstance(rid, bool) and str(rid):
                return str(rid)
        return None

    def as_triple(self) -> tuple[dict[str, Any] | str, str | None, int | None]:
        return (self.line, self.error_type, self.status)

    def jsonl(self) -> str:
        return self.line if isinstance(self.line, str) else json.dumps(self.line)


@dataclass
class Corpus:
    cases: list[Case]
    media_root: Path  # allowed_local_media_path
    outside_root: Path  # files that must never be readable
    base_url: str  # the loopback server as given
    fake_dns: dict[str, list[str]]
    public_standins: frozenset[str]

    def select(self, model: str | None = None, *, net_shim: bool | None = None) -> list[Case]:
        return [
            c for c in self.cases
            if (model is None or c.model == model) and (net_shim is None or c.needs_net_shim == net_shim)
        ]  # fmt: skip

    def triples(self, model: str | None = None) -> list[tuple[dict[str, Any] | str, str | None, int | None]]:
        return [c.as_triple() for c in self.select(model)]

    def config_dict(self) -> dict[str, Any]:
        return {
            "media": {
                "allowed_local_media_path": str(self.media_root),
                "allow_private_addresses": False,
                "fetch_timeout_s": FETCH_TIMEOUT_S,
                "max_download_bytes": MAX_DOWNLOAD_BYTES,
                "max_audio_duration_s": MAX_AUDIO_S,
                "max_redirects": MAX_REDIRECTS,
            }
        }

    def write_config(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(yaml.safe_dump(self.config_dict()))
        return path

    def shim_env(self) -> dict[str, str]:
        return {SHIM_ENV: json.dumps({"dns": self.fake_dns, "standins": sorted(self.public_standins)})}


def write_requests(path: str | Path, cases: Sequence[Case]) -> Path:
    """One line per case, in order: record ``k`` of the output belongs to ``cases[k]`` (fallback id ``line<k+1>``)."""
    path = Path(path)
    path.write_text("".join(c.jsonl() + "\n" for c in cases), encoding="utf-8")
    return path


def check_record(case: Case, record: dict[str, Any], fallback_id: str) -> list[str]:
    """Every way ``record`` disagrees with ``case`` (empty list: it matches)."""
    problems: list[str] = []
    want_id = case.request_id or fallback_id
    if record.get("request_id") != want_id:
        problems.append(f"request_id {record.get('request_id')!r} != {want_id!r}")
    if case.ok:
        if not record.get("ok"):
            problems.append(f"expected success, got {record.get('error')}")
        return problems
    err = record.get("error") or {}
    if record.get("ok") is not False:
        problems.append("expected a failure record (ok: false)")
    if err.get("type") != case.error_type or err.get("status") != case.status:
        problems.append(f"expected {case.error_type} {case.status}, got {err.get('type')} {err.get('status')}")
    message = str(err.get("message", ""))
    if len(message) > MAX_MESSAGE_CHARS:
        problems.append(f"message is {len(message)} chars (max {MAX_MESSAGE_CHARS})")
    if want_id not in message:
        problems.append(f"message does not name request {want_id!r}: {message[:200]!r}")
    problems += [f"message lacks {m!r}: {message[:200]!r}" for m in case.mentions if m not in message]
    problems += [f"message echoes {s[:30]!r}..." for s in case.must_not_echo if s in message]
    return problems


# ------------------------------------------------------------------------ builder


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{_b64(data)}"


def _set_wav_u32(wav: bytes, offset: int, value: int) -> bytes:
    return wav[:offset] + struct.pack("<I", value) + wav[offset + 4 :]


def _wav_data_offset(wav: bytes) -> int:
    i = wav.find(b"data", 12)
    assert i > 0, "no data chunk"
    return i + 4  # the chunk's size field


def _many_frame_gif(frames: int, size: int = 16) -> bytes:
    """An animated GIF with ``frames`` frames (alternating, so Pillow cannot merge them)."""
    imgs = [Image.new("P", (size, size), k % 2) for k in range(frames)]
    buf = io.BytesIO()
    imgs[0].save(buf, format="GIF", save_all=True, append_images=imgs[1:], duration=20, optimize=False)
    return buf.getvalue()


def _corrupt(data: bytes, start: int, length: int, seed: int = 1) -> bytes:
    rnd = random.Random(seed)
    out = bytearray(data)
    out[start : start + length] = bytes(rnd.randrange(256) for _ in range(length))
    return bytes(out)


def build_corpus(tmp_dir: str | Path, base_url: str) -> Corpus:
    """Write the corpus media under ``tmp_dir`` and return the cases, good ones interleaved with bad.

    ``base_url`` is the loopback server from :func:`serve_corpus_media` (same ``tmp_dir``):
    ``http://127.0.0.1:PORT``. Files go to ``tmp_dir/media`` (the allowed root) and
    ``tmp_dir/outside`` (never readable).
    """
    tmp = Path(tmp_dir).resolve()
    root, outside = tmp / "media", tmp / "outside"
    root.mkdir(parents=True, exist_ok=True)
    outside.mkdir(parents=True, exist_ok=True)
    port = urlsplit(base_url).port
    assert port, f"base_url needs an explicit port: {base_url}"
    standin = f"http://{STANDIN}:{port}"
    fake_dns = {
        STANDIN: ["127.0.0.1"],
        "loop.example": ["127.0.0.1"],
        "metadata.example": ["169.254.169.254"],
        "ten.example": ["10.1.2.3"],
        "cgnat.example": ["100.64.0.1"],
        "mapped.example": ["::ffff:127.0.0.1"],
        "mixed.example": ["93.184.216.34", "10.0.0.5"],
    }

    def put(name: str, data: bytes, where: Path = root) -> Path:
        p = where / name
        p.write_bytes(data)
        return p

    # ---- media
    jpeg, png, webp = make_jpeg(64, 48), make_png(48, 40), make_webp(56, 40)
    video = make_video(128, 64, fps=10, duration_s=2.0, gop=5)
    wav_1s = make_audio(1.0, 8000, 1, "wav")
    wav_6s = make_audio(6.0, 8000, 1, "wav")  # over MAX_AUDIO_S
    put("ok.jpg", jpeg)
    put("ok.png", png)
    put("ok.webp", webp)
    put("ok.mp4", video)
    put("truncated.jpg", jpeg[: len(jpeg) // 2])
    put("corrupt.png", _corrupt(png, 33, 24))  # IHDR survives, the next chunk is garbage
    put("text.jpg", b"Hello, I am plain text pretending to be a JPEG.\n" * 4)
    put("empty.jpg", b"")
    put("empty.mp4", b"")
    put("gif3000.gif", _many_frame_gif(3000))
    put("secret.jpg", jpeg, outside)
    (root / "escape.jpg").symlink_to(outside / "secret.jpg")
    (root / "sub").mkdir(exist_ok=True)
    mdat = video.find(b"mdat")
    mdat_size = struct.unpack(">I", video[mdat - 4 : mdat])[0]
    put("corrupt_middle.mp4", _corrupt(video, mdat + mdat_size // 2, 400))
    put("one_frame.mp4", make_video(64, 64, fps=10, duration_s=0.1))

    padded = png + b"\x00" * ((1 - len(png)) % 3)  # length 3k+1: its base64 ends in "=="
    bad_pad = _b64(padded).rstrip("=")
    assert _b64(padded).endswith("==")
    long_url = f"{standin}/m/{'a' * 100_000}.jpg"
    over_cap_b64 = _b64(jpeg + b"\x00" * (MAX_DOWNLOAD_BYTES + 1024))

    def rel(*parts: str) -> str:
        return "/".join(parts)

    def img(rid: str, *sources: Any, prompt: str | None = None) -> dict[str, Any]:
        return {"request_id": rid, "prompt": prompt if prompt is not None else IMG * len(sources) + " describe", "images": list(sources)}

    def vid(rid: str, source: Any) -> dict[str, Any]:
        return {"request_id": rid, "prompt": VID + " what happens?", "videos": [source]}

    def aud(rid: str, source: Any) -> dict[str, Any]:
        return {"request_id": rid, "prompt": AUD + " transcribe", "audios": [source]}

    def chat(rid: str, messages: Any) -> dict[str, Any]:
        return {"request_id": rid, "messages": messages}

    def user(content: Any) -> list[dict[str, Any]]:
        return [{"role": "user", "content": content}]

    cases: list[Case] = []

    def good(name: str, line: dict[str, Any], **kw: Any) -> None:
        cases.append(Case(name, line, None, None, **kw))

    def bad(name: str, line: dict[str, Any] | str, error_type: str, status: int, **kw: Any) -> None:
        cases.append(Case(name, line, error_type, status, **kw))

    def ssrf(name: str, url: str, *, shim: bool, **kw: Any) -> None:
        """A URL that must be refused before any connection: its /ssrf/<name> path must see no hits."""
        bad(name, img(name, url), "MediaPolicyError", 403, needs_net_shim=shim, expect_hits=((f"/ssrf/{name}", 0),), **kw)

    # ---------------------------------------------------------------- images
    good("good-jpeg-data-uri", img("good-jpeg-data-uri", _data_uri(jpeg, "image/jpeg")))
    bad("jpeg-truncated", img("jpeg-truncated", "truncated.jpg"), "MediaDecodeError", 400, mentions=("image 0 of request jpeg-truncated",))
    bad("jpeg-corrupt-header", img("jpeg-corrupt-header", _data_uri(_corrupt(jpeg, 20, 40), "image/jpeg")), "MediaDecodeError", 400)
    bad("jpeg-corrupt-scan", img("jpeg-corrupt-scan", _data_uri(_corrupt(jpeg, len(jpeg) // 2, 200), "image/jpeg")),
        "MediaDecodeError", 400)  # fmt: skip
    bad("png-truncated", img("png-truncated", _data_uri(png[:-30], "image/png")), "MediaDecodeError", 400)
    bad("png-corrupt", img("png-corrupt", "corrupt.png"), "MediaDecodeError", 400)
    good("good-png-relative-path", img("good-png-relative-path", "ok.png"))
    bad("webp-truncated", img("webp-truncated", _data_uri(webp[: len(webp) // 2], "image/webp")), "MediaDecodeError", 400)
    bad("webp-corrupt", img("webp-corrupt", _data_uri(_corrupt(webp, 20, 10), "image/webp")), "MediaDecodeError", 400)
    bad("png-pixel-bomb-50000x50000", img("png-pixel-bomb-50000x50000", _data_uri(make_png_header(50000, 50000), "image/png")),
        "MediaLimitError", 413, mentions=("2500000000",))  # fmt: skip
    bad("image-aspect-ratio-400", img("image-aspect-ratio-400", _data_uri(make_png(1, 400), "image/png")), "MediaUnsupportedError", 422,
        mentions=("image 0 of request image-aspect-ratio-400", "aspect ratio"),
        note="a valid image the model refuses (Qwen2-VL's limit is 200): was InternalError 500")  # fmt: skip
    good("gif-3000-frames-as-image", img("gif-3000-frames-as-image", "gif3000.gif"),
         note="an animated image given as an image yields its first frame only; frames are never all decoded")  # fmt: skip
    bad("text-as-image-file", img("text-as-image-file", "text.jpg"), "MediaDecodeError", 400, mentions=("not a recognised image",))
    bad("text-as-image-data-uri", img("text-as-image-data-uri", _data_uri(b"GIF? no. <html>not an image</html>", "image/png")),
        "MediaDecodeError", 400, mentions=("not a recognised image",))  # fmt: skip
    bad("zero-bytes-file", img("zero-bytes-file", "empty.jpg"), "MediaFetchError", 400)
    bad("zero-bytes-data-uri", img("zero-bytes-data-uri", "data:image/png;base64,"), "MediaFetchError", 400)
    good("good-webp-file-url", img("good-webp-file-url", (root / "ok.webp").as_uri()))
    bad("base64-padding-stripped", img("base64-padding-stripped", f"data:image/png;base64,{bad_pad}"), "MediaFetchError", 400,
        mentions=("invalid base64",), must_not_echo=(bad_pad[8:48],))  # fmt: skip
    bad("base64-padding-in-middle", img("base64-padding-in-middle", f"data:image/png;base64,{bad_pad[:40]}=={bad_pad[40:]}"),
        "MediaFetchError", 400, must_not_echo=(bad_pad[8:48],))  # fmt: skip
    bad("data-uri-over-byte-cap", img("data-uri-over-byte-cap", f"data:image/jpeg;base64,{over_cap_b64}"), "MediaLimitError", 413,
        must_not_echo=(over_cap_b64[8:48],))  # fmt: skip
    bad("items-over-per-request-cap", img("items-over-per-request-cap", *(["ok.jpg"] * 65)), "MediaLimitError", 413,
        mentions=("65 media items",), note="max_items_per_request is 64 by default")  # fmt: skip
    bad("empty-url-string", img("empty-url-string", ""), "MediaFetchError", 400)
    bad("empty-url-object", img("empty-url-object", {"url": ""}), "MediaFetchError", 400)
    bad("url-100kB", img("url-100kB", long_url), "MediaPolicyError", 403, needs_net_shim=True, must_not_echo=("a" * 200,),
        note="over max_url_chars (8192 by default) is a policy refusal")  # fmt: skip
    bad("media-entry-int", img("media-entry-int", 5), "MediaFetchError", 400, mentions=("unsupported media source type",))
    bad("media-url-int", img("media-url-int", {"url": 5}), "MediaFetchError", 400)
    bad("image-option-max-pixels-not-int", img("image-option-max-pixels-not-int", {"url": "ok.jpg", "max_pixels": "lots"}),
        "RequestError", 400, note="core fix: was InternalError 500")  # fmt: skip
    bad("image-option-min-pixels-upscale-bomb", img("image-option-min-pixels-upscale-bomb", {"url": "ok.jpg", "min_pixels": 10**10}),
        "MediaLimitError", 413, note="core fix: a 64x48 image was upscaled to min_pixels, unbounded")  # fmt: skip
    bad("image-option-size-not-object", img("image-option-size-not-object", {"url": "ok.jpg", "size": "big"}), "RequestError", 400,
        note="core fix: was silently ignored")  # fmt: skip
    bad("image-option-size-unknown-key", img("image-option-size-unknown-key", {"url": "ok.jpg", "size": {"huge": 1}}),
        "RequestError", 400, note="core fix: the processor's ValueError on client options was InternalError 500")  # fmt: skip
    good("image-option-unknown-key", img("image-option-unknown-key", {"url": "ok.jpg", "bogus": 1}),
         note="unknown per-item option keys pass through to the processor, which ignores them (not rejected yet)")  # fmt: skip

    # ---------------------------------------------------------------- schemes and local paths
    bad("scheme-ftp", img("scheme-ftp", "ftp://media.example/a.jpg"), "MediaPolicyError", 403)
    bad("scheme-gopher", img("scheme-gopher", "gopher://127.0.0.1:70/_GET%20/"), "MediaPolicyError", 403)
    bad("scheme-javascript", img("scheme-javascript", "javascript:alert(document.cookie)"), "MediaPolicyError", 403)
    bad("file-outside-root-absolute", img("file-outside-root-absolute", str(outside / "secret.jpg")), "MediaPolicyError", 403)
    good("good-http-standin", img("good-http-standin", f"{standin}/m/ok.jpg"), needs_net_shim=True,
         expect_hits=(("/m/ok.jpg", 1),))  # fmt: skip
    bad("dotdot-traversal-path", img("dotdot-traversal-path", rel("..", "outside", "secret.jpg")), "MediaPolicyError", 403)
    bad("dotdot-traversal-deep", img("dotdot-traversal-deep", rel("sub", "..", "..", "..", "..", "etc", "passwd")),
        "MediaPolicyError", 403)  # fmt: skip
    bad("dotdot-traversal-file-url", img("dotdot-traversal-file-url", f"file://{root}/../outside/secret.jpg"), "MediaPolicyError", 403)
    bad("symlink-escape", img("symlink-escape", "escape.jpg"), "MediaPolicyError", 403)
    bad("percent-encoded-traversal-file-url", img("percent-encoded-traversal-file-url", f"file://{root}/%2e%2e/outside/secret.jpg"),
        "MediaPolicyError", 403, note="file:// URLs are percent-decoded before the root check")  # fmt: skip
    bad("percent-encoded-traversal-plain-path", img("percent-encoded-traversal-plain-path", "%2e%2e/outside/secret.jpg"),
        "MediaFetchError", 400, note="plain paths are literal: '%2e%2e' is a (missing) directory name under the root")  # fmt: skip
    bad("file-url-remote-host", img("file-url-remote-host", "file://evil.example/etc/passwd"), "MediaPolicyError", 403)

    # ---------------------------------------------------------------- http: credentials, SSRF, redirects, caps
    bad("url-with-credentials", img("url-with-credentials", f"http://alice:s3cr3t-pw@{STANDIN}:{port}/ssrf/url-with-credentials"),
        "MediaPolicyError", 403, needs_net_shim=True, must_not_echo=("s3cr3t-pw", "alice:"),
        expect_hits=(("/ssrf/url-with-credentials", 0),))  # fmt: skip
    ssrf("ssrf-literal-127.0.0.1", f"http://127.0.0.1:{port}/ssrf/ssrf-literal-127.0.0.1", shim=False)
    ssrf("ssrf-literal-mapped-v6", f"http://[::ffff:127.0.0.1]:{port}/ssrf/ssrf-literal-mapped-v6", shim=False)
    ssrf("ssrf-literal-decimal", f"http://2130706433:{port}/ssrf/ssrf-literal-decimal", shim=False)
    ssrf("ssrf-literal-metadata", "http://169.254.169.254/ssrf/ssrf-literal-metadata", shim=False)
    ssrf("ssrf-name-to-loopback", f"http://loop.example:{port}/ssrf/ssrf-name-to-loopback", shim=True, mentions=("127.0.0.1",))
    good("good-video-file", vid("good-video-file", "ok.mp4"))
    ssrf("ssrf-name-to-metadata", f"http://metadata.example:{port}/ssrf/ssrf-name-to-metadata", shim=True, mentions=("169.254.169.254",))
    ssrf("ssrf-name-to-10.x", f"http://ten.example:{port}/ssrf/ssrf-name-to-10.x", shim=True, mentions=("10.1.2.3",))
    ssrf("ssrf-name-to-cgnat", f"http://cgnat.example:{port}/ssrf/ssrf-name-to-cgnat", shim=True, mentions=("100.64.0.1",))
    ssrf("ssrf-name-to-mapped-v6", f"http://mapped.example:{port}/ssrf/ssrf-name-to-mapped-v6", shim=True)
    ssrf("ssrf-name-mixed-records", f"http://mixed.example:{port}/ssrf/ssrf-name-mixed-records", shim=True, mentions=("10.0.0.5",))
    redirect_meta = quote(f"http://metadata.example:{port}/ssrf/redirect-to-metadata", safe="")
    bad("redirect-to-metadata", img("redirect-to-metadata", f"{standin}/redirect/redirect-to-metadata?to={redirect_meta}"),
        "MediaPolicyError", 403, needs_net_shim=True, mentions=("169.254.169.254",),
        expect_hits=(("/redirect/redirect-to-metadata", 1), ("/ssrf/redirect-to-metadata", 0)))  # fmt: skip
    redirect_lo = quote(f"http://127.0.0.1:{port}/ssrf/redirect-to-loopback", safe="")
    bad("redirect-to-loopback", img("redirect-to-loopback", f"{standin}/redirect/redirect-to-loopback?to={redirect_lo}"),
        "MediaPolicyError", 403, needs_net_shim=True,
        expect_hits=(("/redirect/redirect-to-loopback", 1), ("/ssrf/redirect-to-loopback", 0)))  # fmt: skip
    bad("redirect-to-file-scheme", img("redirect-to-file-scheme", f"{standin}/redirect/redirect-to-file?to=file%3A%2F%2F%2Fetc%2Fpasswd"),
        "MediaPolicyError", 403, needs_net_shim=True)  # fmt: skip
    good("good-redirect-one-hop", img("good-redirect-one-hop", f"{standin}/redirect/good-one-hop?to=%2Fm%2Fok.png"),
         needs_net_shim=True, expect_hits=(("/redirect/good-one-hop", 1),))  # fmt: skip
    bad("too-many-redirects", img("too-many-redirects", f"{standin}/loop/too-many-redirects/0"), "MediaFetchError", 400,
        needs_net_shim=True, mentions=("redirects",), expect_hits=(("/loop/too-many-redirects/", MAX_REDIRECTS + 1),))  # fmt: skip
    bad("chunked-over-byte-cap", img("chunked-over-byte-cap", f"{standin}/chunked/{2 * MAX_DOWNLOAD_BYTES}"), "MediaLimitError", 413,
        needs_net_shim=True, note="no Content-Length: counted while streaming")  # fmt: skip
    bad("fetch-timeout", img("fetch-timeout", f"{standin}/slow/fetch-timeout"), "MediaFetchError", 504, needs_net_shim=True,
        mentions=("fetch deadline",))  # fmt: skip
    bad("http-404", img("http-404", f"{standin}/m/no-such-file.jpg"), "MediaFetchError", 400, needs_net_shim=True)
    bad("http-empty-body", img("http-empty-body", f"{standin}/empty"), "MediaFetchError", 400, needs_net_shim=True)
    bad("unresolvable-host", img("unresolvable-host", "http://no-such-host.invalid/a.jpg"), "MediaFetchError", 400,
        needs_net_shim=True)  # fmt: skip

    # ---------------------------------------------------------------- video
    bad("video-h264-corrupt-middle", vid("video-h264-corrupt-middle", "corrupt_middle.mp4"), "MediaDecodeError", 400,
        note="garbage inside mdat: the decoder's error fails the item (no concealment)")  # fmt: skip
    bad("video-zero-length-file", vid("video-zero-length-file", "empty.mp4"), "MediaFetchError", 400)
    bad("video-zero-length-http", vid("video-zero-length-http", f"{standin}/empty"), "MediaFetchError", 400, needs_net_shim=True)
    bad("video-one-frame", vid("video-one-frame", "one_frame.mp4"), "MediaDecodeError", 400, mentions=("1-frame",),
        note="the qwen-vl-utils rule needs at least frame_factor (2) frames; one frame is not padded")  # fmt: skip
    bad("video-truncated", vid("video-truncated", _data_uri(video[: len(video) // 2], "video/mp4")), "MediaDecodeError", 400)
    bad("jpeg-given-as-video", vid("jpeg-given-as-video", "ok.jpg"), "MediaDecodeError", 400)
    bad("video-nframes-negative", vid("video-nframes-negative", {"url": "ok.mp4", "nframes": -4}), "RequestError", 400)
    bad("video-fps-and-nframes", vid("video-fps-and-nframes", {"url": "ok.mp4", "fps": 1, "nframes": 4}), "RequestError", 400)

    # ---------------------------------------------------------------- audio (qwen2_audio)
    good("good-audio-wav", aud("good-audio-wav", _data_uri(wav_1s, "audio/wav")), model=AUDIO)
    bad("audio-over-duration-cap", aud("audio-over-duration-cap", _data_uri(wav_6s, "audio/wav")), "MediaLimitError", 413, model=AUDIO)
    d1, d6 = _wav_data_offset(wav_1s), _wav_data_offset(wav_6s)
    good("wav-header-claims-huge-size", aud("wav-header-claims-huge-size", _data_uri(_set_wav_u32(wav_1s, d1, 0xFFFFFFF0), "audio/wav")),
         model=AUDIO, note="a data size larger than the file: what is there is decoded; no false limit")  # fmt: skip
    bad("wav-huge-size-long-file", aud("wav-huge-size-long-file", _data_uri(_set_wav_u32(wav_6s, d6, 0xFFFFFFF0), "audio/wav")),
        "MediaLimitError", 413, model=AUDIO, note="the cap is re-checked while decoding")  # fmt: skip
    good("wav-header-claims-small-size", aud("wav-header-claims-small-size", _data_uri(_set_wav_u32(wav_6s, d6, 3200), "audio/wav")),
         model=AUDIO, note="a 6 s file declaring 0.2 s of data: only the declared 0.2 s is decoded, so the cap holds")  # fmt: skip
    bad("wav-header-lies-sample-rate", aud("wav-header-lies-sample-rate", _data_uri(_set_wav_u32(wav_1s, 24, 8), "audio/wav")),
        "MediaLimitError", 413, model=AUDIO, note="8000 samples declared at 8 Hz last 1000 s")  # fmt: skip
    bad("wav-header-only", aud("wav-header-only", _data_uri(wav_1s[:40], "audio/wav")), "MediaDecodeError", 400, model=AUDIO)
    bad("text-as-audio", aud("text-as-audio", _data_uri(b"RIFF? no, just text " * 8, "audio/wav")), "MediaDecodeError", 400,
        model=AUDIO)  # fmt: skip
    bad("input-audio-bad-base64", chat("input-audio-bad-base64", [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "UklGR!!!", "format": "wav"}}, {"type": "text", "text": "hi"}]}]),
        "MediaFetchError", 400, model=AUDIO)  # fmt: skip
    bad("audio-to-vision-model", aud("audio-to-vision-model", _data_uri(wav_1s, "audio/wav")), "RequestError", 400,
        mentions=("does not accept audio",))  # fmt: skip

    # ---------------------------------------------------------------- request schema
    good("good-text-only", {"request_id": "good-text-only", "prompt": "just text"})
    bad("not-json", '{"request_id": "not-json", "prompt": "unterminated', "RequestError", 400, mentions=("not valid JSON",))
    bad("json-array-line", "[1, 2, 3]", "RequestError", 400)
    bad("missing-request-id", {"prompt": "hi"}, "RequestError", 400, mentions=("request_id",))
    bad("request-id-empty", {"request_id": "", "prompt": "hi"}, "RequestError", 400)
    bad("request-id-list", {"request_id": ["a"], "prompt": "hi"}, "RequestError", 400)
    bad("unknown-top-level-key", {"request_id": "unknown-top-level-key", "prompt": "hi", "temperature": 0.2}, "RequestError", 400,
        mentions=("temperature",))  # fmt: skip
    bad("prompt-not-string", {"request_id": "prompt-not-string", "prompt": 42}, "RequestError", 400)
    bad("images-not-list", {"request_id": "images-not-list", "prompt": IMG, "images": "ok.jpg"}, "RequestError", 400)
    bad("skip-tokenizer-init-not-bool", {"request_id": "skip-tokenizer-init-not-bool", "input_ids": [1], "skip_tokenizer_init": "yes"},
        "RequestError", 400)  # fmt: skip
    bad("skip-tokenizer-init-with-prompt", {"request_id": "skip-tokenizer-init-with-prompt", "prompt": "hi", "skip_tokenizer_init": True},
        "RequestError", 400)  # fmt: skip
    bad("prompt-and-messages", {"request_id": "prompt-and-messages", "prompt": "hi", "messages": [{"role": "user", "content": "x"}]},
        "RequestError", 400)  # fmt: skip
    bad("no-prompt-form", {"request_id": "no-prompt-form", "images": ["ok.jpg"]}, "RequestError", 400)
    bad("input-ids-negative", {"request_id": "input-ids-negative", "input_ids": [1, 2, -7]}, "RequestError", 400, mentions=("-7",))
    bad("input-ids-out-of-vocab", {"request_id": "input-ids-out-of-vocab", "input_ids": [1, 10**9]}, "RequestError", 400)
    bad("input-ids-strings", {"request_id": "input-ids-strings", "input_ids": ["1", "2"]}, "RequestError", 400)
    bad("input-ids-floats", {"request_id": "input-ids-floats", "input_ids": [1.5]}, "RequestError", 400)
    bad("input-ids-empty", {"request_id": "input-ids-empty", "input_ids": []}, "RequestError", 400)
    bad("media-entry-null", img("media-entry-null", None), "RequestError", 400)
    bad("media-object-without-url", img("media-object-without-url", {"path": "ok.jpg"}), "RequestError", 400)
    image_part = {"type": "image_url", "image_url": {"url": _data_uri(jpeg, "image/jpeg")}}
    good("good-messages-image", chat("good-messages-image", user([image_part, {"type": "text", "text": "what is it?"}])))
    bad("messages-not-list", chat("messages-not-list", {"role": "user", "content": "hi"}), "RequestError", 400)
    bad("messages-empty", chat("messages-empty", []), "RequestError", 400)
    bad("messages-list-of-strings", chat("messages-list-of-strings", ["hello"]), "RequestError", 400)
    bad("message-without-role", chat("message-without-role", [{"content": "hi"}]), "RequestError", 400)
    bad("message-content-int", chat("message-content-int", [{"role": "user", "content": 7}]), "RequestError", 400)
    bad("message-content-nested-lists", chat("message-content-nested-lists", [{"role": "user", "content": [["text", "hi"]]}]),
        "RequestError", 400)  # fmt: skip
    bad("message-part-without-type", chat("message-part-without-type", [{"role": "user", "content": [{"text": "hi"}]}]),
        "RequestError", 400)  # fmt: skip
    bad("message-part-unknown-type", chat("message-part-unknown-type", user([{"type": "image", "image": "ok.jpg"}])),
        "RequestError", 400)  # fmt: skip
    bad("message-image-url-missing", chat("message-image-url-missing", [{"role": "user", "content": [{"type": "image_url"}]}]),
        "RequestError", 400)  # fmt: skip
    bad("message-text-not-string", chat("message-text-not-string", [{"role": "user", "content": [{"type": "text", "text": 3}]}]),
        "RequestError", 400)  # fmt: skip
    bad("messages-plus-images", {"request_id": "messages-plus-images", "messages": user("hi"), "images": ["ok.jpg"]},
        "RequestError", 400)  # fmt: skip
    bad("more-placeholders-than-images", img("more-placeholders-than-images", "ok.jpg", prompt=IMG + IMG + " two?"),
        "AlignmentError", 400)  # fmt: skip
    bad("fewer-placeholders-than-images", img("fewer-placeholders-than-images", "ok.jpg", "ok.png", prompt=IMG + " one?"),
        "AlignmentError", 400)  # fmt: skip
    bad("no-placeholder-for-video", {"request_id": "no-placeholder-for-video", "prompt": "no video token", "videos": ["ok.mp4"]},
        "AlignmentError", 400)  # fmt: skip
    good("good-last", img("good-last", "ok.jpg"))

    names = [c.name for c in cases]
    dupes = [n for n, k in collections.Counter(names).items() if k > 1]
    assert not dupes, f"duplicate case names: {dupes}"
    return Corpus(cases, root, outside, base_url, fake_dns, frozenset({STANDIN}))


# -------------------------------------------------------------------- loopback server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _CorpusServer

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        path, _, query = self.path.partition("?")
        self.server.record_hit(path)
        if path.startswith("/m/"):
            f = (self.server.media_root / path[3:]).resolve()
            if f.is_relative_to(self.server.media_root) and f.is_file():
                self._send(200, f.read_bytes())
            else:
                self._send(404, b"not found")
        elif path == "/empty":
            self._send(200, b"")
        elif path.startswith("/redirect/"):
            self._redirect(parse_qs(query).get("to", ["/"])[0])
        elif path.startswith("/loop/"):
            head, _, k = path.rpartition("/")
            self._redirect(f"{head}/{int(k) + 1}")
        elif path.startswith("/chunked/"):
            self._chunked(int(path.rsplit("/", 1)[1]))
        elif path.startswith("/slow/"):
            time.sleep(SLOW_SERVER_S)
            self._send(200, make_jpeg(16, 16))
        elif path.startswith("/ssrf/"):
            self._send(200, make_jpeg(16, 16))  # a refused URL must never get here
        else:
            self._send(404, b"not found")

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _chunked(self, n: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        block, sent = b"\xff" * 16384, 0
        while sent < n:
            part = block[: min(len(block), n - sent)]
            self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            sent += len(part)
        self.wfile.write(b"0\r\n\r\n")


class _CorpusServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, media_root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.media_root = media_root
        self.hits: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that give up (caps, timeouts) leave broken pipes here, by design

    def record_hit(self, path: str) -> None:
        with self._lock:
            self.hits[path] += 1


@dataclass
class CorpusServer:
    base_url: str
    _httpd: _CorpusServer

    def hits(self, prefix: str) -> int:
        """Requests seen so far whose path starts with ``prefix``."""
        with self._httpd._lock:
            return sum(n for p, n in self._httpd.hits.items() if p.startswith(prefix))

    def reset(self) -> None:
        with self._httpd._lock:
            self._httpd.hits.clear()


@contextlib.contextmanager
def serve_corpus_media(tmp_dir: str | Path) -> Iterator[CorpusServer]:
    """Serve ``tmp_dir/media`` and the corpus's special routes on 127.0.0.1 (a free port)."""
    root = Path(tmp_dir).resolve() / "media"
    root.mkdir(parents=True, exist_ok=True)
    httpd = _CorpusServer(root)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield CorpusServer(f"http://127.0.0.1:{httpd.server_address[1]}", httpd)
    finally:
        httpd.shutdown()
        httpd.server_close()


# ------------------------------------------------------------------------ network shim


def _install(fake_dns: dict[str, list[str]], standins: frozenset[str]) -> tuple[Any, Any]:
    from ray_mm.media import connector, policy

    real_resolve, real_check = connector.resolve_host, policy.check_address
    dns = {k.lower(): list(v) for k, v in fake_dns.items()}

    def fake_resolve(host: str, port: int) -> list[str]:
        if host.lower() in dns:
            return list(dns[host.lower()])
        try:  # IP literals (also inet_aton forms such as 2130706433) resolve without DNS
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
        except socket.gaierror:
            raise OSError(f"test resolver: unknown host {host!r}") from None
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    def check_address(address: str, pol: Any, label: str, host: str = "") -> None:
        if host.lower() in standins and address == "127.0.0.1":
            return None  # the stand-in plays a public host
        return real_check(address, pol, label, host)

    connector.resolve_host = fake_resolve
    policy.check_address = check_address
    return real_resolve, real_check


@contextlib.contextmanager
def net_shim(fake_dns: dict[str, list[str]], standins: frozenset[str] | Sequence[str]) -> Iterator[None]:
    """In-process: fake DNS for the corpus names, and loopback allowed for the stand-in names only."""
    from ray_mm.media import connector, policy

    real_resolve, real_check = _install(fake_dns, frozenset(s.lower() for s in standins))
    try:
        yield
    finally:
        connector.resolve_host = real_resolve
        policy.check_address = real_check


def install_net_shim_from_env() -> bool:
    """Install the shim described by ``$RAY_MM_TEST_NET_SHIM`` (from ``Corpus.shim_env``); False if unset."""
    spec = os.environ.get(SHIM_ENV)
    if not spec:
        return False
    data = json.loads(spec)
    _install(data["dns"], frozenset(s.lower() for s in data["standins"]))
    return True


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.bad_input_corpus ARGS [--then ARGS ...]``: ``ray-mm`` with the shim from the env."""
    from ray_mm.cli import main as cli_main

    install_net_shim_from_env()
    argv = list(sys.argv[1:] if argv is None else argv)
    runs: list[list[str]] = [[]]
    for arg in argv:
        if arg == "--then":
            runs.append([])
        else:
            runs[-1].append(arg)
    codes = [cli_main(run) for run in runs if run]
    return max(codes, default=0)


if __name__ == "__main__":
    raise SystemExit(main())
