"""Fast against legacy alignment on a 32k-token prompt with 16 images (not a timed test)."""

from __future__ import annotations

import argparse
import json

from ray_mm.bench.micro_align import align_fast_vs_legacy

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    result = align_fast_vs_legacy(args.tokens, args.images, args.repeats)
    print(json.dumps(result, indent=2))
    print(f"fast {result['fast_ms']:.3f} ms, legacy {result['legacy_ms']:.3f} ms: fast is {result['speedup']:.1f}x")
