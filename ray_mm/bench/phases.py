"""The pipeline phases of ``ray-mm bench``: one workload through every pipeline, one Ray cluster for all.

Order: the in-process pipelines (``sglang_style``, ``sglang_style_hand``) with no Ray up; then one
local cluster for the object-store micro, Ray Data, the pools (the paced pool on the warm closed-loop
pool), the paced Ray Data forms and the coordinator-shard hook; then, the cluster down again, the
paced in-process pipelines. Ray is imported only inside functions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config import RayMMConfig
from .micro import object_store_roundtrip
from .micro_media import SERVING_IMAGE_MAX_PIXELS, SERVING_VIDEO_MAX_PIXELS, make_bench_model
from .paced import PacedOptions, PacedPlan, plan_paced
from .pool import coordinator_shards, paced_pool, run_pool
from .ray_data import paced_ray_data, paced_ray_data_stream, run_ray_data
from .sglang_style import paced_sglang_style, run_sglang_style
from .workload import IMAGE_PH, IMAGES_PER_REQUEST, Workload, audio_lines, coordinator_lines, vision_lines, write_bench_media


def tiny_workload(work: Path, base: str, model: str, quick: bool) -> Workload:
    """Coordinator-bound: 4 tiny JPEGs per request (3 files repeated, so the feature cache hits), cache on."""
    from ..media.synth import make_image

    for k in range(3):
        (work / "media" / f"tiny_{k}.jpeg").write_bytes(make_image(56, 56, "JPEG", seed=k))
    n = 48 if quick else 160
    lines = []
    for r in range(n):
        rid = f"tiny-{r:04d}"
        lines.append((rid, {"request_id": rid, "prompt": "Tiles: " + " ".join([IMAGE_PH] * IMAGES_PER_REQUEST),
                            "images": [f"{base}/tiny_{(r + j) % 3}.jpeg?r={rid}-{j}" for j in range(IMAGES_PER_REQUEST)]}))
    core = RayMMConfig()
    core = core.model_copy(update={"media": core.media.model_copy(update={"allow_private_addresses": True})})
    return Workload("tiny", model, core, lines)


def start_cluster() -> Any:
    """Head + two 1-CPU CPU nodes + one GPU-worker node on 127.0.0.1, 1 GiB object store per node."""
    from actors.local_cluster import start_local_cluster

    try:
        from ray_mm.pool.config import LocalClusterSpec
    except ImportError:  # older layout: keyword sizes
        return start_local_cluster(cpu_nodes=2, cpus_per_node=1, gpu_nodes=1, object_store_bytes=1 << 30)
    return start_local_cluster(LocalClusterSpec(), object_store_bytes=1 << 30)


def guarded(fn: Any, log: Any) -> dict[str, Any]:
    """Extra sub-workloads (audio, uint8 transport): a failure there is reported, not fatal."""
    try:
        return fn()
    except Exception as exc:
        log(f"extra sub-workload failed: {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}"}


def run_pipelines(work: Path, quick: bool, n_image: int, n_video: int, n_audio: int, log: Any,
                  paced: PacedOptions | None = None, feature_cache: bool = False, object_store: bool = True,
                  shards: bool = True) -> dict[str, Any]:
    """Every pipeline on one workload; one Ray cluster for all Ray phases (the in-process ones run with none up)."""
    from ..cli.demo import serve_directory
    from ..models import make_model
    from ..pool.config import DEFAULT_CPU_RESOURCE

    media = work / "media"
    names = write_bench_media(media, audio=n_audio > 0)
    model = str(make_bench_model(work / "qwen2_vl_bench"))
    with serve_directory(media) as base:
        core = RayMMConfig()
        core = core.model_copy(update={"media": core.media.model_copy(update={"allow_private_addresses": True})})
        if not feature_cache:  # 3 files per kind repeat under distinct URLs: a content-hash cache would hit
            core = core.model_copy(update={"cache_bytes": 0})
        vision = Workload("vision", model, core, vision_lines(base, names, n_image, n_video))
        audio = None
        if n_audio:
            audio = Workload("audio", str(make_model(work / "qwen2_audio", "qwen2_audio")), core, audio_lines(base, names, n_audio))
        coord = coordinator_lines(base, names, 8 if quick else 24)
        out: dict[str, Any] = {"pipelines": {}, "audio": {}}
        log(f"sglang_style: {len(vision.lines)} requests ...")
        out["pipelines"]["sglang_style"] = run_sglang_style(vision).summary()
        log("sglang_style_hand (same shape, ray-mm's hand-tuned pixel path) ...")
        out["pipelines"]["sglang_style_hand"] = guarded(lambda: run_sglang_style(vision, hand_path=True).summary(), log)
        if audio:
            out["audio"]["sglang_style"] = guarded(lambda: run_sglang_style(audio).summary(), log)
        cluster = start_cluster()
        try:
            if object_store:
                log("object store round trip (on this cluster) ...")
                out["object_store_23mb"] = guarded(lambda: object_store_roundtrip(repeats=3 if quick else 8), log)
            log("ray_data (map_batches, class UDF over an actor pool) ...")
            out["pipelines"]["ray_data"] = run_ray_data(vision, DEFAULT_CPU_RESOURCE).summary()
            if audio:
                out["audio"]["ray_data"] = guarded(lambda: run_ray_data(audio, DEFAULT_CPU_RESOURCE).summary(), log)
            log("pool (2 workers) ...")
            plan: PacedPlan | None = None

            def paced_on_pool(pool: Any, pool_rps: float) -> None:
                nonlocal plan
                if paced is None or paced.n <= 0:
                    return
                out["paced"], plan = plan_paced(vision, pool_rps, out["pipelines"]["ray_data"]["requests_per_s"], paced)
                log(f"paced: {len(plan.lines)} requests at {plan.rate_per_s:.2f} req/s ({paced.kind}); pool (2 workers) ...")
                out["paced"]["pipelines"]["pool"] = guarded(lambda: paced_pool(pool, plan, 2), log)

            out["pipelines"]["pool"] = run_pool(vision, 2, "pool", coord, idle_s=1.0 if quick else 3.0,
                                                after=paced_on_pool).summary()
            if audio:
                out["audio"]["pool"] = guarded(lambda: run_pool(audio, 2, "pool").summary(), log)
            log("pool (2 workers, uint8 transport) ...")
            vision_u8 = Workload("vision_uint8", model, core.model_copy(update={"transport": "uint8"}), vision.lines)
            out["pipelines"]["pool_uint8"] = guarded(lambda: run_pool(vision_u8, 2, "pool_uint8").summary(), log)
            log("pool (1 worker) ...")
            out["pipelines"]["pool_1worker"] = run_pool(vision, 1, "pool_1worker").summary()
            if plan is not None:
                pp, window = out["paced"]["pipelines"], paced.window_s
                log(f"paced: ray_data, {window:g} s windows ...")
                pp["ray_data"] = guarded(lambda: paced_ray_data(vision, DEFAULT_CPU_RESOURCE, plan, window), log)
                log("paced: ray_data, one dataset per request ...")
                pp["ray_data_per_request"] = guarded(lambda: paced_ray_data(vision, DEFAULT_CPU_RESOURCE, plan, 0.0, warm=False), log)
                if not quick:  # it starts a second actor pool (about 10 s here); --quick keeps to the per-request form
                    log("paced: ray_data, one warm streaming dataset fed at arrivals ...")
                    pp["ray_data_stream"] = guarded(lambda: paced_ray_data_stream(vision, DEFAULT_CPU_RESOURCE, plan), log)
            if shards:
                log("coordinator shards (K=1, K=2; coordinator-bound workload) ...")
                out["coordinator_shards"] = guarded(lambda: coordinator_shards(tiny_workload(work, base, model, quick)), log)
        finally:
            cluster.shutdown()
        if plan is not None:
            log("paced: sglang_style (cluster down, as in its closed-loop run) ...")
            out["paced"]["pipelines"]["sglang_style"] = guarded(lambda: paced_sglang_style(vision, plan), log)
            log("paced: sglang_style_hand (the in-process pipeline on the same pixel path) ...")
            out["paced"]["pipelines"]["sglang_style_hand"] = guarded(lambda: paced_sglang_style(vision, plan, hand_path=True), log)
    out["workload"] = {
        "image_requests": n_image, "images_per_request": IMAGES_PER_REQUEST, "video_requests": n_video,
        "video": "640x360 H.264, 30 fps, 10 s, keyframe every 2 s, nframes=16",
        "images": "1920x1080 JPEG q90, 640x480 JPEG q90, 800x600 PNG (every 4th image request)",
        "audio_requests": n_audio, "audio": "30 s AAC 44.1 kHz mono, qwen2_audio tiny model" if n_audio else "not run",
        "image_max_pixels": SERVING_IMAGE_MAX_PIXELS, "video_max_pixels_per_frame": SERVING_VIDEO_MAX_PIXELS,
        "served": "HTTP on 127.0.0.1 (http.server, threads)",
        "latency": "all requests submitted at t0; latency = t0 to result at the driver "
                   "(paced phase: see paced.latency)",
        "feature_cache": "on (cache_bytes default)" if feature_cache else "off (cache_bytes=0)",
        "cpu": "psutil user+system of driver + all descendant processes (Ray daemons and workers)",
        "cores": os.cpu_count(),
    }
    out["scaling"] = {"workers": [1, 2], "requests_per_s": [out["pipelines"]["pool_1worker"]["requests_per_s"],
                                                              out["pipelines"]["pool"]["requests_per_s"]],
                      "items_per_s": [out["pipelines"]["pool_1worker"]["items_per_s"], out["pipelines"]["pool"]["items_per_s"]],
                      "coordinator_shards": out.pop("coordinator_shards", {"skipped": "not run (--quick or --skip-shards)"})}
    return out
