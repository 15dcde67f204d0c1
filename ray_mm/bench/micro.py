"""The microbenchmark phase of ``ray-mm bench``: per-core media paths, alignment, the object store.

The media and alignment micros run on one thread before any Ray process is up; the object-store
round trip runs on the bench's own cluster once it is up (no cluster of its own).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np


def run_micro(model_dir: Path, quick: bool) -> dict[str, Any]:
    """Everything but the object store (that one runs on the bench's cluster: :func:`object_store_roundtrip`)."""
    from .micro_align import align_fast_vs_legacy, align_fast_vs_legacy_structured
    from .micro_media import family_image_per_core, image_per_core
    from .micro_video import video_sampling

    img = image_per_core(model_dir, n=4 if quick else 20)
    vid = video_sampling(n=2 if quick else 8, model_dir=model_dir)
    align = align_fast_vs_legacy(repeats=5 if quick else 20)
    structured = align_fast_vs_legacy_structured(repeats=5 if quick else 20)
    # Every family with images (tiny models, so paths not families are compared); two in --quick.
    families = family_image_per_core(["qwen3_vl", "gemma3"] if quick else None, n=2 if quick else 10)
    return {
        "image_1080p_per_core_per_s": {k: img[k] for k in ("hf_pil", "hf_fast", "ray_mm", "ray_mm_uint8", "ray_mm_uint8_draft")},
        "image_1080p_detail": img,
        "video_clips_per_core_per_s": vid.get("video_clips_per_core_per_s", vid["clips_per_s"]),
        "video_detail": vid,
        "align_fast_vs_legacy_32k": align["speedup"],
        "align_detail": align,
        "align_fast_vs_legacy_32k_structured": structured["speedup"],
        "align_structured_detail": structured,
        "family_image_1080p_per_core_per_s": families,
    }


def object_store_roundtrip(mb: float = 23.0, repeats: int = 5) -> dict[str, Any]:
    """``ray.put`` + ``ray.get`` of one ~23 MB float32 feature, numpy vs torch, from the driver.

    On the Ray the driver is connected to (the bench's own cluster: no second cluster to start);
    without one, on a fresh local 1-CPU instance that is shut down afterwards."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    import torch

    owned = not ray.is_initialized()
    if owned:  # address="local": a fresh instance, never the latest cluster on the machine (another user's)
        ray.init(address="local", num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="ERROR",
                 log_to_driver=False, object_store_memory=512 << 20)
    try:
        rows = int(mb * 1e6 / (1176 * 4))
        arr = np.random.default_rng(0).random((rows, 1176), dtype=np.float32)
        out: dict[str, Any] = {"mb": arr.nbytes / 1e6}
        for name, obj in (("numpy", arr), ("torch", torch.from_numpy(arr.copy()))):
            puts, gets = [], []
            for _ in range(repeats + 1):
                t0 = time.perf_counter()
                ref = ray.put(obj)
                t1 = time.perf_counter()
                got = ray.get(ref)
                t2 = time.perf_counter()
                puts.append(t1 - t0)
                gets.append(t2 - t1)
                del got, ref
            out[f"{name}_put_ms"] = float(np.median(puts[1:]) * 1e3)
            out[f"{name}_get_ms"] = float(np.median(gets[1:]) * 1e3)
            out[f"{name}_roundtrip_ms"] = out[f"{name}_put_ms"] + out[f"{name}_get_ms"]
        got = ray.get(ray.put(arr))
        out["numpy_get_zero_copy"] = bool(not got.flags.writeable)
        out["torch_vs_numpy_get"] = out["torch_get_ms"] / out["numpy_get_ms"]
        out["torch_vs_numpy_roundtrip"] = out["torch_roundtrip_ms"] / out["numpy_roundtrip_ms"]
        return out
    finally:
        if owned:
            ray.shutdown()
