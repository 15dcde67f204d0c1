"""``ray-mm bench``: one workload through four pipelines on the same cores, plus microbenchmarks.

Pipelines (all built from the same core functions, see BENCHMARKS.md):

- ``sglang_style``: one process; a ``ThreadPoolExecutor`` fetches and decodes (like SGLang's
  ``load_mm_data``), the HF processor runs inline in the main thread, alignment after. It runs
  before the Ray cluster starts, so nothing else is on the cores. ``sglang_style_hand`` is the
  same shape given ray-mm's hand-tuned pixel path, so the gain of distribution alone shows too.
- The other pipelines use ray-mm's own per-item path (the hand-tuned Qwen2-VL pixel path).
- ``ray_data``: ``ray.data.from_items(lines).map(fn)``, ``fn`` = ``Preprocessor.run`` (whole
  request in one task), tasks placed on the two simulated CPU nodes (one CPU each).
- ``pool`` / ``pool_1worker``: ray-mm's pool with 2 / 1 media workers, ``consumer="noop"``
  (features are still pulled from the object store by the GPU worker; nothing runs on them).

Closed loop (the ``pipelines`` table), the same for every pipeline: all requests are submitted
at once at t0; a request's latency is the time from t0 until its result reaches the driver (so
it is mostly queueing). Throughput is requests (or items) over t0 to the last result.

Paced (open loop, ``paced`` in the JSON): the same requests arrive on one schedule
(``ray_mm.arrivals``: Poisson gaps, seed 0, rescaled to the exact mean rate) at a rate below
capacity, by default half the slower of the pool's and Ray Data's closed-loop req/s; a request's
latency is from its scheduled arrival until its result is at the driver. The pool gets each
request via ``Pool.submit`` at its arrival; Ray Data, which has no online request API, gets
micro-batches (the arrivals of each ``--ray-data-window-s`` window become one dataset when the
window closes) and, as its best case, one dataset per request; ``sglang_style`` tokenizes and
queues fetch+decode at arrival and runs the processor inline in FIFO order. The
``pool_vs_ray_data_p50`` target uses the paced ratio (windowed Ray Data); the closed-loop ratio
stays as ``pool_vs_ray_data_p50_closed_loop``.

The media workers' content-hash feature cache is off (``cache_bytes=0``) unless
``--feature-cache``: the workload repeats 3 files per kind under distinct URLs, so the
``Preprocessor``-based pipelines (pool, Ray Data) would hit it while ``sglang_style`` never does.

CPU: ``psutil`` sums user+system time of the driver and every descendant process (Ray's GCS,
raylets, agents, workers and actors: the local cluster's processes are all children of the
driver), sampled before and after each pipeline; see ``_TreeCpu``.

Like ``runner.py``, this reaches into Ray and ``actors`` only inside functions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import RayMMConfig
from .microbench import SERVING_IMAGE_MAX_PIXELS, SERVING_VIDEO_MAX_PIXELS, make_bench_model

PIPELINES = ("sglang_style", "ray_data", "pool", "pool_1worker")
PIPELINE_KEYS = ("requests_per_s", "items_per_s", "p50_ms", "p99_ms", "cpu_s_per_item")
IMAGES_PER_REQUEST = 4
VIDEO_NFRAMES = 16
SGLANG_IO_THREADS = 4
IMAGE_PH = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO_PH = "<|vision_start|><|video_pad|><|vision_end|>"
AUDIO_PH = "<|audio_bos|><|AUDIO|><|audio_eos|>"


def add_bench_parser(sub: Any) -> None:
    b = sub.add_parser("bench", help="side-by-side benchmark: SGLang-style, Ray Data, the pool; microbenchmarks")
    b.add_argument("--json", help="write the results as JSON to this file")
    b.add_argument("--quick", action="store_true", help="small workload and few repeats (about a minute)")
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
    b.set_defaults(func=cmd_bench)


# --------------------------------------------------------------------------- measurement helpers

class _TreeCpu:
    """CPU seconds (user+system) of this process and all its descendants, by kind.

    Uses ``psutil`` when it is installed, else reads ``/proc`` directly (Linux). Processes that
    exit between two samples lose their time (none of the measured ones do: actors and Ray Data
    workers are sampled before they are stopped).
    """

    def sample(self) -> dict[int, tuple[str, float]]:
        me = os.getpid()
        out: dict[int, tuple[str, float]] = {}
        for pid, cmd, cpu in _descendants(me):
            kind = "driver" if pid == me else ("ray_workers" if cmd.startswith("ray::") else "ray_system")
            out[pid] = (kind, cpu)
        return out

    @staticmethod
    def delta(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
        kinds: dict[str, float] = {"driver": 0.0, "ray_workers": 0.0, "ray_system": 0.0}
        for pid, (kind, cpu) in after.items():
            kinds[kind] = kinds.get(kind, 0.0) + cpu - before.get(pid, (kind, 0.0))[1]
        kinds["total"] = sum(kinds.values())
        return kinds


def _descendants(root: int) -> list[tuple[int, str, float]]:
    """(pid, argv[0], user+system CPU s) of ``root`` and every descendant."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        out = []
        me = psutil.Process(root)
        for proc in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                out.append((proc.pid, (proc.cmdline() or [""])[0], t.user + t.system))
        return out
    tick = os.sysconf("SC_CLK_TCK")
    procs: dict[int, tuple[int, str, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        procs[int(entry)] = (int(fields[1]), cmd, (int(fields[11]) + int(fields[12])) / tick)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        if pid in procs:
            out.append((pid, procs[pid][1], procs[pid][2]))
        stack.extend(children.get(pid, []))
    return out


def _find_pid(prefix: str) -> int | None:
    for pid, cmd, _ in _descendants(os.getpid()):
        if cmd.startswith(prefix):
            return pid
    return None


def _proc_cpu(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    for p, _, cpu in _descendants(pid):
        if p == pid:
            return cpu
    return float("nan")


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else float("nan")


@dataclass
class RunResult:
    """What one pipeline produced for one workload."""

    name: str
    wall_s: float
    latencies_s: list[float]
    records: list[dict[str, Any]]
    cpu: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        ok = [r for r in self.records if r.get("ok")]
        items = sum(len(r["items"]) for r in ok)
        out = {
            "requests": len(self.records),
            "ok": len(ok),
            "items": items,
            "wall_s": self.wall_s,
            "requests_per_s": len(self.records) / self.wall_s,
            "items_per_s": items / self.wall_s,
            "p50_ms": _pct(self.latencies_s, 50) * 1e3,
            "p99_ms": _pct(self.latencies_s, 99) * 1e3,
            "cpu_s_per_item": self.cpu["total"] / max(items, 1),
            "cpu_s": {k: round(v, 3) for k, v in self.cpu.items()},
        }
        errors = [r["error"]["message"] for r in self.records if not r.get("ok")]
        if errors:
            out["errors"] = errors[:3]
        out.update(self.extra)
        return out


# --------------------------------------------------------------------------- workload

@dataclass
class Workload:
    name: str
    model_dir: str
    core: RayMMConfig
    lines: list[tuple[str, dict[str, Any]]]
    adapter: str | None = None


def write_bench_media(directory: Path, audio: bool) -> dict[str, list[str]]:
    """1080p and 640x480 JPEGs, 800x600 PNGs, 10 s 360p H.264 clips (30 fps, keyframe every 2 s), 30 s AAC."""
    from .synth import make_audio, make_image, make_video

    directory.mkdir(parents=True, exist_ok=True)
    names: dict[str, list[str]] = {"jpeg_1080p": [], "jpeg_480p": [], "png": [], "video": [], "audio": []}
    for k in range(3):
        for key, (w, h, fmt) in {"jpeg_1080p": (1920, 1080, "JPEG"), "jpeg_480p": (640, 480, "JPEG"),
                                 "png": (800, 600, "PNG")}.items():
            name = f"{key}_{k}.{fmt.lower()}"
            (directory / name).write_bytes(make_image(w, h, fmt, seed=k))
            names[key].append(name)
    for k in range(2):
        name = f"clip_360p_{k}.mp4"
        (directory / name).write_bytes(make_video(640, 360, fps=30, seconds=10.0, gop=60, seed=k))
        names["video"].append(name)
        if audio:
            name = f"speech_{k}.aac"
            (directory / name).write_bytes(make_audio(30.0, 44100, "aac", freq=300.0 + 150 * k))
            names["audio"].append(name)
    return names


def vision_lines(base: str, names: dict[str, list[str]], n_image: int, n_video: int) -> list[tuple[str, dict[str, Any]]]:
    """Image requests (4 images: two 1080p JPEGs, two 640x480 JPEGs, every 4th with a PNG instead) and
    video requests (one clip, nframes=16), interleaved. Every URL is distinct (a query string), as
    distinct media would be in serving; the server ignores the query."""
    lines: list[tuple[str, dict[str, Any]]] = []
    total = n_image + n_video
    video_every = max(1, round(total / n_video)) if n_video else 0
    i_img = i_vid = 0
    for k in range(total):
        is_video = n_video and (i_vid < n_video) and ((k % video_every == video_every - 1) or i_img >= n_image)
        rid = f"bench-{k:04d}"
        if is_video:
            url = f"{base}/{names['video'][i_vid % len(names['video'])]}?r={rid}"
            lines.append((rid, {"request_id": rid, "prompt": f"What happens in {VIDEO_PH}? Answer briefly.",
                                "videos": [{"url": url, "nframes": VIDEO_NFRAMES}]}))
            i_vid += 1
        else:
            picks = [names["jpeg_1080p"][i_img % 3], names["jpeg_480p"][i_img % 3],
                     names["jpeg_1080p"][(i_img + 1) % 3],
                     names["png"][i_img % 3] if i_img % 4 == 3 else names["jpeg_480p"][(i_img + 1) % 3]]
            urls = [f"{base}/{p}?r={rid}-{j}" for j, p in enumerate(picks)]
            prompt = "Compare these pages. " + " ".join(f"Page {j + 1}: {IMAGE_PH}" for j in range(len(urls)))
            lines.append((rid, {"request_id": rid, "prompt": prompt, "images": urls}))
            i_img += 1
    return lines


def audio_lines(base: str, names: dict[str, list[str]], n: int) -> list[tuple[str, dict[str, Any]]]:
    return [(f"audio-{k:04d}", {"request_id": f"audio-{k:04d}", "prompt": f"Transcribe: {AUDIO_PH}",
                                "audios": [f"{base}/{names['audio'][k % len(names['audio'])]}?r={k}"]})
            for k in range(n)]


def coordinator_lines(base: str, names: dict[str, list[str]], n: int) -> list[tuple[str, dict[str, Any]]]:
    """Small 4-image requests (640x480 JPEGs) for the coordinator-CPU measurement."""
    out = []
    for k in range(n):
        rid = f"coord-{k:04d}"
        urls = [f"{base}/{names['jpeg_480p'][j % 3]}?r={rid}-{j}" for j in range(IMAGES_PER_REQUEST)]
        out.append((rid, {"request_id": rid, "prompt": "Pages: " + " ".join([IMAGE_PH] * 4), "images": urls}))
    return out


def _rename(lines: list[tuple[str, dict[str, Any]]], prefix: str) -> list[tuple[str, dict[str, Any]]]:
    """The same requests under fresh ids (the pool refuses an id it still holds)."""
    return [(f"{prefix}{rid}", {**line, "request_id": f"{prefix}{rid}"}) for rid, line in lines]


# --------------------------------------------------------------------------- pipelines

@dataclass
class _SglangJob:
    rid: str
    prepared: Any
    futures: list[Any]
    error: Exception | None


def _sglang_prepare(pre: Any, executor: ThreadPoolExecutor, rid: str, line: dict[str, Any]) -> _SglangJob:
    """Arrival of one request in the SGLang-shaped pipeline: tokenize, queue its fetch+decode on the pool."""
    from .errors import MMError

    try:
        prepared = pre.prepare(line, rid)
        futures = [executor.submit(pre.loader.load, pre.resolve_spec(spec)[0]) for spec in prepared.request.items()]
        return _SglangJob(rid, prepared, futures, None)
    except MMError as exc:
        return _SglangJob(rid, None, [], exc)


def _sglang_finish(pre: Any, job: _SglangJob) -> dict[str, Any]:
    """The inline part: wait for the decoded media, run the processor in this thread, align."""
    from .errors import InternalError, MMError
    from .pipeline import RequestOutcome, success_record

    rid = job.rid
    try:
        if job.error is not None:
            raise job.error
        per_spec = [[p.meta for p in pre.process_decoded(spec, fut.result())]
                    for spec, fut in zip(job.prepared.request.items(), job.futures)]
        alignment = pre.align_request(job.prepared, per_spec)
        return success_record(rid, alignment, {})
    except MMError as exc:
        return RequestOutcome.failure(rid, exc).record
    except Exception as exc:
        return RequestOutcome.failure(rid, InternalError(f"request {rid}: {type(exc).__name__}")).record


@contextlib.contextmanager
def _processor_path(pre: Any, hand_path: bool) -> Iterator[None]:
    """SGLang calls the HF processor inline, so its baseline must not get ray-mm's hand-tuned
    pixel path. Adapters are cached per process: the flag is restored afterwards."""
    adapter = pre.adapter
    before = getattr(adapter, "use_hand_path", None)
    if before is not None:
        adapter.use_hand_path = hand_path
    try:
        yield
    finally:
        if before is not None:
            adapter.use_hand_path = before


def run_sglang_style(w: Workload, io_threads: int = SGLANG_IO_THREADS, hand_path: bool = False) -> RunResult:
    """One process: thread-pool fetch+decode, processor inline (FIFO), then alignment. The HF
    processor, as SGLang runs it; ``hand_path=True`` swaps in ray-mm's pixel path (same shape)."""
    from .pipeline import Preprocessor

    pre = Preprocessor(w.model_dir, w.core, w.adapter)
    with _processor_path(pre, hand_path):
        return _run_sglang_style(pre, w, io_threads, "sglang_style_hand" if hand_path else "sglang_style")


def _run_sglang_style(pre: Any, w: Workload, io_threads: int, name: str) -> RunResult:
    executor = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="mm-io")
    warm = w.lines[:1]
    for rid, line in warm:  # imports, first-call setup
        pre.run(line, rid)
    cpu = _TreeCpu()
    c0 = cpu.sample()
    t0 = time.perf_counter()
    # every request arrives at t0: tokenize, queue its fetch+decode
    jobs = [_sglang_prepare(pre, executor, rid, line) for rid, line in w.lines]
    records, latencies = [], []
    for job in jobs:
        records.append(_sglang_finish(pre, job))
        latencies.append(time.perf_counter() - t0)
    wall = time.perf_counter() - t0
    delta = _TreeCpu.delta(c0, cpu.sample())
    executor.shutdown()
    return RunResult(name, wall, latencies, records, delta, {"io_threads": io_threads,
                                                             "processor": "ray-mm hand path" if name.endswith("_hand") else "HF"})


_PRE_CACHE: dict[tuple[str, str | None], Any] = {}


def _ray_data_row(row: dict[str, Any], model_dir: str, core: str, adapter: str | None) -> dict[str, Any]:
    """Ray Data UDF: the whole request through ``Preprocessor.run`` (one Preprocessor per worker process)."""
    key = (model_dir, adapter)
    pre = _PRE_CACHE.get(key)
    if pre is None:
        import torch

        from .pipeline import Preprocessor

        torch.set_num_threads(1)  # one thread per task, like a media worker
        pre = _PRE_CACHE[key] = Preprocessor(model_dir, RayMMConfig.model_validate_json(core), adapter)
    outcome = pre.run(json.loads(row["line"]), row["rid"])
    # The features travel on with the row (as they must, to reach a consumer), as one float32 block.
    feats = [np.ascontiguousarray(f) for f in outcome.features]
    return {"rid": row["rid"], "record": json.dumps(outcome.record), "n_features": len(feats),
            "features": np.concatenate([f.reshape(-1) for f in feats]) if feats else np.zeros(1, np.float32)}


def _ray_data_quiet() -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    with contextlib.suppress(Exception):
        ctx.print_on_execution_start = False


def _ray_data_dataset(w: Workload, lines: list[tuple[str, dict[str, Any]]], cpu_resource: str, concurrency: int) -> Any:
    """``from_items`` (one row per block) ``.map(_ray_data_row)`` on the CPU nodes: the one Ray Data setup of the bench."""
    import ray.data

    kwargs = {"model_dir": w.model_dir, "core": w.core.model_dump_json(), "adapter": w.adapter}
    items = [{"rid": rid, "line": json.dumps(line)} for rid, line in lines]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    try:
        compute: dict[str, Any] = {"compute": ray.data.TaskPoolStrategy(size=concurrency)}
    except (AttributeError, TypeError):  # older Ray Data
        compute = {"concurrency": concurrency}
    return ds.map(_ray_data_row, fn_kwargs=kwargs, num_cpus=1, resources={cpu_resource: 1}, **compute)


def _ray_data_warm(w: Workload, cpu_resource: str, concurrency: int, prefix: str) -> None:
    """Worker processes import and build their Preprocessor (reused by later tasks)."""
    for _ in _ray_data_dataset(w, _rename(w.lines[: 2 * concurrency], prefix), cpu_resource, concurrency).iter_rows():
        pass


def run_ray_data(w: Workload, cpu_resource: str, concurrency: int = 2) -> RunResult:
    """``ray.data.from_items(lines).map(fn)``: tasks on the CPU nodes (one per CPU node)."""
    _ray_data_quiet()
    _ray_data_warm(w, cpu_resource, concurrency, "warm-")
    cpu = _TreeCpu()
    c0 = cpu.sample()
    t0 = time.perf_counter()
    records, latencies = [], []
    for row in _ray_data_dataset(w, w.lines, cpu_resource, concurrency).iter_rows():
        latencies.append(time.perf_counter() - t0)
        records.append(json.loads(row["record"]))
    wall = time.perf_counter() - t0
    delta = _TreeCpu.delta(c0, cpu.sample())
    return RunResult("ray_data", wall, latencies, records, delta,
                     {"concurrency": concurrency, "blocks": len(w.lines), "udf": "map(Preprocessor.run), one row per block"})


def run_pool(
    w: Workload, workers: int, name: str, coord_lines: list[tuple[str, Any]] | None = None, idle_s: float = 2.0,
    after: Any = None, pool_settings: dict[str, Any] | None = None,
) -> RunResult:
    """The pool: ``Pool.run`` submits all lines at once (backpressure only past the admission limit).

    ``after(pool, requests_per_s)``, if given, runs on the same warm pool once the measurements
    here are done (the paced phase), before the pool is shut down. ``pool_settings`` override
    ``PoolConfig`` fields (side-by-side comparisons in ``benchmarks/``).
    """
    from actors.pool import Pool

    from .pool_config import PoolConfig

    cfg = PoolConfig(cpu_workers=workers, gpu_workers=1, consumer="noop", max_inflight_requests=max(64, len(w.lines) + 8),
                     **(pool_settings or {}))
    with Pool(w.model_dir, w.core, cfg, w.adapter) as pool:
        for _ in pool.run(_rename(w.lines[: 2 * workers], "warm-")):
            pass
        coord_pid = _find_pid("ray::Coordinator")
        stats0 = pool.stats()
        cpu = _TreeCpu()
        c0, k0 = cpu.sample(), _proc_cpu(coord_pid)
        t0 = time.perf_counter()
        records, latencies = [], []
        for rec in pool.run(w.lines):
            latencies.append(time.perf_counter() - t0)
            records.append(rec)
        wall = time.perf_counter() - t0
        delta = _TreeCpu.delta(c0, cpu.sample())
        stats1 = pool.stats()
        coord_proc_s = _proc_cpu(coord_pid) - k0
        extra: dict[str, Any] = {
            "workers": workers,
            "coordinator_cpu_ms_per_request": coord_proc_s / len(records) * 1e3,
            "coordinator_self_reported_cpu_ms_per_request":
                (stats1["coordinator_cpu_s"] - stats0["coordinator_cpu_s"]) / len(records) * 1e3,
            "zero_copy": all(r.get("consumer", {}).get("zero_copy", False) for r in records if r.get("ok")),
            "gpu_bytes_in_per_request": (sum(g["bytes_in"] for g in stats1["gpu_workers"])
                                         - sum(g["bytes_in"] for g in stats0["gpu_workers"])) / max(len(records), 1),
            "items_per_node": stats1.get("items_per_node", {}),
        }
        if coord_lines:
            # Coordinator CPU per request at exactly 4 images per request (the target's shape).
            s0, k0, c_t0 = pool.stats(), _proc_cpu(coord_pid), time.perf_counter()
            for _ in pool.run(coord_lines):
                pass
            s1, k1, c_wall = pool.stats(), _proc_cpu(coord_pid), time.perf_counter() - c_t0
            # The coordinator's fixed cost while idle (GPU worker pull polls, driver result polls,
            # Ray core worker threads), measured on the same process, is taken out of the per-request figure.
            i0, i_t0 = _proc_cpu(coord_pid), time.perf_counter()
            time.sleep(idle_s)
            idle_rate = (_proc_cpu(coord_pid) - i0) / (time.perf_counter() - i_t0)
            n = len(coord_lines)
            extra["coordinator_idle_cpu_ms_per_s"] = idle_rate * 1e3
            extra["coordinator_4img_process_cpu_ms_per_request"] = (k1 - k0) / n * 1e3
            self_4img = (s1["coordinator_cpu_s"] - s0["coordinator_cpu_s"]) / n * 1e3
            extra["coordinator_4img_self_reported_cpu_ms_per_request"] = self_4img
            extra["coordinator_process_cpu_ms_per_request"] = extra["coordinator_cpu_ms_per_request"]
            busy_4img = ((k1 - k0) - idle_rate * c_wall) / n * 1e3
            busy = (coord_proc_s - idle_rate * wall) / len(records) * 1e3
            # Below the 10 ms clock tick the process figure is noise: then the coordinator's own count stands.
            extra["coordinator_cpu_method"] = "process CPU (/proc or psutil) minus idle rate x wall"
            if busy_4img <= 0 or busy <= 0:
                extra["coordinator_cpu_method"] = "self-reported (process figure below clock resolution)"
                busy_4img, busy = self_4img, extra["coordinator_self_reported_cpu_ms_per_request"]
            extra["coordinator_4img_cpu_ms_per_request"] = busy_4img
            extra["coordinator_cpu_ms_per_request"] = busy
        if after is not None:
            after(pool, len(records) / wall)
    return RunResult(name, wall, latencies, records, delta, extra)


# --------------------------------------------------------------------------- paced (open-loop) arrivals

PACED_TIMEOUT_S = 300.0  # a paced phase that has not finished by then is reported with what completed


@dataclass
class PacedPlan:
    """One paced phase: the same requests at the same scheduled arrival offsets for every pipeline."""

    lines: list[tuple[str, dict[str, Any]]]
    arrivals: list[float]
    rate_per_s: float

    def renamed(self, prefix: str) -> list[tuple[str, dict[str, Any]]]:
        return _rename(self.lines, prefix)


def _paced_lines(lines: list[tuple[str, dict[str, Any]]], n: int) -> list[tuple[str, dict[str, Any]]]:
    """The first ``n`` workload requests (cycled if ``n`` is larger), under fresh ids."""
    out = []
    for k in range(n):
        rid, line = lines[k % len(lines)]
        out.append((f"paced-{k:04d}-{rid}", {**line, "request_id": f"paced-{k:04d}-{rid}"}))
    return out


def _sleep_until(t: float) -> None:
    dt = t - time.perf_counter()
    if dt > 0:
        time.sleep(dt)


def _paced_result(plan: PacedPlan, done: list[float | None], ok: list[bool], dispatched: list[float | None],
                  released: list[float] | None = None, **extra: Any) -> dict[str, Any]:
    from .arrivals import latency_summary

    return {**latency_summary(plan.arrivals, done, ok, dispatched, released), **extra}


def paced_pool(pool: Any, plan: PacedPlan, workers: int) -> dict[str, Any]:
    """The pool fed open-loop: each request goes to ``Pool.submit`` at its arrival time.

    ``pool`` is the warmed pool of the closed-loop ``pool`` run (idle by now). One driver thread
    both submits and collects: between arrivals it waits for results for at most the time left
    until the next arrival (the same poll ``Pool.run`` uses), so submissions are not held back.
    """
    lines = plan.renamed("pool-")
    n = len(lines)
    index = {rid: k for k, (rid, _) in enumerate(lines)}
    done: list[float | None] = [None] * n
    ok = [False] * n
    dispatched: list[float | None] = [None] * n
    t0 = time.perf_counter()
    k = 0
    while k < n or pool.pending:
        if time.perf_counter() - t0 > PACED_TIMEOUT_S:
            break
        while k < n and plan.arrivals[k] <= time.perf_counter() - t0:
            rid, line = lines[k]
            dispatched[k] = time.perf_counter() - t0
            pool.submit(line, rid)
            k += 1
        wait = 0.5 if k >= n else plan.arrivals[k] - (time.perf_counter() - t0)
        for rec in pool.poll(wait_s=min(max(wait, 0.0), 0.5)):
            j = index.get(rec["request_id"])
            if j is not None:
                done[j] = time.perf_counter() - t0
                ok[j] = bool(rec.get("ok"))
    return _paced_result(plan, done, ok, dispatched, workers=workers,
                         setup=f"actors.pool.Pool, {workers} media workers, consumer=noop (the closed-loop pool, "
                               "warm and idle); Pool.submit at each arrival")


def paced_ray_data(w: Workload, cpu_resource: str, plan: PacedPlan, window_s: float, concurrency: int = 2) -> dict[str, Any]:
    """Ray Data fed open-loop as micro-batches: the requests that arrived in window ``[kW, (k+1)W)``
    become one dataset (the bench's ``from_items(...).map(_ray_data_row)``) started when the window
    closes; ``window_s <= 0``: one dataset per request, started at its arrival. Datasets run
    concurrently (one driver thread each), so a slow window does not hold back the next one;
    their tasks share the same two CPU-node slots.
    """
    from .arrivals import release_times, window_groups

    _ray_data_quiet()
    lines = plan.renamed("rd-")
    n = len(lines)
    index = {rid: k for k, (rid, _) in enumerate(lines)}
    batches = window_groups(plan.arrivals, window_s)
    released = release_times(batches, n)
    done: list[float | None] = [None] * n
    ok = [False] * n
    dispatched: list[float | None] = [None] * n
    _ray_data_warm(w, cpu_resource, concurrency, "paced-warm-")
    t0 = 0.0

    def run_batch(indices: tuple[int, ...]) -> None:
        started = time.perf_counter() - t0
        for j in indices:
            dispatched[j] = started
        ds = _ray_data_dataset(w, [lines[j] for j in indices], cpu_resource, concurrency)
        for row in ds.iter_rows():
            j = index[row["rid"]]
            done[j] = time.perf_counter() - t0
            ok[j] = bool(json.loads(row["record"]).get("ok"))

    executor = ThreadPoolExecutor(max_workers=max(1, min(64, len(batches))), thread_name_prefix="rd-window")
    errors: list[str] = []
    try:
        t0 = time.perf_counter()
        futures = []
        for b in batches:
            _sleep_until(t0 + b.release_s)
            futures.append(executor.submit(run_batch, b.indices))
        for f in futures:
            try:
                f.result(timeout=max(1.0, PACED_TIMEOUT_S - (time.perf_counter() - t0)))
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
    finally:
        executor.shutdown(wait=not errors, cancel_futures=True)
    what = (f"one dataset per {window_s:g} s window, started when the window closes" if window_s > 0
            else "one dataset per request, started at its arrival")
    out = _paced_result(plan, done, ok, dispatched, released, window_s=max(window_s, 0.0), datasets=len(batches),
                        setup=f"ray.data.from_items(rows, one per block).map(Preprocessor.run), "
                              f"TaskPoolStrategy({concurrency}), 1 mm_cpu each; {what}")
    if errors:
        out["errors"] = errors[:3]
    return out


def paced_sglang_style(w: Workload, plan: PacedPlan, io_threads: int = SGLANG_IO_THREADS) -> dict[str, Any]:
    """The SGLang-shaped process fed open-loop: at its arrival a request is tokenized and its
    fetch+decode queued on the thread pool; the main thread runs the HF processor inline in FIFO
    order, taking new arrivals between requests (never while the processor runs)."""
    from collections import deque
    from concurrent.futures import wait as futures_wait

    from .pipeline import Preprocessor

    lines = plan.renamed("sg-")
    n = len(lines)
    done: list[float | None] = [None] * n
    ok = [False] * n
    dispatched: list[float | None] = [None] * n
    pre = Preprocessor(w.model_dir, w.core, w.adapter)
    executor = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="mm-io")
    try:
        with _processor_path(pre, hand_path=False):
            for rid, line in _rename(w.lines[:1], "paced-warm-"):
                pre.run(line, rid)
            queue: deque[tuple[int, _SglangJob]] = deque()
            t0 = time.perf_counter()
            k = 0
            while k < n or queue:
                if time.perf_counter() - t0 > PACED_TIMEOUT_S:
                    break
                while k < n and plan.arrivals[k] <= time.perf_counter() - t0:
                    dispatched[k] = time.perf_counter() - t0
                    queue.append((k, _sglang_prepare(pre, executor, *lines[k])))
                    k += 1
                if not queue:
                    _sleep_until(t0 + plan.arrivals[k])
                    continue
                j, job = queue[0]
                if job.futures:  # wait for the head's media, but no later than the next arrival
                    timeout = None if k >= n else max(0.0, plan.arrivals[k] - (time.perf_counter() - t0))
                    if futures_wait(job.futures, timeout=timeout).not_done:
                        continue
                queue.popleft()
                rec = _sglang_finish(pre, job)
                done[j] = time.perf_counter() - t0
                ok[j] = bool(rec.get("ok"))
    finally:
        executor.shutdown()
    return _paced_result(plan, done, ok, dispatched, io_threads=io_threads,
                         setup=f"one process: ThreadPoolExecutor({io_threads}) fetch+decode at arrival, "
                               "HF processor inline in FIFO order")


def paced_rate(pool_rps: float, ray_data_rps: float, load: float, fixed: float | None) -> tuple[float, str]:
    """The paced phase's arrival rate and how it was chosen."""
    if fixed:
        return fixed, f"fixed (--paced-rate {fixed:g})"
    slower = min(pool_rps, ray_data_rps)
    return load * slower, f"{load:g} x min(pool, ray_data) closed-loop req/s ({slower:.3f})"


# --------------------------------------------------------------------------- object store (subprocess)

def object_store_roundtrip(mb: float = 23.0, repeats: int = 5) -> dict[str, Any]:
    """``ray.put`` + ``ray.get`` of one ~23 MB float32 feature, numpy vs torch, on a local 1-CPU Ray."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    import torch

    # address="local": a fresh instance, never the latest cluster on the machine (another user's).
    ray.init(address="local", num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="ERROR",
             log_to_driver=False, object_store_memory=512 << 20)
    try:
        rows = int(mb * 1e6 / (1176 * 4))
        arr = np.random.default_rng(0).random((rows, 1176), dtype=np.float32)
        out: dict[str, Any] = {"mb": arr.nbytes / 1e6}
        for name, obj in (("numpy", arr), ("torch", torch.from_numpy(arr.copy()))):
            puts, gets = [], []
            for _ in range(repeats + 1):
                t0 = time.perf_counter()
                ref = ray.put(obj)
                t1 = time.perf_counter()
                got = ray.get(ref)
                t2 = time.perf_counter()
                puts.append(t1 - t0)
                gets.append(t2 - t1)
                del got, ref
            out[f"{name}_put_ms"] = float(np.median(puts[1:]) * 1e3)
            out[f"{name}_get_ms"] = float(np.median(gets[1:]) * 1e3)
            out[f"{name}_roundtrip_ms"] = out[f"{name}_put_ms"] + out[f"{name}_get_ms"]
        got = ray.get(ray.put(arr))
        out["numpy_get_zero_copy"] = bool(not got.flags.writeable)
        out["torch_vs_numpy_get"] = out["torch_get_ms"] / out["numpy_get_ms"]
        out["torch_vs_numpy_roundtrip"] = out["torch_roundtrip_ms"] / out["numpy_roundtrip_ms"]
        return out
    finally:
        ray.shutdown()


def _object_store_in_subprocess(repeats: int) -> dict[str, Any]:
    code = f"import json; from ray_mm.bench import object_store_roundtrip; print(json.dumps(object_store_roundtrip(repeats={repeats})))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the command

def _target(target: float, measured: float, higher_is_better: bool = True, **more: Any) -> dict[str, Any]:
    ok = math.isfinite(measured) and (measured >= target if higher_is_better else measured <= target)
    return {"target": target, "measured": round(measured, 4), "met": bool(ok), **more}


def _p50_targets(result: dict[str, Any]) -> dict[str, Any]:
    """Pool p50 against Ray Data's: measured in the paced phase (service latency at a sustainable
    rate); the closed-loop ratio (everything at t0, mostly queueing) stays as its own entry."""
    pool, rd = result["pipelines"]["pool"], result["pipelines"]["ray_data"]
    closed = _target(0.2, pool["p50_ms"] / rd["p50_ms"], higher_is_better=False,
                     unit="x p50 (closed loop: all requests at t0)", basis="closed_loop")
    out = {"pool_vs_ray_data_p50_closed_loop": closed}
    paced = result.get("paced", {})
    pp = paced.get("pipelines", {})

    def ratio(name: str) -> float:
        a, b = pp.get("pool", {}).get("p50_ms"), pp.get(name, {}).get("p50_ms")
        ok = all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in (a, b))
        return a / b if ok else float("nan")  # type: ignore[operator]

    paced_ratio = ratio("ray_data")
    if math.isfinite(paced_ratio):
        more = {"basis": "paced", "rate_per_s": round(paced["rate_per_s"], 4),
                "ray_data_window_s": paced["ray_data_window_s"]}
        out["pool_vs_ray_data_p50"] = _target(
            0.2, paced_ratio, higher_is_better=False,
            unit=f"x p50 (paced, Ray Data in {paced['ray_data_window_s']:g} s windows)", **more)
        per_req = ratio("ray_data_per_request")
        if math.isfinite(per_req):
            out["pool_vs_ray_data_per_request_p50_paced"] = _target(
                0.2, per_req, higher_is_better=False, unit="x p50 (paced, Ray Data one dataset per request)",
                basis="paced", rate_per_s=round(paced["rate_per_s"], 4))
    else:  # paced phase skipped or failed: say so, and fall back to the closed-loop ratio
        out["pool_vs_ray_data_p50"] = {**closed, "basis": "closed_loop (paced phase not run or failed)"}
    return out


def compute_targets(result: dict[str, Any]) -> dict[str, Any]:
    p = result["pipelines"]
    micro = result["micro"]
    sg, rd, pool, pool1 = p["sglang_style"], p["ray_data"], p["pool"], p["pool_1worker"]
    img = micro["image_1080p_per_core_per_s"]
    return {
        "pool_vs_sglang_throughput": _target(1.8, pool["requests_per_s"] / sg["requests_per_s"], unit="x req/s"),
        "pool_1worker_vs_sglang_throughput": _target(0.9, pool1["requests_per_s"] / sg["requests_per_s"], unit="x req/s"),
        "pool_vs_ray_data_throughput": _target(1.0, pool["requests_per_s"] / rd["requests_per_s"], unit="x req/s"),
        **_p50_targets(result),
        "image_1080p_per_core": _target(45.0, img["ray_mm"], unit="images/s/core"),
        "image_1080p_vs_hf_pil": _target(3.5, img["ray_mm"] / img["hf_pil"], unit="x"),
        "image_1080p_per_core_uint8": _target(45.0, img.get("ray_mm_uint8", 0.0), unit="images/s/core (uint8 transport)"),
        "image_1080p_per_core_uint8_draft": _target(
            45.0, img.get("ray_mm_uint8_draft", 0.0), unit="images/s/core (uint8 transport + opt-in draft JPEG decode)"),
        "video_clips_per_core": _target(8.0, micro["video_clips_per_core_per_s"], unit="clips/s/core"),
        "align_fast_vs_legacy": _target(5.0, micro["align_fast_vs_legacy_32k"], unit="x"),
        **({"align_fast_vs_legacy_structured": _target(
            5.0, micro["align_fast_vs_legacy_32k_structured"], unit="x (Qwen3-VL timestamped videos, MiniCPM-V sliced images)")}
           if "align_fast_vs_legacy_32k_structured" in micro else {}),
        **({"pool_uint8_vs_sglang_throughput": _target(
            1.8, p["pool_uint8"]["requests_per_s"] / sg["requests_per_s"], unit="x req/s (opt-in uint8 transport)")}
           if p.get("pool_uint8", {}).get("requests_per_s") else {}),
        **({"pool_vs_sglang_hand_throughput": _target(
            1.8, pool["requests_per_s"] / p["sglang_style_hand"]["requests_per_s"],
            unit="x req/s (SGLang shape given ray-mm's hand pixel path: the gain from distribution alone)")}
           if p.get("sglang_style_hand", {}).get("requests_per_s") else {}),
        "coordinator_cpu_ms_per_request_4img": _target(
            0.5, pool.get("coordinator_4img_cpu_ms_per_request", pool["coordinator_cpu_ms_per_request"]),
            higher_is_better=False, unit="ms"),
    }


def run_micro(model_dir: Path, quick: bool) -> dict[str, Any]:
    from .microbench import (
        align_fast_vs_legacy,
        align_fast_vs_legacy_structured,
        family_image_per_core,
        image_per_core,
        video_sampling,
    )

    img = image_per_core(model_dir, n=4 if quick else 20)
    vid = video_sampling(n=2 if quick else 8, model_dir=model_dir)
    align = align_fast_vs_legacy(repeats=5 if quick else 20)
    structured = align_fast_vs_legacy_structured(repeats=5 if quick else 20)
    # Every family with images (tiny models, so paths not families are compared); two in --quick.
    families = family_image_per_core(["qwen3_vl", "gemma3"] if quick else None, n=2 if quick else 10)
    store = _object_store_in_subprocess(repeats=3 if quick else 8)
    return {
        "image_1080p_per_core_per_s": {k: img[k] for k in ("hf_pil", "hf_fast", "ray_mm", "ray_mm_uint8", "ray_mm_uint8_draft")},
        "image_1080p_detail": img,
        "video_clips_per_core_per_s": vid.get("video_clips_per_core_per_s", vid["clips_per_s"]),
        "video_detail": vid,
        "align_fast_vs_legacy_32k": align["speedup"],
        "align_detail": align,
        "align_fast_vs_legacy_32k_structured": structured["speedup"],
        "align_structured_detail": structured,
        "family_image_1080p_per_core_per_s": families,
        "object_store_23mb": store,
    }


def _start_cluster() -> Any:
    """Head + two 1-CPU CPU nodes + one GPU-worker node on 127.0.0.1, 1 GiB object store per node."""
    from actors.local_cluster import start_local_cluster

    try:
        from ray_mm.pool_config import LocalClusterSpec
    except ImportError:  # older layout: keyword sizes
        return start_local_cluster(cpu_nodes=2, cpus_per_node=1, gpu_nodes=1, object_store_bytes=1 << 30)
    return start_local_cluster(LocalClusterSpec(), object_store_bytes=1 << 30)


def _guarded(fn: Any, log: Any) -> dict[str, Any]:
    """Extra sub-workloads (audio, uint8 transport): a failure there is reported, not fatal."""
    try:
        return fn()
    except Exception as exc:
        log(f"extra sub-workload failed: {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}"}


@dataclass
class PacedOptions:
    n: int
    load: float = 0.5
    rate: float | None = None
    kind: str = "poisson"
    seed: int = 0
    window_s: float = 1.0
    max_span_s: float | None = 45.0


def plan_paced(vision: Workload, pool_rps: float, ray_data_rps: float, opts: PacedOptions) -> tuple[dict[str, Any], PacedPlan]:
    """The paced phase's schedule (the same for every pipeline) and its JSON header."""
    from .arrivals import arrival_schedule, fit_count, mean_rate

    rate, basis = paced_rate(pool_rps, ray_data_rps, opts.load, opts.rate)
    n = fit_count(opts.n, rate, opts.max_span_s)
    arrivals = arrival_schedule(n, rate, opts.seed, opts.kind)
    plan = PacedPlan(_paced_lines(vision.lines, n), arrivals, rate)
    head: dict[str, Any] = {
        "rate_per_s": rate, "rate_basis": basis, "n": n, "n_requested": opts.n, "max_span_s": opts.max_span_s,
        "arrivals": opts.kind, "seed": opts.seed,
        "schedule_span_s": arrivals[-1] if arrivals else 0.0, "schedule_mean_rate_per_s": mean_rate(arrivals),
        "ray_data_window_s": opts.window_s,
        "latency": "scheduled arrival (t0 + offset) until the result is at the driver; windows' waits included",
        "pipelines": {},
    }
    return head, plan


