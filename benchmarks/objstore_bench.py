"""Object-store round trip (ray.put + ray.get) of one 23 MB feature: numpy (zero-copy) vs torch (pickled).

Local ``ray.init(num_cpus=1)`` on 127.0.0.1, no dashboard (not a timed test).
"""

from __future__ import annotations

import argparse
import json
import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before ray is imported: stay on loopback

from ray_mm.bench.micro import object_store_roundtrip  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=float, default=23.0)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    r = object_store_roundtrip(args.mb, args.repeats)
    print(json.dumps(r, indent=2))
    print(f"{r['mb']:.1f} MB put+get: numpy {r['numpy_put_ms']:.1f}+{r['numpy_get_ms']:.2f} ms, "
          f"torch {r['torch_put_ms']:.1f}+{r['torch_get_ms']:.2f} ms; get {r['torch_vs_numpy_get']:.0f}x slower as torch")
