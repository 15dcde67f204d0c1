"""Per-core 1080p JPEG -> Qwen2-VL pixel_values: HF PIL, HF fast, ray-mm's hand path vs the HF processor (not a timed test)."""

from __future__ import annotations

import argparse
import json
import tempfile

from ray_mm.bench.micro_media import image_per_core, make_bench_model

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20, help="images per path")
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = image_per_core(make_bench_model(tmp), n=args.n, width=args.width, height=args.height)
    print(json.dumps(r, indent=2))
    print(f"per core: HF PIL {r['hf_pil']:.1f}/s ({r['hf_pil_ms']:.1f} ms), HF fast {r['hf_fast']:.1f}/s "
          f"({r['hf_fast_ms']:.1f} ms), ray-mm {r['ray_mm']:.1f}/s ({r['ray_mm_ms']:.1f} ms; "
          f"JPEG decode {r['decode_ms']:.1f} ms): {r['ray_mm_vs_hf_pil']:.2f}x HF PIL, {r['ray_mm_vs_hf_fast']:.2f}x HF fast")
    print(f"same media path, hand pixel path vs HF processor: float32 {r['ray_mm']:.1f}/s vs {r['ray_mm_hf']:.1f}/s "
          f"({r['ray_mm_vs_ray_mm_hf']:.2f}x), uint8 transport {r['ray_mm_uint8']:.1f}/s vs {r['ray_mm_uint8_hf']:.1f}/s "
          f"({r['ray_mm_uint8_vs_ray_mm_uint8_hf']:.2f}x); max abs diff {r['hand_vs_hf_max_abs_diff']:.3g}, "
          f"uint8 identical: {r['hand_vs_hf_uint8_equal']}")
    print(f"output in the worker's reused per-call arena vs a fresh output array: {r['ray_mm']:.1f}/s vs "
          f"{r['ray_mm_fresh_output']:.1f}/s ({r['arena_vs_fresh_output']:.2f}x)")
