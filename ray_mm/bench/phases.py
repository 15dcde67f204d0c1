"""The pipeline phases of ``ray-mm bench``: one workload through every pipeline, one Ray cluster for all.

Order: the local cluster starts (in the main thread) while a thread writes the media and the model
and imports what the Ray phases need (nothing is measured then); on that one cluster the
object-store micro, Ray Data, the pools (each transport's paced phase on its warm closed-loop pool), the paced
Ray Data forms and the coordinator-shard hook; then, the cluster down and its processes gone, the
in-process pipelines (``sglang_style``, ``sglang_style_hand``), closed loop and paced, with no Ray
up. Ray is imported only inside functions. Each phase's wall time goes to ``phase_s``.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from ..config import RayMMConfig
from .cpu import live_descendants
from .micro import object_store_roundtrip
from .micro_media import SERVING_IMAGE_MAX_PIXELS, SERVING_VIDEO_MAX_PIXELS, make_bench_model
from .paced import PacedOptions, PacedPlan, plan_paced
from .pool import coordinator_shards, paced_pool, run_pool
from .ray_data import paced_ray_data, paced_ray_data_stream, run_ray_data
from .sglang_style import paced_sglang_style, run_sglang_style
from .workload import IMAGE_PH, IMAGES_PER_REQUEST, Workload, audio_lines, coordinator_lines, vision_lines, write_bench_media


def tiny_workload(work: Path, base: str, model: str, quick: bool) -> Workload:
    """Coordinator-bound: 4 tiny JPEGs per request (3 files repeated, so the feature cache hits), cache on,
    float32 transport."""
    from ..media.synth import make_image

    for k in range(3):
        (work / "media" / f"tiny_{k}.jpeg").write_bytes(make_image(56, 56, "JPEG", seed=k))
    # quick: enough that the K=1 coordinator's CPU spans a few 10 ms clock ticks; full: 160 requests swung
    # between 0.88x and 1.30x K=2/K=1 in two full runs 30 minutes apart, so longer runs
    n = 64 if quick else 400
    lines = []
    for r in range(n):
        rid = f"tiny-{r:04d}"
        lines.append((rid, {"request_id": rid, "prompt": "Tiles: " + " ".join([IMAGE_PH] * IMAGES_PER_REQUEST),
                            "images": [f"{base}/tiny_{(r + j) % 3}.jpeg?r={rid}-{j}" for j in range(IMAGES_PER_REQUEST)]}))
    core = RayMMConfig()
    core = core.model_copy(update={"transport": "float32",  # named: the default transport may change
                                   "media": core.media.model_copy(update={"allow_private_addresses": True})})
    return Workload("tiny", model, core, lines)


def start_cluster() -> Any:
    """Head + two 1-CPU CPU nodes + one GPU-worker node on 127.0.0.1, 1 GiB object store per node."""
    from actors.local_cluster import start_local_cluster

    try:
        from ray_mm.pool.config import LocalClusterSpec
    except ImportError:  # older layout: keyword sizes
        return start_local_cluster(cpu_nodes=2, cpus_per_node=1, gpu_nodes=1, object_store_bytes=1 << 30)
    return start_local_cluster(LocalClusterSpec(), object_store_bytes=1 << 30)


class Background:
    """``fn()`` in a thread (unmeasured set-up while the cluster starts in the main thread: Ray's node
    start-up installs signal handlers, so it must run there); :meth:`result` joins it."""

    def __init__(self, fn: Any) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), name="bench-setup", daemon=True)
        self.thread.start()

    def _run(self, fn: Any) -> None:
        try:
            self.value = fn()
        except BaseException as exc:  # re-raised in the driver's thread by result()
            self.error = exc

    def result(self) -> Any:
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.value


def wait_for_no_children(timeout_s: float = 10.0) -> None:
    """After the cluster's shutdown: wait until no process of it is left (they would share the cores
    with the in-process pipelines that run next)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and live_descendants(os.getpid()):
        time.sleep(0.05)


def guarded(fn: Any, log: Any) -> dict[str, Any]:
    """Extra sub-workloads (audio, uint8 transport): a failure there is reported, not fatal."""
    try:
        return fn()
    except Exception as exc:
        log(f"extra sub-workload failed: {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}"}


