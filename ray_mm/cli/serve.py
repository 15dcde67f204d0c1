"""``ray-mm serve``: start (or join) a cluster, start the pool, put the HTTP front door in front of it.

Like ``run.py`` (whose cluster start-up it reuses), this reaches into ``actors`` and Ray only
inside the command. The front end itself is ``actors/serve.py``; the HTTP contract is
``ray_mm/serve/http_api.py``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from .main import UsageError, add_log_level


def add_serve_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="online HTTP front door (Ray Serve) in front of the pool")
    p.add_argument("--address", help="Ray address ('auto' inside a job); default: start a local cluster")
    p.add_argument("--model", help="local model directory (default: build the tiny qwen2_vl model)")
    p.add_argument("--config", help="YAML config with core sections and a 'pool:' section")
    p.add_argument("--adapter", help="model adapter name (default: from the model directory)")
    p.add_argument("--host", help="address the HTTP proxy binds (default: 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP port (default: 8000)")
    p.add_argument("--replicas", type=int, help="front-end replicas (default: 1)")
    p.add_argument("--max-ongoing-requests", type=int, help="requests one replica holds at once (default: 256)")
    p.add_argument("--cpu-workers", type=int, help="media workers (default from config: 2)")
    p.add_argument("--gpu-workers", type=int, help="GPU workers (default from config: 1)")
    p.add_argument("--serve-config", help="Ray Serve config to take the proxy and front-end settings from "
                   "(e.g. cluster_configs/serve.yaml); flags override it")
    p.add_argument("--cluster-config", help="simulated cluster spec when no --address is given "
                   "(default: cluster_configs/local.yaml if present)")
    add_log_level(p)
    p.set_defaults(func=cmd_serve)


def serve_options(args: argparse.Namespace) -> dict[str, Any]:
    """Host, port, proxy location, route prefix and ``ServeSettings``: ``--serve-config`` first, flags over it."""
    from ..serve.http_api import ServeSettings

    opts: dict[str, Any] = {"host": "127.0.0.1", "port": 8000, "proxy_location": "HeadOnly", "route_prefix": "/",
                            "settings": ServeSettings()}
    if args.serve_config:
        from actors.serve import read_serve_config

        try:
            opts.update(read_serve_config(args.serve_config))
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot use serve config {args.serve_config}: {' '.join(str(exc).split())[:300]}") from exc
    for flag, key in (("host", "host"), ("port", "port")):
        if getattr(args, flag) is not None:
            opts[key] = getattr(args, flag)
    updates = {k: v for k, v in (("num_replicas", args.replicas), ("max_ongoing_requests", args.max_ongoing_requests))
               if v is not None}
    if updates:
        try:
            opts["settings"] = ServeSettings.model_validate({**opts["settings"].model_dump(), **updates})
        except ValueError as exc:
            raise UsageError(f"bad front-end setting: {' '.join(str(exc).split())[:300]}") from exc
    return opts


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM, then shut down the app, the pool and (if started here) the cluster."""
    from .run import _connect, resolve_pool_setup

    core, pool_cfg, spec = resolve_pool_setup(args)
    opts = serve_options(args)
    cluster = _connect(args.address, spec, pool_cfg)
    stop = threading.Event()
    # Installed after ray.init, which sets its own SIGTERM handler (exit at once): here both signals
    # end the serving loop, and the app, pool and cluster are shut down in order.
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        from actors.pool import Pool
        from actors.serve import build_app, coordinator_name, start
        from actors.serve import stop as stop_app

        with tempfile.TemporaryDirectory(prefix="ray-mm-serve-") as tmp:
            model = args.model
            if model is None:
                from ..models import make_model

                model = str(make_model(Path(tmp) / "qwen2_vl", "qwen2_vl"))
            with Pool(model, core, pool_cfg, args.adapter) as pool:
                app = build_app(coordinator_name(pool), model, args.adapter, opts["settings"], pool_cfg.request_timeout_s)
                url = start(app, opts["host"], opts["port"], route_prefix=opts["route_prefix"],
                            proxy_location=opts["proxy_location"])
                print(f"ray-mm serve: listening on {url} (POST /v1/preprocess, GET /healthz); "
                      f"pool: {pool_cfg.cpu_workers} media workers, {pool_cfg.gpu_workers} GPU workers. "
                      "Ctrl-C to stop.", file=sys.stderr, flush=True)
                try:
                    while not stop.wait(0.5):
                        pass
                finally:
                    print("ray-mm serve: shutting down", file=sys.stderr, flush=True)
                    stop_app()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if cluster is not None:
            cluster.shutdown()
    return 0
