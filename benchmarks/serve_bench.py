"""The HTTP front door's overhead: the same paced requests through ``ray-mm serve`` (HTTP POST to the
Serve app) and through ``Pool.submit`` + ``poll`` on the same pool, in one run (not a timed test).

Local simulated cluster (2 media workers, 1 GPU worker, ``consumer=noop`` by default so the GPU side
adds the same small step to both paths), one front-end replica, 640x480 JPEGs served on 127.0.0.1
with the media cache off, so every request fetches and decodes. Open loop: request k is sent at
``k / rate`` seconds whatever the answers. Rounds alternate HTTP, pool, HTTP, pool, ... so drift on a
shared machine hits both paths alike. Latency: from the send to the record (HTTP: the response;
pool: the ``poll`` that returns it). Prints p50 / p90 / p99 per path and their ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

import httpx  # noqa: E402

from actors.local_cluster import LOOPBACK, free_port, start_local_cluster  # noqa: E402
from actors.pool import Pool  # noqa: E402
from actors.serve import build_app, coordinator_name, start, stop  # noqa: E402
from ray_mm.cli.demo import serve_directory  # noqa: E402
from ray_mm.config import MediaPolicy, RayMMConfig  # noqa: E402
from ray_mm.media.synth import make_image  # noqa: E402
from ray_mm.models import make_model  # noqa: E402
from ray_mm.pool.config import LocalClusterSpec, NodeGroup, PoolConfig  # noqa: E402
from ray_mm.serve.http_api import ServeSettings  # noqa: E402

IMG = "<|vision_start|><|image_pad|><|vision_end|>"


def lines_for(prefix: str, base: str, n: int, images: int) -> list[dict[str, Any]]:
    return [{"request_id": f"{prefix}-{k}", "prompt": f"{k}: describe {IMG}", "images": [f"{base}/{k % images}.jpg"]}
            for k in range(n)]


def paced_http(url: str, lines: list[dict[str, Any]], rate: float) -> list[tuple[float, bool]]:
    async def run() -> list[tuple[float, bool]]:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
            async def one(line: dict[str, Any]) -> tuple[float, bool]:
                t = time.monotonic()
                r = await client.post("/v1/preprocess", json=line)
                return time.monotonic() - t, r.status_code == 200

            t0, tasks = time.monotonic(), []
            for k, line in enumerate(lines):
                await asyncio.sleep(max(0.0, t0 + k / rate - time.monotonic()))
                tasks.append(asyncio.create_task(one(line)))
            return list(await asyncio.gather(*tasks))

    return asyncio.run(run())


def paced_pool(pool: Pool, lines: list[dict[str, Any]], rate: float) -> list[tuple[float, bool]]:
    sent: dict[str, float] = {}
    out: list[tuple[float, bool]] = []
    t0, k = time.monotonic(), 0
    while k < len(lines) or pool.pending:
        now = time.monotonic()
        if k < len(lines) and now >= t0 + k / rate:
            sent[lines[k]["request_id"]] = time.monotonic()
            pool.submit(lines[k])
            k += 1
            continue
        # Wait for records, but never past the next send.
        wait = 0.5 if k >= len(lines) else max(0.0, t0 + k / rate - now)
        for rec in pool.poll(wait_s=wait):
            out.append((time.monotonic() - sent[rec["request_id"]], bool(rec.get("ok"))))
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=8.0, help="requests per second, open loop")
    parser.add_argument("--seconds", type=float, default=20.0, help="per path, over all its rounds")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per path (alternating)")
    parser.add_argument("--consumer", default="noop")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    per_round = int(args.rate * args.seconds / args.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        n_images = 16
        for k in range(n_images):
            (work / f"{k}.jpg").write_bytes(make_image(640, 480, seed=k))
        model = str(make_model(work / "model", "qwen2_vl"))
        core = RayMMConfig(media=MediaPolicy(allow_private_addresses=True), cache_bytes=0)
        cfg = PoolConfig(cpu_workers=2, gpu_workers=1, consumer=args.consumer, request_timeout_s=120)
        cluster = start_local_cluster(LocalClusterSpec(cpu_nodes=NodeGroup(count=2, num_cpus=1, resources={"mm_cpu": 1})))
        try:
            with serve_directory(work) as base, Pool(model, core, cfg) as pool:
                url = start(build_app(coordinator_name(pool), model, None, ServeSettings(), cfg.request_timeout_s),
                            LOOPBACK, free_port())
                try:
                    # Warm-up, both paths: processors, connections, Serve's router.
                    paced_http(url, lines_for("wh", base, 8, n_images), args.rate)
                    paced_pool(pool, lines_for("wp", base, 8, n_images), args.rate)
                    results: dict[str, list[tuple[float, bool]]] = {"http": [], "pool": []}
                    for r in range(args.rounds):
                        results["http"] += paced_http(url, lines_for(f"h{r}", base, per_round, n_images), args.rate)
                        results["pool"] += paced_pool(pool, lines_for(f"p{r}", base, per_round, n_images), args.rate)
                finally:
                    stop()
        finally:
            cluster.shutdown()
    table: dict[str, dict[str, float]] = {}
    for path, res in results.items():
        lat = [t * 1e3 for t, ok in res if ok]
        table[path] = {"n": len(res), "ok": sum(ok for _, ok in res), "p50_ms": pct(lat, 0.5), "p90_ms": pct(lat, 0.9),
                       "p99_ms": pct(lat, 0.99), "mean_ms": statistics.fmean(lat)}
    print(f"\n{args.rate:g} req/s open loop, {per_round} requests x {args.rounds} rounds per path, 640x480 JPEG over "
          f"loopback HTTP, cache off, consumer={args.consumer}")
    print(f"{'path':<22}{'n':>5}{'ok':>5}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'mean ms':>9}")
    names = {"http": "HTTP (ray-mm serve)", "pool": "Pool.submit + poll"}
    for path, row in table.items():
        print(f"{names[path]:<22}{row['n']:>5}{row['ok']:>5}{row['p50_ms']:>9.1f}{row['p90_ms']:>9.1f}"
              f"{row['p99_ms']:>9.1f}{row['mean_ms']:>9.1f}")
    h, p = table["http"], table["pool"]
    ratios = {q: h[f"{q}_ms"] / p[f"{q}_ms"] for q in ("p50", "p90", "p99")}
    print("HTTP / pool: " + ", ".join(f"{q} {v:.2f}x ({h[f'{q}_ms'] - p[f'{q}_ms']:+.1f} ms)" for q, v in ratios.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "table": table, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
