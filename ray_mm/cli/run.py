"""``ray-mm run``: the pool on a cluster (embedded local one by default), with progress and a summary.

This and the pool handle are the only parts of ``ray_mm`` that reach into
``actors`` (and so into Ray); the imports happen inside the command.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..bench.stats import percentile
from ..config import RayMMConfig
from ..errors import MMError
from ..pool.config import LocalClusterSpec, PoolConfig, load_local_cluster_spec, load_pool_config
from ..request.jsonl import dedupe, write_record
from .main import UsageError, add_log_level, check_model_dir, open_output, open_requests

DEFAULT_LOCAL_SPEC = "cluster_configs/local.yaml"


def add_run_parser(sub: Any) -> None:
    run = sub.add_parser("run", help="run requests through the distributed pool")
    run.add_argument("--address", help="Ray address ('auto' inside a job); default: start a local cluster")
    run.add_argument("--model", help="local model directory (default: build the tiny models)")
    run.add_argument("--requests", help="request JSONL (default: generated demo workload)")
    run.add_argument("--out", help="result JSONL (default: out/results.jsonl)", default="out/results.jsonl")
    run.add_argument("--cpu-workers", type=int, help="media workers (default from config: 2)")
    run.add_argument("--gpu-workers", type=int, help="GPU workers (default from config: 1)")
    run.add_argument("--config", help="YAML config with core sections and a 'pool:' section")
    run.add_argument("--adapter", help="model adapter name (default: from the model directory)")
    run.add_argument(
        "--cluster-config",
        help="simulated cluster spec when no --address is given (default: cluster_configs/local.yaml if present)",
    )
    run.add_argument("--demo-requests", type=int, default=48, help="size of the generated demo workload")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_log_level(run)
    run.set_defaults(func=cmd_run)


def resolve_pool_setup(args: argparse.Namespace) -> tuple[RayMMConfig, PoolConfig, LocalClusterSpec | None]:
    """The core config, the pool config (``--config``, else the local cluster spec's, with the
    ``--cpu-workers`` / ``--gpu-workers`` overrides) and, with no ``--address``, the local cluster to
    start; the model directory checked. Shared by ``run`` and ``serve``."""
    core, pool_cfg = load_pool_config(args.config)
    spec = None
    if not args.address:
        spec_path = args.cluster_config or (DEFAULT_LOCAL_SPEC if Path(DEFAULT_LOCAL_SPEC).exists() else None)
        spec = load_local_cluster_spec(spec_path)
        if not args.config:
            pool_cfg = spec.pool
    overrides = {k: v for k, v in (("cpu_workers", args.cpu_workers), ("gpu_workers", args.gpu_workers)) if v is not None}
    pool_cfg = pool_cfg.model_copy(update=overrides)
    _check_model(args.model, args.adapter)
    return core, pool_cfg, spec


def cmd_run(args: argparse.Namespace) -> int:
    """Exit status 0 when every request got a record (ok or not). What the user gave (configs, model
    directory, request file, output path) is checked before any cluster starts: a mistake there is
    a ``UsageError``/``ConfigError`` (one line, exit 2)."""
    core, pool_cfg, spec = resolve_pool_setup(args)
    # Read (and deduplicate) the whole file now: an unreadable file stops the run before the cluster starts.
    lines = list(dedupe(open_requests(args.requests))) if args.requests else None
    try:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot write output file {args.out}: {exc.strerror or exc}") from exc
    with open_output(args.out) as out:
        cluster = _connect(args.address, spec, pool_cfg)
        try:
            with tempfile.TemporaryDirectory(prefix="ray-mm-run-") as tmp, contextlib.ExitStack() as stack:
                workloads = _workloads(args, core, Path(tmp), stack, lines)
                records = _run_workloads(workloads, pool_cfg, args, out)
        finally:
            if cluster is not None:
                cluster.shutdown()
    return 0 if records else 1


def _check_model(model: str | None, adapter: str | None) -> None:
    """``--model`` must be a directory the adapter loads from; checked in the driver, where a failure
    is one line, rather than in every actor's constructor."""
    check_model_dir(model)
    if model is None:
        return
    from ..models import load_adapter

    try:
        load_adapter(model, adapter)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load a model from {model}: {' '.join(str(exc).split()) or type(exc).__name__}") from exc


