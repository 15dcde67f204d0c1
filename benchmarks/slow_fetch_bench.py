"""Healthy requests' latency with and without slow-body URLs in front of them (not a timed test).

One pool of two media workers on the local cluster. Phase A: ``--healthy`` image requests at
once. Phase B: ``--slow`` requests whose server answers 200 and then sends one byte every
0.25 s, submitted first, then the same number of healthy requests (other ids, no cache, so both
phases decode everything). Prints the healthy requests' median and p90 latency in each phase,
from submission to record, and how each slow request ended.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.hostile_server, run from anywhere

from actors.local_cluster import start_local_cluster  # noqa: E402
from actors.pool import Pool  # noqa: E402
from ray_mm.config import MediaPolicy, RayMMConfig  # noqa: E402
from ray_mm.media.synth import make_image  # noqa: E402
from ray_mm.models import make_model  # noqa: E402
from ray_mm.pool.config import LocalClusterSpec, NodeGroup, PoolConfig  # noqa: E402
from tests.hostile_server import hostile_server  # noqa: E402

IMG = "<|vision_start|><|image_pad|><|vision_end|>"


def timed(pool: Pool, lines: list[dict]) -> dict[str, tuple[dict, float]]:
    t0 = {}
    for line in lines:
        pool.submit(line)
        t0[line["request_id"]] = time.monotonic()
    return {r["request_id"]: (r, time.monotonic() - t0[r["request_id"]]) for r in pool.results(timeout_s=300)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--healthy", type=int, default=48)
    parser.add_argument("--slow", type=int, default=8)
    parser.add_argument("--fetch-timeout-s", type=float, default=6.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for k in range(2 * args.healthy + 4):
            (work / f"{k}.jpg").write_bytes(make_image(640, 480, seed=k))
        model = str(make_model(work / "model", "qwen2_vl"))
        core = RayMMConfig(media=MediaPolicy(allow_private_addresses=True, fetch_timeout_s=args.fetch_timeout_s), cache_bytes=0)
        cluster = start_local_cluster(LocalClusterSpec(cpu_nodes=NodeGroup(count=2, num_cpus=1, resources={"mm_cpu": 1})))
        try:
            with hostile_server(str(work)) as base, Pool(model, core, PoolConfig(consumer="noop", request_timeout_s=120)) as pool:
                def line(rid: str, url: str) -> dict:
                    return {"request_id": rid, "prompt": f"{IMG} describe", "images": [url]}

                timed(pool, [line(f"w{k}", f"{base}/{2 * args.healthy + k}.jpg") for k in range(4)])  # warm-up
                alone = timed(pool, [line(f"a{k}", f"{base}/{k}.jpg") for k in range(args.healthy)])
                slow = [line(f"s{k}", f"{base}/trickle/{k}.jpg") for k in range(args.slow)]
                mixed = timed(pool, slow + [line(f"b{k}", f"{base}/{args.healthy + k}.jpg") for k in range(args.healthy)])
        finally:
            cluster.shutdown()
    a = sorted(t for r, t in alone.values())
    b = sorted(t for rid, (r, t) in mixed.items() if rid.startswith("b"))
    out = {
        "healthy_requests": args.healthy, "slow_requests": args.slow, "fetch_timeout_s": args.fetch_timeout_s,
        "healthy_p50_s_without_slow": statistics.median(a), "healthy_p50_s_with_slow": statistics.median(b),
        "healthy_p90_s_without_slow": a[int(0.9 * (len(a) - 1))], "healthy_p90_s_with_slow": b[int(0.9 * (len(b) - 1))],
        "healthy_ok": sum(1 for rid, (r, _) in mixed.items() if rid.startswith("b") and r["ok"]),
        "slow_outcomes": sorted({f"{r['error']['type']} {r['error']['status']}" for rid, (r, _) in mixed.items() if rid.startswith("s")}),
        "slow_latency_s_max": max(t for rid, (_, t) in mixed.items() if rid.startswith("s")),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