class PhaseClock:
    """Wall time per bench phase: :meth:`phase` logs a phase's start and ends the one before it."""

    def __init__(self, log: Any) -> None:
        self.log = log
        self.times: dict[str, float] = {}
        self._open: tuple[str, float] | None = None

    def phase(self, name: str, msg: str) -> None:
        self.end()
        self._open = (name, time.perf_counter())
        self.log(msg)

    def end(self) -> None:
        if self._open is not None:
            name, t0 = self._open
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0
            self._open = None


def _import_ray_phases() -> None:
    """What the Ray phases import (Ray Data, the pool's actors: torch), while the cluster starts."""
    import ray.data  # noqa: F401

    import actors.pool  # noqa: F401


def run_pipelines(work: Path, quick: bool, n_image: int, n_video: int, n_audio: int, log: Any,
                  paced: PacedOptions | None = None, feature_cache: bool = False, object_store: bool = True,
                  shards: bool = True, clock: PhaseClock | None = None) -> dict[str, Any]:
    """Every pipeline on one workload; one Ray cluster for all Ray phases (the in-process ones run with none up).

    Every pool phase names its transport (``float32`` but for ``pool_uint8``), whatever the default is."""
    from ..cli.demo import serve_directory
    from ..models import make_model
    from ..pool.config import DEFAULT_CPU_RESOURCE

    clock = clock or PhaseClock(log)
    clock.phase("setup_and_cluster_start", "local cluster starting; media, model and imports in a thread meanwhile ...")
    media = work / "media"

    def setup() -> tuple[dict[str, list[str]], str]:
        names = write_bench_media(media, audio=n_audio > 0)
        model = str(make_bench_model(work / "qwen2_vl_bench"))
        _import_ray_phases()
        return names, model

    prepared = Background(setup)
    cluster = start_cluster()
    try:
        names, model = prepared.result()
        with serve_directory(media) as base:
            core = RayMMConfig()
            core = core.model_copy(update={"transport": "float32",
                                           "media": core.media.model_copy(update={"allow_private_addresses": True})})
            if not feature_cache:  # 3 files per kind repeat under distinct URLs: a content-hash cache would hit
                core = core.model_copy(update={"cache_bytes": 0})
            vision = Workload("vision", model, core, vision_lines(base, names, n_image, n_video))
            vision_u8 = Workload("vision_uint8", model, core.model_copy(update={"transport": "uint8"}), vision.lines)
            audio = None
            if n_audio:
                audio = Workload("audio", str(make_model(work / "qwen2_audio", "qwen2_audio")), core, audio_lines(base, names, n_audio))
            coord = coordinator_lines(base, names, 8 if quick else 24)
            tiny = tiny_workload(work, base, model, quick) if shards else None
            out: dict[str, Any] = {"pipelines": {}, "audio": {}}
            plan: PacedPlan | None = None
            try:
                if object_store:
                    clock.phase("object_store", "object store round trip (on this cluster) ...")
                    out["object_store_23mb"] = guarded(lambda: object_store_roundtrip(repeats=3 if quick else 8), log)
                clock.phase("ray_data", "ray_data (map_batches, class UDF over an actor pool) ...")
                out["pipelines"]["ray_data"] = run_ray_data(vision, DEFAULT_CPU_RESOURCE).summary()
                if audio:
                    out["audio"]["ray_data"] = guarded(lambda: run_ray_data(audio, DEFAULT_CPU_RESOURCE).summary(), log)
                clock.phase("pool", "pool (2 workers, float32 transport) ...")

                def paced_on_pool(pool: Any, pool_rps: float) -> None:
                    nonlocal plan
                    if paced is None or paced.n <= 0:
                        return
                    out["paced"], plan = plan_paced(vision, pool_rps, out["pipelines"]["ray_data"]["requests_per_s"], paced)
                    clock.phase("paced_pool", f"paced: {len(plan.lines)} requests at {plan.rate_per_s:.2f} req/s "
                                              f"({paced.kind}); pool (2 workers) ...")
                    out["paced"]["pipelines"]["pool"] = guarded(lambda: paced_pool(pool, plan, 2), log)

                out["pipelines"]["pool"] = run_pool(vision, 2, "pool", coord, idle_s=1.0 if quick else 3.0,
                                                    after=paced_on_pool).summary()
                if audio:
                    out["audio"]["pool"] = guarded(lambda: run_pool(audio, 2, "pool").summary(), log)
                clock.phase("pool_uint8", "pool (2 workers, uint8 transport) ...")

                def paced_on_uint8_pool(pool: Any, _: float) -> None:
                    if plan is not None:  # the same schedule, on the default transport's warm pool
                        clock.phase("paced_pool_uint8", "paced: pool (2 workers, uint8 transport) ...")
                        out["paced"]["pipelines"]["pool_uint8"] = guarded(lambda: paced_pool(pool, plan, 2), log)

                out["pipelines"]["pool_uint8"] = guarded(
                    lambda: run_pool(vision_u8, 2, "pool_uint8", after=paced_on_uint8_pool).summary(), log)
                clock.phase("pool_1worker", "pool (1 worker, float32 transport) ...")
                out["pipelines"]["pool_1worker"] = run_pool(vision, 1, "pool_1worker").summary()
                if plan is not None:
                    pp, window = out["paced"]["pipelines"], paced.window_s
                    clock.phase("paced_ray_data_windows", f"paced: ray_data, {window:g} s windows ...")
                    pp["ray_data"] = guarded(lambda: paced_ray_data(vision, DEFAULT_CPU_RESOURCE, plan, window), log)
                    clock.phase("paced_ray_data_per_request", "paced: ray_data, one dataset per request ...")
                    pp["ray_data_per_request"] = guarded(lambda: paced_ray_data(vision, DEFAULT_CPU_RESOURCE, plan, 0.0, warm=False), log)
                    if not quick:  # it starts a second actor pool (about 10 s here); --quick keeps to the per-request form
                        clock.phase("paced_ray_data_stream", "paced: ray_data, one warm streaming dataset fed at arrivals ...")
                        pp["ray_data_stream"] = guarded(lambda: paced_ray_data_stream(vision, DEFAULT_CPU_RESOURCE, plan), log)
                if tiny is not None:
                    clock.phase("coordinator_shards", "coordinator shards (K=1, K=2; tiny images, cache on) ...")
                    out["coordinator_shards"] = guarded(
                        lambda: coordinator_shards(tiny, warm=4 if quick else 8, idle_s=0.5 if quick else 1.0), log)
            finally:
                clock.phase("cluster_shutdown", "cluster down ...")
                cluster.shutdown()
                cluster = None
                wait_for_no_children()
            clock.phase("sglang_style", f"sglang_style: {len(vision.lines)} requests (no Ray up) ...")
            out["pipelines"]["sglang_style"] = run_sglang_style(vision).summary()
            clock.phase("sglang_style_hand", "sglang_style_hand (same shape, ray-mm's hand-tuned pixel path) ...")
            out["pipelines"]["sglang_style_hand"] = guarded(lambda: run_sglang_style(vision, hand_path=True).summary(), log)
            if audio:
                out["audio"]["sglang_style"] = guarded(lambda: run_sglang_style(audio).summary(), log)
            if plan is not None:
                clock.phase("paced_sglang_style", "paced: sglang_style (no Ray up, as in its closed-loop run) ...")
                out["paced"]["pipelines"]["sglang_style"] = guarded(lambda: paced_sglang_style(vision, plan), log)
                clock.phase("paced_sglang_style_hand", "paced: sglang_style_hand (the in-process pipeline on the same pixel path) ...")
                out["paced"]["pipelines"]["sglang_style_hand"] = guarded(lambda: paced_sglang_style(vision, plan, hand_path=True), log)
            clock.end()
    finally:
        if cluster is not None:  # an error before the Ray phases were done
            cluster.shutdown()
    order = ("sglang_style", "sglang_style_hand", "ray_data", "pool", "pool_uint8", "pool_1worker")
    for key in ("pipelines", "audio"):  # the report's row order, whatever order the phases ran in
        got = out[key]
        out[key] = {**{k: got[k] for k in order if k in got}, **got}
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
                      "coordinator_shards": out.pop("coordinator_shards", {"skipped": "not run (--skip-shards)"})}
    return out
