"""Image microbenchmarks for ``ray-mm bench`` and ``benchmarks/*.py``: 1080p images per core, per family; shared helpers.

One thread each (per-core figures); variants are timed round-robin so that load from others on a
shared machine lands on every variant alike. They return plain dicts; nothing here asserts a speed.
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

from .micro_align import best_of

# --------------------------------------------------------------------------- shared helpers

#: Pixel budgets used for every benchmark: the common serving setting for Qwen2-VL-class models
#: (max_pixels = 1280*28*28 per image, 768*28*28 per video frame). A 1080p page becomes
#: 4888 patches x 1176 float32 = 23 MB of ``pixel_values``; a 16-frame 360p clip, 45 MB.
SERVING_IMAGE_MAX_PIXELS = 1280 * 28 * 28
SERVING_VIDEO_MAX_PIXELS = 768 * 28 * 28
MIN_PIXELS = 4 * 28 * 28


def make_bench_model(directory: str | Path) -> Path:
    """The tiny offline Qwen2-VL model with serving-size pixel budgets (so features have real sizes)."""
    from ..models import make_model

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


def mean_rate(fn: Callable[[], Any], n: int, warmup: int = 1) -> tuple[float, float]:
    """(calls per second, mean ms per call) over ``n`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    dt = (time.perf_counter() - t0) / n
    return 1.0 / dt, dt * 1e3


def interleaved_rates(fns: dict[str, Callable[[], Any]], n: int, warmup: int = 1) -> dict[str, tuple[float, float]]:
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

def worker_call(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` as a media worker runs it: its outputs in a per-call arena, reset at each call."""
    from ..buffers import CallArena, output_arena

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

    from ..config import RayMMConfig
    from ..media import ImageMediaIO
    from ..media.synth import make_image
    from ..models import load_adapter

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
            "ray_mm": worker_call(lambda: adapter.process("image", image_io.load_bytes(jpeg))),
            "ray_mm_fresh_output": lambda: adapter.process("image", image_io.load_bytes(jpeg)),
            "ray_mm_hf": lambda: adapter.process_hf("image", image_io.load_bytes(jpeg)),
            # Opt-in uint8 transport: the CPU side stops before rescale/normalise (done on the GPU worker).
            "ray_mm_uint8": worker_call(lambda: adapter.process("image", image_io.load_bytes(jpeg), {"transport": "uint8"})),
            "ray_mm_uint8_hf": lambda: adapter.process_hf("image", image_io.load_bytes(jpeg), {"transport": "uint8"}),
            # Opt-in draft JPEG decode on top of uint8 transport (RayMMConfig.jpeg_draft).
            "ray_mm_uint8_draft": worker_call(lambda: adapter.process(
                "image", image_io.load_bytes(jpeg, draft_size=draft), {"transport": "uint8"})),
        }
        for name, (rate, ms) in interleaved_rates(runs, n).items():
            out[name], out[f"{name}_ms"] = rate, ms
        out["decode_ms"] = mean_rate(decode, n)[1]
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


def family_image_per_core(families: list[str] | None = None, n: int = 10, width: int = 1920, height: int = 1080,
                          work_dir: str | Path | None = None) -> dict[str, Any]:
    """Per family with images: 1080p JPEG bytes to that family's image features on one thread, through
    ray-mm's media path and the family's adapter (its hand path where it has one, else the in-tree HF
    processor's fast variant when the tiny model uses it), and through the HF processor's whole
    ``__call__`` on the same image for reference. The tiny models' processor settings (small pixel
    budgets, few tiles) are used: the figures compare paths, not families at serving size."""
    import tempfile

    from PIL import Image

    from ..config import RayMMConfig
    from ..media import ImageMediaIO
    from ..media.synth import make_image
    from ..models import FAMILY_SPECS, load_adapter, make_model

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
            times = {"ray_mm": best_of(ours, n), "hf_processor_call": best_of(hf, n)}
            out["families"][family] = {
                "adapter": adapter.name,
                "image_processor": type(adapter.processor.image_processor).__name__,
                **{f"{k}_per_s": 1.0 / v for k, v in times.items()},
            }
    return out
