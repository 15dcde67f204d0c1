"""``ray-mm bench``: its command-line parser and entry point (the phases are in :mod:`ray_mm.bench.phases`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .micro import run_micro
from .micro_media import make_bench_model
from .paced import PacedOptions
from .phases import PhaseClock, run_pipelines
from .report import format_table, json_default
from .scale_model import scale_model
from .targets import compute_targets


def add_bench_parser(sub: Any) -> None:
    b = sub.add_parser("bench", help="side-by-side benchmark: SGLang-style, Ray Data, the pool; microbenchmarks")
    b.add_argument("--json", "--out", dest="json", help="write the results as JSON to this file")
    b.add_argument("--quick", action="store_true", help="small workload and few repeats; every target of the full run, from fewer samples")
    b.add_argument("--image-requests", type=int, help="requests with 4 images each (default 48, quick 8)")
    b.add_argument("--video-requests", type=int, help="requests with one 10 s 360p clip each (default 12, quick 2)")
    b.add_argument("--audio-requests", type=int, help="requests with one 30 s AAC clip each (default 12, quick 0)")
    b.add_argument("--skip-micro", action="store_true", help="pipelines only")
    b.add_argument("--paced-requests", type=int,
                   help="requests in the paced (open-loop) phase per pipeline (default 48, quick 8; 0 skips the phase)")
    b.add_argument("--paced-load", type=float, default=0.5,
                   help="paced arrival rate as a fraction of the slower of pool / ray_data closed-loop req/s (default 0.5)")
    b.add_argument("--paced-rate", type=float, help="fixed paced arrival rate in req/s (overrides --paced-load)")
    b.add_argument("--paced-arrivals", choices=("poisson", "uniform"), default="poisson",
                   help="exponential gaps rescaled to the exact mean rate (default), or evenly spaced")
    b.add_argument("--paced-seed", type=int, default=0, help="seed of the Poisson schedule (default 0)")
    b.add_argument("--paced-max-span-s", type=float, default=45.0,
                   help="fewer paced requests (at least 8) when the schedule would last longer than this (default 45)")
    b.add_argument("--ray-data-window-s", type=float, default=1.0,
                   help="Ray Data micro-batch window in the paced phase: the arrivals of each window become one "
                        "dataset when it closes (default 1.0)")
    b.add_argument("--feature-cache", action="store_true",
                   help="keep the per-worker content-hash feature cache on (the workload repeats 3 files per kind, "
                        "so Preprocessor-based pipelines then hit it; sglang_style never uses it). Default: off")
    b.add_argument("--skip-shards", action="store_true",
                   help="skip scaling.coordinator_shards (K=1 against K=2 coordinators; --quick runs it on 64 requests)")
    b.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from actors.local_cluster import loopback_env

    loopback_env()  # before Ray is imported anywhere in this process
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quick = bool(args.quick)
    n_image = args.image_requests if args.image_requests is not None else (8 if quick else 48)
    n_video = args.video_requests if args.video_requests is not None else (2 if quick else 12)
    n_audio = args.audio_requests if args.audio_requests is not None else (0 if quick else 12)
    n_paced = args.paced_requests if args.paced_requests is not None else (8 if quick else 48)
    paced = PacedOptions(n_paced, args.paced_load, args.paced_rate, args.paced_arrivals, args.paced_seed,
                         args.ray_data_window_s, args.paced_max_span_s)

    def log(msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    clock = PhaseClock(log)
    with tempfile.TemporaryDirectory(prefix="ray-mm-bench-") as tmp:
        work = Path(tmp)
        result: dict[str, Any] = {"command": "ray-mm bench" + (" --quick" if quick else ""), "quick": quick}
        # The Ray phases first (the cluster starts while the media and model are written), then, with
        # the cluster down, the in-process pipelines and the single-thread microbenchmarks.
        result.update(run_pipelines(work, quick, n_image, n_video, n_audio, log, paced, bool(args.feature_cache),
                                    object_store=not args.skip_micro, shards=not args.skip_shards, clock=clock))
        if args.skip_micro:
            result["micro"] = {}
        else:
            clock.phase("micro", "microbenchmarks (no Ray up) ...")
            result["micro"] = run_micro(make_bench_model(work / "qwen2_vl_micro"), quick)
            clock.end()
        if "object_store_23mb" in result:
            result["micro"]["object_store_23mb"] = result.pop("object_store_23mb")
    if not args.skip_micro:
        result["targets"] = compute_targets(result)
        if quick:  # every target of the full run, from the --quick run's smaller samples
            for t in result["targets"].values():
                t["quick"] = True
        result["scale_model"] = scale_model(result)
    result["bench_wall_s"] = time.perf_counter() - t0
    result["phase_s"] = {name: round(s, 2) for name, s in clock.times.items()}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=json_default))
    if "targets" in result:
        print(format_table(result))
    else:
        print(json.dumps(result["pipelines"], indent=2, default=json_default))
    return 0