def run_pipelines(work: Path, quick: bool, n_image: int, n_video: int, n_audio: int, log: Any,
                  paced: PacedOptions | None = None, feature_cache: bool = False) -> dict[str, Any]:
    from .demo import serve_directory
    from .models import make_model

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
        out["pipelines"]["sglang_style_hand"] = _guarded(lambda: run_sglang_style(vision, hand_path=True).summary(), log)
        if audio:
            out["audio"]["sglang_style"] = _guarded(lambda: run_sglang_style(audio).summary(), log)
        from ray_mm.pool_config import DEFAULT_CPU_RESOURCE

        cluster = _start_cluster()
        try:
            log("ray_data ...")
            out["pipelines"]["ray_data"] = run_ray_data(vision, DEFAULT_CPU_RESOURCE).summary()
            if audio:
                out["audio"]["ray_data"] = _guarded(lambda: run_ray_data(audio, DEFAULT_CPU_RESOURCE).summary(), log)
            log("pool (2 workers) ...")
            plan: PacedPlan | None = None

            def paced_on_pool(pool: Any, pool_rps: float) -> None:
                nonlocal plan
                if paced is None or paced.n <= 0:
                    return
                out["paced"], plan = plan_paced(vision, pool_rps, out["pipelines"]["ray_data"]["requests_per_s"], paced)
                log(f"paced: {len(plan.lines)} requests at {plan.rate_per_s:.2f} req/s ({paced.kind}); pool (2 workers) ...")
                out["paced"]["pipelines"]["pool"] = _guarded(lambda: paced_pool(pool, plan, 2), log)

            out["pipelines"]["pool"] = run_pool(vision, 2, "pool", coord, idle_s=1.0 if quick else 3.0,
                                                after=paced_on_pool).summary()
            if audio:
                out["audio"]["pool"] = _guarded(lambda: run_pool(audio, 2, "pool").summary(), log)
            log("pool (2 workers, uint8 transport) ...")
            vision_u8 = Workload("vision_uint8", model, core.model_copy(update={"transport": "uint8"}), vision.lines)
            out["pipelines"]["pool_uint8"] = _guarded(lambda: run_pool(vision_u8, 2, "pool_uint8").summary(), log)
            log("pool (1 worker) ...")
            out["pipelines"]["pool_1worker"] = run_pool(vision, 1, "pool_1worker").summary()
            if plan is not None:
                pp, window = out["paced"]["pipelines"], paced.window_s
                log(f"paced: ray_data, {window:g} s windows ...")
                pp["ray_data"] = _guarded(lambda: paced_ray_data(vision, DEFAULT_CPU_RESOURCE, plan, window), log)
                log("paced: ray_data, one dataset per request ...")
                pp["ray_data_per_request"] = _guarded(lambda: paced_ray_data(vision, DEFAULT_CPU_RESOURCE, plan, 0.0), log)
        finally:
            cluster.shutdown()
        if plan is not None:
            log("paced: sglang_style (cluster down, as in its closed-loop run) ...")
            out["paced"]["pipelines"]["sglang_style"] = _guarded(lambda: paced_sglang_style(vision, plan), log)
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
                      "items_per_s": [out["pipelines"]["pool_1worker"]["items_per_s"], out["pipelines"]["pool"]["items_per_s"]]}
    return out


