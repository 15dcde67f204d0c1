"""16 frames of a 10 s 360p H.264 clip, one thread: one forward pass (keyframe-aware seeks) vs a seek per frame.

The seek-per-frame decoder lives only in the benchmark (``ray_mm.bench.micro_video.naive_seek_per_frame``).
Run with a few GOP lengths: the gap grows with the keyframe interval (not a timed test).
"""

from __future__ import annotations

import argparse
import json
import tempfile

from ray_mm.bench.micro_media import make_bench_model
from ray_mm.bench.micro_video import video_sampling

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=8, help="clips per measurement")
    parser.add_argument("--nframes", type=int, default=16)
    parser.add_argument("--gop", type=int, nargs="+", default=[60, 250], help="keyframe intervals (frames) to try")
    parser.add_argument("--processor", action="store_true",
                        help="also time decode + pixels: the HF video processor and the hand path (float32, uint8)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = make_bench_model(tmp) if args.processor else None
        for gop in args.gop:
            r = video_sampling(n=args.n, nframes=args.nframes, gop=gop, model_dir=model)
            print(json.dumps(r, indent=2))
            print(f"gop {gop}: forward pass {r['forward_pass_ms']:.1f} ms ({r['clips_per_s']:.1f} clips/s/core, "
                  f"{r['seeks']} seeks), seek per frame {r['seek_per_frame_ms']:.1f} ms: "
                  f"{r['forward_vs_seek_per_frame']:.1f}x, same frames: {r['frames_equal']}")
            if model is not None:
                print(f"gop {gop}, clips/s/core: decode only {r['decode_only_clips_per_s']:.1f}, "
                      f"+ HF video processor {r['decode_hf_processor_clips_per_s']:.1f}, "
                      f"+ hand path float32 {r['decode_hand_f32_clips_per_s']:.1f} ({r['hand_f32_vs_hf_processor']:.2f}x; "
                      f"with a fresh output per clip {r['decode_hand_f32_fresh_output_clips_per_s']:.1f}), "
                      f"+ hand path uint8 {r['decode_hand_uint8_clips_per_s']:.1f} ({r['hand_uint8_vs_hf_processor']:.2f}x); "
                      f"pixels alone: HF {r['hf_processor_ms']:.1f} ms, hand {r['processor_ms']:.1f} ms, "
                      f"hand uint8 {r['hand_uint8_ms']:.1f} ms; max abs diff {r['hand_vs_hf_max_abs_diff']:.3g}, "
                      f"uint8 identical: {r['hand_vs_hf_uint8_equal']}")
