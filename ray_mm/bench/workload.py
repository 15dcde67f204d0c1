"""The bench workload: generated media served on 127.0.0.1 and the request lines built on it.

1080p and 640x480 JPEGs, 800x600 PNGs, 10 s 360p H.264 clips, 30 s AAC; every URL distinct (a query
string), as distinct media would be in serving. See BENCHMARKS.md, "What is measured".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import RayMMConfig

IMAGES_PER_REQUEST = 4
VIDEO_NFRAMES = 16
IMAGE_PH = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO_PH = "<|vision_start|><|video_pad|><|vision_end|>"
AUDIO_PH = "<|audio_bos|><|AUDIO|><|audio_eos|>"


@dataclass
class Workload:
    """One named set of request lines for one model (every pipeline gets the same)."""

    name: str
    model_dir: str
    core: RayMMConfig
    lines: list[tuple[str, dict[str, Any]]]
    adapter: str | None = None


def write_bench_media(directory: Path, audio: bool) -> dict[str, list[str]]:
    """1080p and 640x480 JPEGs, 800x600 PNGs, 10 s 360p H.264 clips (30 fps, keyframe every 2 s), 30 s AAC."""
    from ..media.synth import make_audio, make_image, make_video

    directory.mkdir(parents=True, exist_ok=True)
    names: dict[str, list[str]] = {"jpeg_1080p": [], "jpeg_480p": [], "png": [], "video": [], "audio": []}
    for k in range(3):
        for key, (w, h, fmt) in {"jpeg_1080p": (1920, 1080, "JPEG"), "jpeg_480p": (640, 480, "JPEG"),
                                 "png": (800, 600, "PNG")}.items():
            name = f"{key}_{k}.{fmt.lower()}"
            (directory / name).write_bytes(make_image(w, h, fmt, seed=k))
            names[key].append(name)
    for k in range(2):
        name = f"clip_360p_{k}.mp4"
        (directory / name).write_bytes(make_video(640, 360, fps=30, seconds=10.0, gop=60, seed=k))
        names["video"].append(name)
        if audio:
            name = f"speech_{k}.aac"
            (directory / name).write_bytes(make_audio(30.0, 44100, "aac", freq=300.0 + 150 * k))
            names["audio"].append(name)
    return names


def vision_lines(base: str, names: dict[str, list[str]], n_image: int, n_video: int) -> list[tuple[str, dict[str, Any]]]:
    """Image requests (4 images: two 1080p JPEGs, two 640x480 JPEGs, every 4th with a PNG instead) and
    video requests (one clip, nframes=16), interleaved. Every URL is distinct (a query string), as
    distinct media would be in serving; the server ignores the query."""
    lines: list[tuple[str, dict[str, Any]]] = []
    total = n_image + n_video
    video_every = max(1, round(total / n_video)) if n_video else 0
    i_img = i_vid = 0
    for k in range(total):
        is_video = n_video and (i_vid < n_video) and ((k % video_every == video_every - 1) or i_img >= n_image)
        rid = f"bench-{k:04d}"
        if is_video:
            url = f"{base}/{names['video'][i_vid % len(names['video'])]}?r={rid}"
            lines.append((rid, {"request_id": rid, "prompt": f"What happens in {VIDEO_PH}? Answer briefly.",
                                "videos": [{"url": url, "nframes": VIDEO_NFRAMES}]}))
            i_vid += 1
        else:
            picks = [names["jpeg_1080p"][i_img % 3], names["jpeg_480p"][i_img % 3],
                     names["jpeg_1080p"][(i_img + 1) % 3],
                     names["png"][i_img % 3] if i_img % 4 == 3 else names["jpeg_480p"][(i_img + 1) % 3]]
            urls = [f"{base}/{p}?r={rid}-{j}" for j, p in enumerate(picks)]
            prompt = "Compare these pages. " + " ".join(f"Page {j + 1}: {IMAGE_PH}" for j in range(len(urls)))
            lines.append((rid, {"request_id": rid, "prompt": prompt, "images": urls}))
            i_img += 1
    return lines


def audio_lines(base: str, names: dict[str, list[str]], n: int) -> list[tuple[str, dict[str, Any]]]:
    return [(f"audio-{k:04d}", {"request_id": f"audio-{k:04d}", "prompt": f"Transcribe: {AUDIO_PH}",
                                "audios": [f"{base}/{names['audio'][k % len(names['audio'])]}?r={k}"]})
            for k in range(n)]


def coordinator_lines(base: str, names: dict[str, list[str]], n: int) -> list[tuple[str, dict[str, Any]]]:
    """Small 4-image requests (640x480 JPEGs) for the coordinator-CPU measurement."""
    out = []
    for k in range(n):
        rid = f"coord-{k:04d}"
        urls = [f"{base}/{names['jpeg_480p'][j % 3]}?r={rid}-{j}" for j in range(IMAGES_PER_REQUEST)]
        out.append((rid, {"request_id": rid, "prompt": "Pages: " + " ".join([IMAGE_PH] * 4), "images": urls}))
    return out


def rename(lines: list[tuple[str, dict[str, Any]]], prefix: str) -> list[tuple[str, dict[str, Any]]]:
    """The same requests under fresh ids (the pool refuses an id it still holds)."""
    return [(f"{prefix}{rid}", {**line, "request_id": f"{prefix}{rid}"}) for rid, line in lines]
