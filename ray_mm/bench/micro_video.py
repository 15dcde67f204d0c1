"""Video microbenchmark: 16 frames of a 10 s 360p clip per core, decode + pixels, against seek-per-frame and the HF video processor.

One thread; variants timed round-robin (:func:`ray_mm.bench.micro_media.interleaved_rates`). Returns
plain dicts; nothing here asserts a speed.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from .micro_media import interleaved_rates, mean_rate, single_thread, worker_call


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
    from ..config import RayMMConfig
    from ..media import VideoMediaIO
    from ..media.synth import make_video

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
        out["clips_per_s"], out["forward_pass_ms"] = mean_rate(lambda: vio.load_bytes(clip, options=options), n)
        naive_n = max(2, n // 2)
        out["naive_clips_per_s"], out["seek_per_frame_ms"] = mean_rate(lambda: naive_seek_per_frame(clip, decoded.indices), naive_n)
        out["forward_vs_seek_per_frame"] = out["seek_per_frame_ms"] / out["forward_pass_ms"]
        if model_dir is not None:
            from ..models import load_adapter

            adapter = load_adapter(model_dir)
            frames = decoded.frames
            n_proc = max(2, n // 2)
            _, out["processor_ms"] = mean_rate(lambda: adapter.process("video", frames), n_proc)
            _, out["hf_processor_ms"] = mean_rate(lambda: adapter.process_hf("video", frames), n_proc)
            _, out["hand_uint8_ms"] = mean_rate(lambda: adapter.process("video", frames, {"transport": "uint8"}), n_proc)
            u8 = {"transport": "uint8"}
            end_to_end = {
                "decode_only": lambda: vio.load_bytes(clip, options=options),
                "decode_hf_processor": lambda: adapter.process_hf("video", vio.load_bytes(clip, options=options).frames),
                "decode_hand_f32": worker_call(lambda: adapter.process("video", vio.load_bytes(clip, options=options).frames)),
                "decode_hand_f32_fresh_output": lambda: adapter.process("video", vio.load_bytes(clip, options=options).frames),
                "decode_hand_uint8": worker_call(
                    lambda: adapter.process("video", vio.load_bytes(clip, options=options).frames, u8)),
            }
            for name, (rate, ms) in interleaved_rates(end_to_end, n).items():
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
