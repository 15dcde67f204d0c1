"""Microbenchmarks shared by ``benchmarks/*.py`` and ``ray-mm bench``.

They return plain dicts of measured numbers; nothing here asserts a speed.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .align import align
from .types import Expansion, ItemMeta


def _best_of(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _structured_items(total_tokens: int, n_videos: int, n_images: int) -> tuple[dict[str, list[ItemMeta]], int, int]:
    """Qwen3-VL-shaped videos (per temporal group: timestamp text, vision start, a run, vision end) and
    MiniCPM-V-shaped sliced images (id prefix, overview run, 3x3 slice rows joined by newlines), about
    ``total_tokens`` in all. Token ids are made up: alignment only compares them."""
    image_tok, video_tok, vs, ve, sl_s, sl_e, im_s, im_e, nl = 151655, 151656, 151652, 151653, 7, 8, 9, 10, 198
    per_item = total_tokens // (n_videos + n_images)
    items: dict[str, list[ItemMeta]] = {"image": [], "video": []}
    for k in range(n_videos):
        groups = per_item // 68  # 64 tokens per temporal group plus 4 of text
        texts = [[27, 15 + k % 10, 13, 20, 6193, 29, vs]]
        for g in range(groups):
            texts.append([ve] + ([27, 16 + g % 10, 13, 20, 6193, 29, vs] if g + 1 < groups else []))
        exp = Expansion(texts, [64] * groups, video_tok, open_start=True)
        items["video"].append(ItemMeta("video", k, exp.num_tokens, None, f"{k + 1:x}", [exp.num_tokens, 8], "float32", expansion=exp))
    for k in range(n_images):
        n = max(1, per_item // 10 - 3)
        texts = [[11, 15 + k % 10, 12, im_s], [im_e, sl_s]]
        for r in range(3):
            for c in range(3):
                texts.append([sl_e] + ([nl] if c == 2 and r < 2 else []) + ([sl_s] if (r, c) != (2, 2) else []))
        exp = Expansion(texts, [n] * 10, image_tok)
        items["image"].append(ItemMeta("image", k, exp.num_tokens, None, f"{k + 99:x}", [exp.num_tokens, 8], "float32", expansion=exp))
    return items, image_tok, video_tok


def align_fast_vs_legacy_structured(total_tokens: int = 32768, n_videos: int = 4, n_images: int = 8,
                                    repeats: int = 20) -> dict[str, Any]:
    """As :func:`align_fast_vs_legacy`, with structured expansions (timestamped video groups, sliced images)."""
    items, image_tok, video_tok = _structured_items(total_tokens, n_videos, n_images)
    rng = np.random.default_rng(1)
    text = rng.integers(0, 150000, size=1024).tolist()
    compact: list[int] = []
    order = [("video", k) for k in range(n_videos)] + [("image", k) for k in range(n_images)]
    step = len(text) // len(order)
    for j, (modality, _) in enumerate(order):
        compact.extend(text[j * step : (j + 1) * step] + [151652])  # a vision start before each, as chat templates put it
        compact.append(video_tok if modality == "video" else image_tok)
    placeholders = {"image": image_tok, "video": video_tok}
    fast = align(compact, placeholders, items)
    expanded = fast.input_ids
    legacy = align(expanded, placeholders, items, skip_tokenizer_init=True)
    assert legacy.input_ids == expanded and [i.offsets for i in legacy.items] == [i.offsets for i in fast.items]
    fast_s = _best_of(lambda: align(compact, placeholders, items), repeats)
    legacy_s = _best_of(lambda: align(expanded, placeholders, items, skip_tokenizer_init=True), repeats)
    return {"total_tokens": len(expanded), "n_videos": n_videos, "n_images": n_images,
            "fast_ms": fast_s * 1e3, "legacy_ms": legacy_s * 1e3, "speedup": legacy_s / fast_s}


def align_fast_vs_legacy(total_tokens: int = 32768, n_images: int = 16, repeats: int = 20) -> dict[str, Any]:
    """Fast path on a text prompt against the legacy scan on the same request's expanded ids.

    The prompt expands to ``total_tokens`` with ``n_images`` images of equal size.
    """
    image_token, text_len = 151655, 1024
    per_image = (total_tokens - text_len) // n_images
    rng = np.random.default_rng(0)
    text = rng.integers(0, 150000, size=text_len).tolist()
    compact: list[int] = []
    step = text_len // n_images
    for k in range(n_images):
        compact.extend(text[k * step : (k + 1) * step])
        compact.append(image_token)
    items = {"image": [ItemMeta("image", k, per_image, None, f"{k + 1:x}", [per_image, 8], "float32") for k in range(n_images)]}
    placeholders = {"image": image_token}
    fast = align(compact, placeholders, items)
    expanded = fast.input_ids
    legacy = align(expanded, placeholders, items, skip_tokenizer_init=True)
    assert legacy.input_ids == expanded
    fast_s = _best_of(lambda: align(compact, placeholders, items), repeats)
    legacy_s = _best_of(lambda: align(expanded, placeholders, items, skip_tokenizer_init=True), repeats)
    return {
        "total_tokens": len(expanded),
        "n_images": n_images,
        "fast_ms": fast_s * 1e3,
        "legacy_ms": legacy_s * 1e3,
        "speedup": legacy_s / fast_s,
    }


# --------------------------------------------------------------------------- shared helpers

#: Pixel budgets used for every benchmark: the common serving setting for Qwen2-VL-class models
#: (max_pixels = 1280*28*28 per image, 768*28*28 per video frame). A 1080p page becomes
#: 4888 patches x 1176 float32 = 23 MB of ``pixel_values``; a 16-frame 360p clip, 45 MB.
SERVING_IMAGE_MAX_PIXELS = 1280 * 28 * 28
SERVING_VIDEO_MAX_PIXELS = 768 * 28 * 28
MIN_PIXELS = 4 * 28 * 28


def make_bench_model(directory: str | Path) -> Path:
    """The tiny offline Qwen2-VL model with serving-size pixel budgets (so features have real sizes)."""
    from .models import make_model

    path = Path(make_model(directory, "qwen2_vl"))
    cfg_path = path / "processor_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["image_processor"]["size"] = {"shortest_edge": MIN_PIXELS, "longest_edge": SERVING_IMAGE_MAX_PIXELS}
    cfg["video_processor"]["size"] = {"shortest_edge": MIN_PIXELS, "longest_edge": SERVING_VIDEO_MAX_PIXELS}
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return path


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """torch on one intra-op thread for the duration (per-core numbers)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _mean_rate(fn: Callable[[], Any], n: int, warmup: int = 1) -> tuple[float, float]:
    """(calls per second, mean ms per call) over ``n`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    dt = (time.perf_counter() - t0) / n
    return 1.0 / dt, dt * 1e3


def _interleaved_rates(fns: dict[str, Callable[[], Any]], n: int, warmup: int = 1) -> dict[str, tuple[float, float]]:
    """Per name: (calls per second, mean ms per call) over ``n`` calls each, taken round-robin.

    Round-robin rather than one after the other, so a burst of load from something else on
    a shared machine lands on every variant alike and the ratios between them hold.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    total = dict.fromkeys(fns, 0.0)
    for _ in range(n):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            total[name] += time.perf_counter() - t0
    return {name: (n / dt, dt / n * 1e3) for name, dt in total.items()}


