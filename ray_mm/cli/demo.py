"""The demo workload of ``ray-mm run``: generated media, a loopback HTTP server, request lines.

Media are made with Pillow and PyAV (``ray_mm.media.synth``) and served from
127.0.0.1 or inlined as ``data:`` URIs. The workload mixes images, videos,
chat messages, one ``skip_tokenizer_init`` request and one bad request.
"""

from __future__ import annotations

import base64
import functools
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..media.synth import make_audio, make_image, make_video

LOOPBACK = "127.0.0.1"


def write_media(directory: str | Path, variants: int = 3) -> dict[str, list[str]]:
    """Write demo media files; returns file names per kind."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    names: dict[str, list[str]] = {"image": [], "video": [], "audio": []}
    shapes = [(1920, 1080, "JPEG"), (640, 480, "JPEG"), (800, 600, "PNG")]
    for k in range(variants):
        for w, h, fmt in shapes:
            name = f"img_{w}x{h}_{k}.{fmt.lower()}"
            (d / name).write_bytes(make_image(w, h, fmt, seed=k))
            names["image"].append(name)
        name = f"clip_{k}.mp4"
        (d / name).write_bytes(make_video(320, 240, fps=10, seconds=2.0 + k, seed=k))
        names["video"].append(name)
        name = f"tone_{k}.wav"
        (d / name).write_bytes(make_audio(2.0 + k, 16000, "wav", freq=300.0 + 100 * k))
        names["audio"].append(name)
    return names


@contextmanager
def serve_directory(directory: str | Path, handler_class: type[http.server.SimpleHTTPRequestHandler] | None = None) -> Iterator[str]:
    """Serve ``directory`` over HTTP on 127.0.0.1 (ephemeral port); yields the base URL. ``handler_class``
    (default: a quiet file handler) lets tests serve misbehaving responses on other paths."""
    handler = functools.partial(handler_class or _QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        pass


def _data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def vision_requests(
    media_dir: str | Path, base_url: str, names: dict[str, list[str]], n: int, skip_ids: list[int] | None = None
) -> list[dict[str, Any]]:
    """``n`` requests for a Qwen2-VL model: images, videos, mixed prompts, chat, data: URIs."""
    d = Path(media_dir)
    img, vid = names["image"], names["video"]
    vs, ve = "<|vision_start|>", "<|vision_end|>"
    image_ph, video_ph = f"{vs}<|image_pad|>{ve}", f"{vs}<|video_pad|>{ve}"
    out: list[dict[str, Any]] = []
    for k in range(n):
        kind = k % 6
        rid = f"vl-{k:03d}"
        if kind == 0:
            out.append({"request_id": rid, "prompt": f"Describe {image_ph} please.", "images": [f"{base_url}/{img[k % len(img)]}"]})
        elif kind == 1:
            a, b = img[k % len(img)], img[(k + 1) % len(img)]
            out.append({"request_id": rid, "prompt": f"Compare {image_ph} and {image_ph}.",
                        "images": [f"{base_url}/{a}", f"{base_url}/{b}"]})
        elif kind == 2:
            out.append({"request_id": rid, "prompt": f"What happens in {video_ph}?",
                        "videos": [{"url": f"{base_url}/{vid[k % len(vid)]}", "fps": 2.0}]})
        elif kind == 3:
            out.append({"request_id": rid, "prompt": f"First {image_ph} then {video_ph} then {image_ph}.",
                        "images": [f"{base_url}/{img[k % len(img)]}", f"{base_url}/{img[(k + 2) % len(img)]}"],
                        "videos": [f"{base_url}/{vid[k % len(vid)]}"]})
        elif kind == 4:
            out.append({"request_id": rid, "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": _data_uri(d / img[(k + 1) % len(img)], "image/jpeg")}},
                {"type": "text", "text": "What is in this picture?"}]}]})
        else:
            out.append({"request_id": rid, "messages": [{"role": "user", "content": [
                {"type": "text", "text": "Watch this:"},
                {"type": "video_url", "video_url": {"url": f"{base_url}/{vid[(k + 1) % len(vid)]}"}}]}]})
    if skip_ids is not None:
        out.append({"request_id": "vl-ids", "input_ids": skip_ids, "skip_tokenizer_init": True,
                    "images": [f"{base_url}/{img[0]}"]})
    out.append({"request_id": "vl-bad", "prompt": f"Broken {image_ph}", "images": [f"{base_url}/does-not-exist.jpg"]})
    return out


def audio_requests(base_url: str, names: dict[str, list[str]], n: int) -> list[dict[str, Any]]:
    """``n`` requests for a Qwen2-Audio model, one or two clips each."""
    aud = names["audio"]
    ph = "<|audio_bos|><|AUDIO|><|audio_eos|>"
    out: list[dict[str, Any]] = []
    for k in range(n):
        if k % 2:
            out.append({"request_id": f"au-{k:03d}", "prompt": f"Audio 1: {ph}\nAudio 2: {ph}\nCompare them.",
                        "audios": [f"{base_url}/{aud[k % len(aud)]}", f"{base_url}/{aud[(k + 1) % len(aud)]}"]})
        else:
            out.append({"request_id": f"au-{k:03d}", "messages": [{"role": "user", "content": [
                {"type": "audio_url", "audio_url": {"url": f"{base_url}/{aud[k % len(aud)]}"}},
                {"type": "text", "text": "What do you hear?"}]}]})
    return out