def _connect(address: str | None, spec: LocalClusterSpec | None, pool_cfg: PoolConfig) -> Any:
    if address:
        import ray

        if not ray.is_initialized():  # in-process callers (tests, notebooks) may already be connected
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        return None
    from actors.local_cluster import start_local_cluster

    assert spec is not None
    # Enough CPU-node slots for the requested media workers, one simulated node per worker.
    slots = spec.cpu_nodes.resources.get(pool_cfg.cpu_node_resource, 0) * spec.cpu_nodes.count
    if slots < pool_cfg.cpu_workers:
        per_node = spec.cpu_nodes.resources.get(pool_cfg.cpu_node_resource, 1) or 1
        count = -(-pool_cfg.cpu_workers // int(per_node))
        spec = spec.model_copy(update={"cpu_nodes": spec.cpu_nodes.model_copy(update={"count": count})})
    return start_local_cluster(spec)


def _workloads(
    args: argparse.Namespace, core: RayMMConfig, tmp: Path, stack: contextlib.ExitStack,
    lines: list[tuple[str, Any]] | None,
) -> list[dict[str, Any]]:
    """``lines``: the request file's ``(fallback_id, line)``, already through ``dedupe``; None: the demo."""
    from ..models import load_adapter, make_model

    if lines is not None:
        model = args.model or str(make_model(tmp / "qwen2_vl", "qwen2_vl"))
        return [{"name": "requests", "model": model, "adapter": args.adapter, "core": core, "lines": lines}]
    from .demo import audio_requests, serve_directory, vision_requests, write_media

    media = tmp / "media"
    names = write_media(media)
    base = stack.enter_context(serve_directory(media))
    # The demo serves its media on 127.0.0.1, which the SSRF guard refuses by default: allow it here, explicitly.
    demo_core = core.model_copy(update={"media": core.media.model_copy(update={"allow_private_addresses": True})})
    n_audio = max(4, args.demo_requests // 6)
    n_vision = max(1, args.demo_requests - n_audio - 2)
    vl_model = args.model or str(make_model(tmp / "qwen2_vl", "qwen2_vl"))
    vl = load_adapter(vl_model, args.adapter)
    skip_ids = vl.tokenize(f"Look: {vl.placeholder_texts['image']} now.")
    lines = vision_requests(media, base, names, n_vision, skip_ids=skip_ids)
    out = [{"name": "vision", "model": vl_model, "adapter": args.adapter, "core": demo_core,
            "lines": [(r["request_id"], r) for r in lines]}]
    if args.model is None:
        au_model = str(make_model(tmp / "qwen2_audio", "qwen2_audio"))
        out.append({"name": "audio", "model": au_model, "adapter": None, "core": demo_core,
                    "lines": [(r["request_id"], r) for r in audio_requests(base, names, n_audio)]})
    return out


def _run_workloads(
    workloads: list[dict[str, Any]], pool_cfg: PoolConfig, args: argparse.Namespace, out: Any
) -> list[dict[str, Any]]:
    """Run each workload through a pool, writing (and flushing) each record to ``out`` as it comes,
    so a run that dies part way keeps what it finished. A line that is already its error (not
    JSON, a repeated ``request_id``) gets its record from the driver, as ``align`` writes it, and
    is not submitted: one bad line never stops the batch."""
    from tqdm import tqdm

    from actors.pool import Pool

    from ..pipeline import RequestOutcome

    records: list[dict[str, Any]] = []
    stats: list[dict[str, Any]] = []
    total = sum(len(w["lines"]) for w in workloads)
    t0 = time.perf_counter()

    def emit(rec: dict[str, Any]) -> None:
        write_record(out, rec)
        records.append(rec)
        bar.update(1)

    with tqdm(total=total, desc="requests", unit="req", disable=args.no_progress, file=sys.stderr) as bar:
        for w in workloads:
            bar.set_postfix_str(w["name"])
            submit = []
            for fallback, line in w["lines"]:
                if isinstance(line, MMError):
                    emit(RequestOutcome.failure(fallback, line).record)
                else:
                    submit.append((fallback, line))
            if not submit:
                continue
            with Pool(w["model"], w["core"], pool_cfg, w["adapter"]) as pool:
                for rec in pool.run(submit):
                    emit(rec)
                stats.append(pool.stats())
    wall = time.perf_counter() - t0
    print(format_summary(records, stats, wall), file=sys.stderr)
    print(f"results: {args.out}", file=sys.stderr)
    return records


def format_summary(records: list[dict[str, Any]], stats: list[dict[str, Any]], wall_s: float) -> str:
    ok = [r for r in records if r.get("ok")]
    lines = ["", "== ray-mm run summary"]
    items = sum(len(r["items"]) for r in ok)
    lines.append(f"requests: {len(records)} ({len(ok)} ok, {len(records) - len(ok)} failed) in {wall_s:.1f} s: "
                 f"{len(records) / wall_s:.2f} req/s, {items / wall_s:.2f} items/s")
    paths = collections.Counter(r["path"] for r in ok)
    lines.append(f"alignment paths: fast {paths.get('fast', 0)}, legacy {paths.get('legacy', 0)}")
    lines.append(f"{'stage':<16}{'p50 ms':>10}{'p99 ms':>10}")
    for stage in ("tokenize_s", "fetch_s", "decode_s", "process_s", "align_s", "pool_total_s"):
        vals = [r["timings"][stage] * 1e3 for r in ok if stage in r.get("timings", {})]
        if vals:
            lines.append(f"{stage[:-2]:<16}{percentile(vals, 50):>10.1f}{percentile(vals, 99):>10.1f}")
    consume = [r["consumer"]["consume_s"] * 1e3 for r in ok if "consumer" in r]
    if consume:
        lines.append(f"{'gpu_consume':<16}{percentile(consume, 50):>10.1f}{percentile(consume, 99):>10.1f}")
    errors = collections.Counter(r["error"]["type"] for r in records if not r.get("ok"))
    lines.append("errors by type: " + (", ".join(f"{k} {v}" for k, v in sorted(errors.items())) or "none"))
    for r in records:
        if not r.get("ok"):
            lines.append(f"  {r['request_id']}: {r['error']['type']} ({r['error']['status']}): {r['error']['message'][:100]}")
    per_node: collections.Counter[str] = collections.Counter()
    for s in stats:
        per_node.update(s.get("items_per_node", {}))
    lines.append("items per node: " + ", ".join(f"{node[:12]} {n}" for node, n in sorted(per_node.items())))
    hits = sum(s.get("counters", {}).get("cache_hits", 0) for s in stats)
    misses = sum(s.get("counters", {}).get("cache_misses", 0) for s in stats)
    lines.append(f"media cache: {hits} hits, {misses} misses (repeats are fetched and hashed, not decoded again)")
    if records:
        lines.append(_coordinator_cpu_line(stats, len(records)))
    return "\n".join(lines)


def _coordinator_cpu_line(stats: list[dict[str, Any]], n: int) -> str:
    """Coordinator CPU per request: the coordinator processes' CPU (every thread, Ray's own work
    included, since each started; summed over shards and workloads), with the share spent in the
    coordinator's own code (admission, alignment, records) beside it."""
    own = sum(s.get("coordinator_cpu_s", 0.0) for s in stats) / n * 1e3
    process = [s.get("coordinator_process_cpu_s") for s in stats]
    if not process or any(p is None for p in process):
        return f"coordinator CPU: process CPU not measured; own code {own:.2f} ms per request"
    proc = sum(process) / n * 1e3
    shards = max(int(s.get("coordinators", 1)) for s in stats)
    share = f" ({own / proc:.0%} of it)" if proc > 0 else ""
    return (f"coordinator CPU: {proc:.2f} ms per request process CPU ({shards} coordinator process"
            f"{'es' if shards > 1 else ''}, since start-up, idle included); own code {own:.2f} ms{share}")