# --------------------------------------------------------------------------- images

def _worker_call(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` as a media worker runs it: its outputs in a per-call arena, reset at each call."""
    from .buffers import CallArena, output_arena

    arena = CallArena()

    def call() -> Any:
        arena.reset()
        with output_arena(arena):
            return fn()

    return call


def image_per_core(model_dir: str | Path, n: int = 20, width: int = 1920, height: int = 1080) -> dict[str, Any]:
    """1080p JPEG bytes to Qwen2-VL ``pixel_values`` on one thread, several ways, JPEG decode included in all.

    - ``hf_pil``: Pillow decode + transformers' ``Qwen2VLImageProcessorPil`` (numpy/PIL path);
    - ``hf_fast``: Pillow decode + transformers' ``Qwen2VLImageProcessor`` (torchvision);
    - ``ray_mm``: ray-mm's media worker path: ``ImageMediaIO.load_bytes`` (header check, EXIF, RGB)
      + the model adapter's ``process`` (numpy features out), which runs the hand-tuned pixel
      path (:mod:`ray_mm.models.qwen2_vl_fast`), outputs in the worker's reused per-call arena
      (:mod:`ray_mm.buffers`); ``ray_mm_fresh_output``: the same with a fresh output array per
      call (the in-process pipeline's way);
    - ``ray_mm_hf``: the same media path + the adapter's ``process_hf`` (the HF fast processor),
      so ``ray_mm_vs_ray_mm_hf`` is the hand path against the processor with everything else equal;
    - ``*_uint8``: the opt-in uint8 transport (the CPU side stops before rescale/normalise).
    All use the model directory's processor settings and are timed round-robin. ``hand_vs_hf_max_abs_diff`` /
    ``hand_vs_hf_uint8_equal``: the hand path's output against the HF processor's on this image.
    """
    from PIL import Image
    from transformers import Qwen2VLImageProcessor, Qwen2VLImageProcessorPil

    from .config import RayMMConfig
    from .media import ImageMediaIO
    from .models import load_adapter
    from .synth import make_image

    jpeg = make_image(width, height, "JPEG", seed=1)
    cfg = json.loads((Path(model_dir) / "processor_config.json").read_text())["image_processor"]
    kwargs = {k: v for k, v in cfg.items() if k != "image_processor_type"}
    hf_pil, hf_fast = Qwen2VLImageProcessorPil(**kwargs), Qwen2VLImageProcessor(**kwargs)
    adapter = load_adapter(model_dir)
    image_io = ImageMediaIO(RayMMConfig().media)

    def draft(w: int, h: int, swapped: bool) -> tuple[int, int]:
        return adapter.image_target_size(w, h)

    def decode() -> Any:
        return Image.open(io.BytesIO(jpeg)).convert("RGB")

    out: dict[str, Any] = {"width": width, "height": height, "jpeg_bytes": len(jpeg), "n": n}
    with single_thread():
        runs = {
            "hf_pil": lambda: hf_pil(images=[decode()], return_tensors="np"),
            "hf_fast": lambda: hf_fast(images=[decode()], return_tensors="pt"),
            "ray_mm": _worker_call(lambda: adapter.process("image", image_io.load_bytes(jpeg))),
            "ray_mm_fresh_output": lambda: adapter.process("image", image_io.load_bytes(jpeg)),
            "ray_mm_hf": lambda: adapter.process_hf("image", image_io.load_bytes(jpeg)),
            # Opt-in uint8 transport: the CPU side stops before rescale/normalise (done on the GPU worker).
            "ray_mm_uint8": _worker_call(lambda: adapter.process("image", image_io.load_bytes(jpeg), {"transport": "uint8"})),
            "ray_mm_uint8_hf": lambda: adapter.process_hf("image", image_io.load_bytes(jpeg), {"transport": "uint8"}),
            # Opt-in draft JPEG decode on top of uint8 transport (RayMMConfig.jpeg_draft).
            "ray_mm_uint8_draft": _worker_call(lambda: adapter.process(
                "image", image_io.load_bytes(jpeg, draft_size=draft), {"transport": "uint8"})),
        }
        for name, (rate, ms) in _interleaved_rates(runs, n).items():
            out[name], out[f"{name}_ms"] = rate, ms
        out["decode_ms"] = _mean_rate(decode, n)[1]
    feats = adapter.process("image", decode())[0]
    hf_feats = adapter.process_hf("image", decode())[0].features["pixel_values"]
    out["hand_vs_hf_max_abs_diff"] = float(np.abs(feats.features["pixel_values"] - hf_feats).max())
    out["hand_vs_hf_uint8_equal"] = bool(np.array_equal(
        adapter.process("image", decode(), {"transport": "uint8"})[0].features["pixel_values"],
        adapter.process_hf("image", decode(), {"transport": "uint8"})[0].features["pixel_values"]))
    out["feature_shape"] = list(feats.features["pixel_values"].shape)
    out["feature_mb"] = feats.features["pixel_values"].nbytes / 1e6
    drafted = adapter.process("image", image_io.load_bytes(jpeg, draft_size=draft))[0].features["pixel_values"]
    full = feats.features["pixel_values"]
    out["draft_same_shape"] = drafted.shape == full.shape
    out["draft_mean_abs_diff"] = float(np.abs(drafted - full).mean()) if drafted.shape == full.shape else None
    out["draft_max_abs_diff"] = float(np.abs(drafted - full).max()) if drafted.shape == full.shape else None
    out["ray_mm_vs_hf_pil"] = out["ray_mm"] / out["hf_pil"]
    out["ray_mm_uint8_vs_hf_pil"] = out["ray_mm_uint8"] / out["hf_pil"]
    out["ray_mm_vs_hf_fast"] = out["ray_mm"] / out["hf_fast"]
    out["ray_mm_vs_ray_mm_hf"] = out["ray_mm"] / out["ray_mm_hf"]
    out["arena_vs_fresh_output"] = out["ray_mm"] / out["ray_mm_fresh_output"]
    out["ray_mm_uint8_vs_ray_mm_uint8_hf"] = out["ray_mm_uint8"] / out["ray_mm_uint8_hf"]
    return out


# --------------------------------------------------------------------------- video

def naive_seek_per_frame(data: bytes, indices: list[int]) -> np.ndarray:
    """The slow way (benchmark only): for each wanted frame, seek to its keyframe and decode up to it."""
    import av

    rows = []
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_type = "NONE"
        stream.codec_context.thread_count = 1
        pts = sorted(p.pts for p in container.demux(stream) if p.size)
        for idx in indices:
            target = pts[idx]
            container.seek(target, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts is not None and frame.pts >= target:
                    rows.append(frame.to_ndarray(format="rgb24"))
                    break
    return np.stack(rows)


def video_sampling(
    n: int = 6, nframes: int = 16, width: int = 640, height: int = 360, fps: int = 30, seconds: float = 10.0,
    gop: int = 60, model_dir: str | Path | None = None,
) -> dict[str, Any]:
    """16 frames out of a 10 s 360p H.264 clip, one thread: ray-mm's forward pass vs a seek per frame.

    ``clips_per_s`` is decode + sampling only (``VideoMediaIO.load_bytes``). With ``model_dir``
    decode + pixels is timed end to end, per clip, four ways taken round-robin (``*_clips_per_s``
    and ``*_ms``):

    - ``decode_only``: the same as ``clips_per_s``, measured alongside the others;
    - ``decode_hf_processor``: + the HF video processor (the adapter's ``process_hf``);
    - ``decode_hand_f32``: + the adapter's default path, the hand-tuned one (float32);
    - ``decode_hand_uint8``: + the hand path with the opt-in uint8 transport.

    ``video_clips_per_core_per_s`` is ray-mm's path (``decode_hand_f32``);
    ``with_processor_clips_per_s`` / ``processor_ms`` keep their meaning: decode + the
    adapter's default ``process`` (now the hand path), and that processing alone.
    """
    from .config import RayMMConfig
    from .media import VideoMediaIO
    from .synth import make_video

    clip = make_video(width, height, fps=fps, seconds=seconds, gop=gop, seed=2)
    cfg = RayMMConfig()
    vio = VideoMediaIO(cfg.media, cfg.video)
    options = {"nframes": nframes}
    decoded = vio.load_bytes(clip, options=options)
    naive = naive_seek_per_frame(clip, decoded.indices)
    out: dict[str, Any] = {
        "clip": f"{width}x{height} {fps} fps {seconds:g} s gop {gop}", "clip_bytes": len(clip), "nframes": nframes,
        "frames_equal": bool(np.array_equal(naive, decoded.frames)),
        "seeks": decoded.seeks, "decoded_frames": decoded.decoded_frames, "total_frames": decoded.total_frames,
    }
    with single_thread():
        out["clips_per_s"], out["forward_pass_ms"] = _mean_rate(lambda: vio.load_bytes(clip, options=options), n)
        naive_n = max(2, n // 2)
        out["naive_clips_per_s"], out["seek_per_frame_ms"] = _mean_rate(lambda: naive_seek_per_frame(clip, decoded.indices), naive_n)
        out["forward_vs_seek_per_frame"] = out["seek_per_frame_ms"] / out["forward_pass_ms"]
        if model_dir is not None:
            from .models import load_adapter

            adapter = load_adapter(model_dir)
            frames = decoded.frames
            n_proc = max(2, n // 2)
            _, out["processor_ms"] = _mean_rate(lambda: adapter.process("video", frames), n_proc)
            _, out["hf_processor_ms"] = _mean_rate(lambda: adapter.process_hf("video", frames), n_proc)
            _, out["hand_uint8_ms"] = _mean_rate(lambda: adapter.process("video", frames, {"transport": "uint8"}), n_proc)
            u8 = {"transport": "uint8"}
            end_to_end = {
                "decode_only": lambda: vio.load_bytes(clip, options=options),
                "decode_hf_processor": lambda: adapter.process_hf("video", vio.load_bytes(clip, options=options).frames),
                "decode_hand_f32": _worker_call(lambda: adapter.process("video", vio.load_bytes(clip, options=options).frames)),
                "decode_hand_f32_fresh_output": lambda: adapter.process("video", vio.load_bytes(clip, options=options).frames),
                "decode_hand_uint8": _worker_call(
                    lambda: adapter.process("video", vio.load_bytes(clip, options=options).frames, u8)),
            }
            for name, (rate, ms) in _interleaved_rates(end_to_end, n).items():
                out[f"{name}_clips_per_s"], out[f"{name}_ms"] = rate, ms
            out["with_processor_clips_per_s"] = out["decode_hand_f32_clips_per_s"]
            out["video_clips_per_core_per_s"] = out["decode_hand_f32_clips_per_s"]
            out["hand_f32_vs_hf_processor"] = out["decode_hand_f32_clips_per_s"] / out["decode_hf_processor_clips_per_s"]
            out["arena_vs_fresh_output"] = out["decode_hand_f32_clips_per_s"] / out["decode_hand_f32_fresh_output_clips_per_s"]
            out["hand_uint8_vs_hf_processor"] = out["decode_hand_uint8_clips_per_s"] / out["decode_hf_processor_clips_per_s"]
            hand = adapter.process("video", frames)[0].features["pixel_values_videos"]
            hf = adapter.process_hf("video", frames)[0].features["pixel_values_videos"]
            out["hand_vs_hf_max_abs_diff"] = float(np.abs(hand - hf).max())
            out["hand_vs_hf_uint8_equal"] = bool(np.array_equal(adapter.process("video", frames, u8)[0].features["pixel_values_videos"],
                                                                adapter.process_hf("video", frames, u8)[0].features["pixel_values_videos"]))
    return out


def family_image_per_core(families: list[str] | None = None, n: int = 10, width: int = 1920, height: int = 1080,
                          work_dir: str | Path | None = None) -> dict[str, Any]:
    """Per family with images: 1080p JPEG bytes to that family's image features on one thread, through
    ray-mm's media path and the family's adapter (its hand path where it has one, else the in-tree HF
    processor's fast variant when the tiny model uses it), and through the HF processor's whole
    ``__call__`` on the same image for reference. The tiny models' processor settings (small pixel
    budgets, few tiles) are used: the figures compare paths, not families at serving size."""
    import tempfile

    from PIL import Image

    from .config import RayMMConfig
    from .media import ImageMediaIO
    from .models import FAMILY_SPECS, load_adapter, make_model
    from .synth import make_image

    jpeg = make_image(width, height, "JPEG", seed=1)
    image_io = ImageMediaIO(RayMMConfig().media)
    names = families or [f for f, spec in FAMILY_SPECS.items() if "image" in spec.placeholders]
    out: dict[str, Any] = {"width": width, "height": height, "n": n, "families": {}}
    with tempfile.TemporaryDirectory() as tmp, single_thread():
        for family in names:
            model = make_model(Path(work_dir or tmp) / family, family)
            adapter = load_adapter(model)
            prompt = adapter.placeholder_texts["image"]

            def ours(adapter: Any = adapter) -> Any:
                return adapter.process("image", image_io.load_bytes(jpeg, label="bench"))

            def hf(adapter: Any = adapter, prompt: str = prompt) -> Any:
                image = Image.open(io.BytesIO(jpeg)).convert("RGB")
                return adapter.processor(text=[prompt], images=[image], return_tensors="np")

            ours(), hf()  # warm-up
            times = {"ray_mm": _best_of(ours, n), "hf_processor_call": _best_of(hf, n)}
            out["families"][family] = {
                "adapter": adapter.name,
                "image_processor": type(adapter.processor.image_processor).__name__,
                **{f"{k}_per_s": 1.0 / v for k, v in times.items()},
            }
    return out