def format_paced(paced: dict[str, Any] | None) -> list[str]:
    if not paced:
        return []
    out = [f"== paced (open loop): {paced['n']} requests, {paced['arrivals']} arrivals at {paced['rate_per_s']:.2f} req/s "
           f"[{paced['rate_basis']}]; Ray Data window {paced['ray_data_window_s']:g} s; "
           "latency = scheduled arrival -> result at the driver",
           f"{'pipeline':<22}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'done/n':>9}{'max lag ms':>11}"]
    for name, p in paced["pipelines"].items():
        if "p50_ms" not in p:
            out.append(f"{name:<22}failed: {str(p.get('error'))[:80]}")
            continue
        ms = [f"{p.get(k, float('nan')):>9.0f}" for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")]
        done = f"{p.get('completed', '?')}/{p.get('n', '?')}"
        out.append(f"{name:<22}{''.join(ms)}{done:>9}{p.get('dispatch_lag_max_ms', float('nan')):>11.1f}")
    return out


def format_table(result: dict[str, Any]) -> str:
    lines = ["", "== ray-mm bench (same workload, same cores; all requests submitted at once)"]
    lines.append(f"{'pipeline':<14}{'req/s':>8}{'items/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'cpu s/item':>11}{'coord ms/req':>13}")
    for name, p in result["pipelines"].items():
        if "requests_per_s" not in p:
            lines.append(f"{name:<14}failed: {str(p.get('error'))[:80]}")
            continue
        coord = p.get("coordinator_4img_cpu_ms_per_request", p.get("coordinator_cpu_ms_per_request"))
        coord_s = f"{coord:>13.2f}" if coord is not None else f"{'-':>13}"
        lines.append(f"{name:<14}{p['requests_per_s']:>8.2f}{p['items_per_s']:>9.2f}{p['p50_ms']:>9.0f}{p['p99_ms']:>9.0f}"
                     f"{p['cpu_s_per_item']:>11.3f}{coord_s}")
    for name, p in result.get("audio", {}).items():
        if "error" in p:
            lines.append(f"{'audio/' + name:<14}failed: {p['error'][:80]}")
            continue
        lines.append(f"{'audio/' + name:<14}{p['requests_per_s']:>8.2f}{p['items_per_s']:>9.2f}{p['p50_ms']:>9.0f}"
                     f"{p['p99_ms']:>9.0f}{p['cpu_s_per_item']:>11.3f}")
    lines.extend(format_paced(result.get("paced")))
    m = result["micro"]
    img = m["image_1080p_per_core_per_s"]
    lines.append(f"1080p JPEG -> pixel_values per core: HF PIL {img['hf_pil']:.1f}/s, HF fast {img['hf_fast']:.1f}/s, "
                 f"ray-mm {img['ray_mm']:.1f}/s")
    v = m["video_detail"]
    lines.append(f"video 16 of 10 s 360p per core, decode + pixels: {m['video_clips_per_core_per_s']:.1f} clips/s "
                 f"(HF video processor {v.get('decode_hf_processor_clips_per_s', float('nan')):.1f}/s; "
                 f"decode only {v.get('decode_only_clips_per_s', v['clips_per_s']):.1f}/s, "
                 f"seek per frame {v['naive_clips_per_s']:.1f}/s)")
    lines.append(f"align fast vs legacy, 32k tokens, 16 images: {m['align_fast_vs_legacy_32k']:.1f}x")
    if "align_fast_vs_legacy_32k_structured" in m:
        lines.append(f"align fast vs legacy, 32k tokens, structured (timestamped videos, sliced images): "
                     f"{m['align_fast_vs_legacy_32k_structured']:.1f}x")
    for family, f in m.get("family_image_1080p_per_core_per_s", {}).get("families", {}).items():
        lines.append(f"1080p image per core, {family} (tiny model, adapter {f['adapter']}): ray-mm {f['ray_mm_per_s']:.1f}/s, "
                     f"HF processor call {f['hf_processor_call_per_s']:.1f}/s")
    s = m.get("object_store_23mb", {})
    if "numpy_get_ms" in s:
        lines.append(f"object store 23 MB put+get: numpy {s['numpy_roundtrip_ms']:.1f} ms, torch {s['torch_roundtrip_ms']:.1f} ms")
    lines.append(f"{'target':<40}{'target':>9}{'measured':>10}  met")
    for name, t in result["targets"].items():
        lines.append(f"{name:<40}{t['target']:>9g}{t['measured']:>10.3f}  {'yes' if t['met'] else 'NOT MET'}")
    return "\n".join(lines)


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
    with tempfile.TemporaryDirectory(prefix="ray-mm-bench-") as tmp:
        work = Path(tmp)
        model = make_bench_model(work / "qwen2_vl_micro")
        result: dict[str, Any] = {"command": "ray-mm bench" + (" --quick" if quick else "")}
        if args.skip_micro:
            result["micro"] = {}
        else:
            log("microbenchmarks ...")
            result["micro"] = run_micro(model, quick)
        result.update(run_pipelines(work, quick, n_image, n_video, n_audio, log, paced, bool(args.feature_cache)))
    if not args.skip_micro:
        result["targets"] = compute_targets(result)
    result["bench_wall_s"] = time.perf_counter() - t0
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=_json_default))
    if "targets" in result:
        print(format_table(result))
    else:
        print(json.dumps(result["pipelines"], indent=2, default=_json_default))
    return 0


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    raise TypeError(type(obj).__name__)
