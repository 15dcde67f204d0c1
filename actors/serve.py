"""``ray-mm serve``: the Ray Serve deployment that is the pool's online front door.

It owns the HTTP side only: routes, the body cap, one ``Coordinator.submit_and_wait`` call per
request (each caller awaits its own record; resubmitted once if the coordinator restarts), reading
a request's features for inline answers and engine hand-off metadata, statuses, ``Retry-After`` and
the HTTP metrics. Parsing, limits and the error-to-status rules are pure (``ray_mm.serve.http_api``).

The pool is started by whoever runs the app (``ray-mm serve``, a test, a benchmark) and found by
its coordinator's name, so replicas hold no pool state: any replica can answer any request, and a
replica that restarts loses nothing but the requests it was answering (their clients see the
connection drop; the coordinator cancels what they were waiting for). With coordinator shards
the app gets every shard's name and sends each request to the shard its id hashes to
(``ray_mm.pool.shard_of``, as the driver does); ``/healthz`` asks every shard.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from actors import metrics
from ray_mm.errors import MMError, RequestTimeoutError
from ray_mm.pool import shard_of
from ray_mm.request import request_id_of
from ray_mm.serve import http_api

logger = logging.getLogger("ray_mm.actors.serve")

DEPLOYMENT_NAME = "ray_mm_preprocess"
APP_NAME = "ray_mm"
# How long a replica waits for submit_and_wait past the request's deadline: the coordinator answers
# every request by its deadline (504) on its own, and itself gives up 5 s after (WAIT_GRACE_S).
_CALL_GRACE_S = 10.0


async def _awaited(ref: Any) -> Any:
    return await ref


class _Unavailable(MMError):
    """The pool cannot take the request now (its coordinator is gone or restarting): 503, retry."""

    status = 503


class PreprocessServer:
    """One Serve replica: ``POST /v1/preprocess`` and ``GET /healthz`` in front of a pool's coordinator."""

    def __init__(self, coordinator_name: str | list[str], model_dir: str, adapter: str | None, settings: dict[str, Any],
                 default_timeout_s: float) -> None:
        self.settings = http_api.ServeSettings.model_validate(settings)
        # One name per coordinator shard, in shard order.
        self.coordinator_names = [coordinator_name] if isinstance(coordinator_name, str) else list(coordinator_name)
        self.model_dir = model_dir
        self.adapter_name = adapter
        self.timeout_s = self.settings.request_timeout_s or default_timeout_s
        self._coordinators: dict[int, Any] = {}  # shard -> handle, looked up on first use
        # The model adapter is needed only to finish features (uint8 transport) and for vLLM's hand-off;
        # loaded on first use, in a thread, so replicas start without importing the model stack.
        self._adapter: Any = None
        self._adapter_lock: asyncio.Lock | None = None

    # -- routing ---------------------------------------------------------------------
    async def __call__(self, request: Request) -> Response:
        t0 = time.perf_counter()
        path = _route_path(request.scope)
        route = path if path in (http_api.PREPROCESS_PATH, http_api.HEALTH_PATH) else "other"
        status = 499  # what the metric says if the client goes away before the answer
        try:
            if path == http_api.PREPROCESS_PATH:
                response = await self._preprocess(request) if request.method == "POST" else _not_allowed("POST")
            elif path == http_api.HEALTH_PATH:
                response = await self._health() if request.method in ("GET", "HEAD") else _not_allowed("GET")
            else:
                response = _json(404, {"ok": False, "error": {"type": "NotFound", "status": 404, "message": f"no route {path[:100]}"
                                                              f" (routes: POST {http_api.PREPROCESS_PATH}, GET {http_api.HEALTH_PATH})"}})
            status = response.status_code
            return response
        except Exception:  # a fault of this front end; the pool's own faults come back as records
            logger.exception("front-end fault on %s %s", request.method, path[:100])
            status = 500
            return _json(500, http_api.internal_error_record(None, "front-end fault"))
        finally:
            metrics.http_request(route, status, time.perf_counter() - t0)

    # -- POST /v1/preprocess -------------------------------------------------------
    async def _preprocess(self, request: Request) -> Response:
        rid: str | None = None
        try:
            query = http_api.parse_query(request.query_params)
            header_id = request.headers.get(http_api.REQUEST_ID_HEADER)
            http_api.check_content_length(request.headers.get("content-length"), self.settings.max_body_bytes)
            body = await self._read_body(request)
            line, rid = http_api.request_line(body, header_id)
        except MMError as exc:
            return self._respond(http_api.error_record(rid, exc))
        timeout_s = http_api.effective_timeout(query, self.timeout_s)
        deadline = time.monotonic() + timeout_s
        record = await self._submit(line, rid, deadline, keep_features=query.needs_features)
        refs = record.pop(http_api.FEATURE_REFS_KEY, None)
        if not record.get("ok") or (query.format is None and not query.include_features):
            return self._respond(record)
        try:
            features = await self._features(refs or [], deadline, rid) if query.needs_features else []
            if query.format is not None:
                adapter = await self._get_adapter()
                record["handoff"] = await asyncio.to_thread(_handoff, query.format, record, features, adapter)
            if query.include_features:
                npz = await asyncio.to_thread(http_api.features_npz, record["items"], features, self.settings.max_features_bytes)
                record["features"] = http_api.encode_features(npz)
        except MMError as exc:
            return self._respond(http_api.error_record(rid, exc))
        except Exception as exc:  # a fault of this front end, after the pool's answer
            logger.exception("request %s: front-end fault while building the answer", rid)
            return self._respond(http_api.internal_error_record(rid, f"front-end fault ({type(exc).__name__})"))
        return self._respond(record)

    async def _read_body(self, request: Request) -> bytes:
        cap, size, chunks = self.settings.max_body_bytes, 0, []
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:  # stop reading: the rest of a body over the cap is never held
                raise http_api.body_too_large(size, cap, at_least=True)
            chunks.append(chunk)
        return b"".join(chunks)

    def _coordinator_handle(self, shard: int = 0) -> Any:
        if shard not in self._coordinators:
            name = self.coordinator_names[shard]
            try:
                self._coordinators[shard] = ray.get_actor(name)
            except ValueError:
                raise _Unavailable(f"the pool's coordinator {name} is not running") from None
        return self._coordinators[shard]

    async def _submit(self, line: dict[str, Any], rid: str, deadline: float, keep_features: bool) -> dict[str, Any]:
        """The request's record from the coordinator. If the coordinator dies with the request (it
        restarts: ``max_restarts=-1``), the request is submitted once more with what is left of its
        deadline; a second loss is 503. Exactly one record comes back either way. The request goes
        to the coordinator shard its id hashes to."""
        shard = shard_of(request_id_of(line, rid), len(self.coordinator_names))
        for attempt in (1, 2):
            left = deadline - time.monotonic()
            if left <= 0:
                return http_api.error_record(rid, RequestTimeoutError(
                    f"request {rid}: its deadline passed while the coordinator restarted"))
            try:
                ref = self._coordinator_handle(shard).submit_and_wait.remote(line, rid, left, keep_features)
            except _Unavailable as exc:
                return http_api.error_record(rid, exc)
            try:
                return dict(await asyncio.wait_for(_awaited(ref), timeout=left + _CALL_GRACE_S))
            except ray.exceptions.RayActorError as exc:  # died with the request (restarting), or unreachable
                # Looked up again next time: a coordinator gone for good (pool shut down) is then a plain 503.
                self._coordinators.pop(shard, None)
                logger.warning("request %s: coordinator shard %d lost during attempt %d (%s)", rid, shard, attempt,
                               type(exc).__name__)
            except asyncio.TimeoutError:
                ray.cancel(ref)  # the coordinator's wait ends and cancels the request
                logger.error("request %s: the coordinator did not answer by the deadline (+%g s)", rid, _CALL_GRACE_S)
                return http_api.error_record(rid, RequestTimeoutError(f"request {rid}: no answer from the pool in time"))
            except asyncio.CancelledError:  # the client went away: nobody will read the record
                ray.cancel(ref)
                raise
        return http_api.error_record(rid, _Unavailable(
            f"request {rid}: the pool's coordinator failed twice while holding this request; retry"))

    async def _features(self, refs: list[tuple[Any, int]], deadline: float, rid: str) -> list[dict[str, Any]]:
        """Each item's feature arrays (read zero-copy from the object store), as the model consumes them."""
        unique = list(dict.fromkeys(ref for ref, _ in refs))
        try:
            lists = await asyncio.wait_for(asyncio.gather(*(_awaited(r) for r in unique)),
                                           timeout=max(0.5, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise RequestTimeoutError(f"request {rid}: its features could not be read by the deadline") from None
        except ray.exceptions.ObjectLostError as exc:  # owner (the coordinator) restarted meanwhile
            raise _Unavailable(f"request {rid}: its features were lost ({type(exc).__name__}); retry") from None
        by_ref = dict(zip(unique, lists))
        adapter = await self._get_adapter()
        # uint8 transport: the pixels are rescaled, normalised and patchified here (CPU work: off the event loop).
        return await asyncio.to_thread(lambda: [adapter.finish_features(by_ref[ref][k]) for ref, k in refs])

    async def _get_adapter(self) -> Any:
        if self._adapter is None:
            if self._adapter_lock is None:
                self._adapter_lock = asyncio.Lock()
            async with self._adapter_lock:
                if self._adapter is None:
                    from ray_mm.models import load_adapter

                    self._adapter = await asyncio.to_thread(load_adapter, self.model_dir, self.adapter_name)
        return self._adapter

    def _respond(self, record: dict[str, Any]) -> Response:
        status, body = http_api.answer(record)
        headers = {}  # (no X-Request-Id here: Serve's proxy sets it, to the client's header or its own id)
        if status == 503:
            headers["Retry-After"] = str(self.settings.retry_after_s)
        if status == 500:
            logger.error("request %s: answered 500: %s", body.get("request_id"), body["error"].get("message"))
        return _json(status, body, headers)

    # -- GET /healthz --------------------------------------------------------------
    async def _health(self) -> Response:
        """200 when every coordinator shard answers and each sees at least one media worker and one
        GPU worker alive (a shard that is down fails its own requests, so the pool is not healthy)."""
        timeout = self.settings.health_timeout_s
        try:
            refs = [self._coordinator_handle(k).health.remote(timeout / 2) for k in range(len(self.coordinator_names))]
            shards = await asyncio.wait_for(asyncio.gather(*(_awaited(ref) for ref in refs)), timeout=timeout)
        except _Unavailable as exc:
            return _json(503, {"ok": False, "reason": exc.message}, {"Retry-After": str(self.settings.retry_after_s)})
        except (asyncio.TimeoutError, ray.exceptions.RayError) as exc:
            return _json(503, {"ok": False, "reason": f"the coordinator did not answer within {timeout:g} s ({type(exc).__name__})"},
                         {"Retry-After": str(self.settings.retry_after_s)})
        health = _merge_health(shards)
        ok = health["media_workers_alive"] >= 1 and health["gpu_workers_alive"] >= 1
        headers = {} if ok else {"Retry-After": str(self.settings.retry_after_s)}
        return _json(200 if ok else 503, {"ok": ok, **health}, headers)


def _merge_health(shards: list[dict[str, Any]]) -> dict[str, Any]:
    """One shard's health as is; several: workers alive as the shard that sees fewest (every shard
    must be fed), requests summed, each shard's own under ``shards``."""
    if len(shards) == 1:
        return shards[0]
    out = dict(shards[0])
    for key in ("media_workers_alive", "gpu_workers_alive"):
        out[key] = min(h[key] for h in shards)
    for key in ("inflight", "max_inflight_requests", "waiters"):
        out[key] = sum(h.get(key, 0) for h in shards)
    out["shards"] = shards
    return out


def _handoff(fmt: str, record: dict[str, Any], features: list[dict[str, Any]], adapter: Any) -> Any:
    """The engine payload's metadata (arrays as shape/dtype), built by ``ray_mm.handoff``."""
    from ray_mm import handoff
    from ray_mm.handoff.mrope import mrope_positions, mrope_spec_for

    spec = mrope_spec_for(adapter)  # Qwen families: the payload carries M-RoPE positions (described) and delta
    mrope = mrope_positions(record["input_ids"], record["items"], spec) if spec is not None else None
    if fmt == "sglang":
        payload = handoff.to_sglang(record, features, mrope=mrope)
    else:  # vLLM takes one compact placeholder per item and the encoder's embeddings (described as pending)
        payload = handoff.to_vllm(record, adapter.placeholder_token_ids, mrope=mrope)
    return handoff.describe(payload)


def _route_path(scope: dict[str, Any]) -> str:
    """The path below the app's route prefix (Serve passes the prefix as ``root_path``)."""
    path, root = scope.get("path", "/"), scope.get("root_path", "")
    if root and root != "/" and path.startswith(root):
        path = path[len(root):] or "/"
    return path.rstrip("/") or "/"


def _not_allowed(method: str) -> Response:
    return _json(405, {"ok": False, "error": {"type": "MethodNotAllowed", "status": 405, "message": f"use {method}"}},
                 {"Allow": method})


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, set)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    data = json.dumps(body, separators=(",", ":"), default=_jsonable).encode()
    return Response(data, status_code=status, headers=headers, media_type="application/json")


# -- building and running the app ---------------------------------------------------------
def coordinator_name(pool: Any) -> str | list[str]:
    """The name under which ``pool`` (``actors.pool.Pool``) registered its coordinator; with
    coordinator shards, every shard's name in shard order (``build_app`` takes either)."""
    names = list(getattr(pool, "coordinator_names", None) or [f"ray_mm_coordinator_{pool.pool_id}"])
    for name in names:
        ray.get_actor(name)  # fails loudly if Pool ever names them differently
    return names[0] if len(names) == 1 else names


def build_app(coordinator: str | list[str], model_dir: str | Path, adapter: str | None = None,
              settings: http_api.ServeSettings | dict[str, Any] | None = None, default_timeout_s: float = 120.0,
              deployment_name: str = DEPLOYMENT_NAME) -> Any:
    """The Serve application in front of the pool whose coordinator is named ``coordinator`` (a list:
    the names of its coordinator shards, in shard order)."""
    s = settings if isinstance(settings, http_api.ServeSettings) else http_api.ServeSettings.model_validate(settings or {})
    deployment = serve.deployment(
        PreprocessServer, name=deployment_name, num_replicas=s.num_replicas, max_ongoing_requests=s.max_ongoing_requests,
        # Replicas mostly await the coordinator: no CPU reserved, so they fit beside a busy pool.
        ray_actor_options={"num_cpus": 0},
        graceful_shutdown_timeout_s=s.graceful_shutdown_timeout_s, graceful_shutdown_wait_loop_s=0.5,
    )
    return deployment.bind(coordinator, str(model_dir), adapter, s.model_dump(), default_timeout_s)


def app_builder(args: dict[str, Any]) -> Any:
    """Serve's application builder (``import_path: actors.serve:app_builder`` in a Serve config):
    ``coordinator`` and ``model`` are required; ``adapter``, ``default_timeout_s`` and every
    ``ServeSettings`` field are optional."""
    args = dict(args)
    try:
        coordinator, model = args.pop("coordinator"), args.pop("model")
    except KeyError as exc:
        raise ValueError(f"actors.serve:app_builder needs the argument {exc.args[0]!r}") from None
    adapter, default_timeout_s = args.pop("adapter", None), float(args.pop("default_timeout_s", 120.0))
    return build_app(coordinator, model, adapter, args, default_timeout_s)


def start(app: Any, host: str = "127.0.0.1", port: int = 8000, name: str = APP_NAME, route_prefix: str = "/",
          proxy_location: str = "HeadOnly") -> str:
    """Start Serve's HTTP proxy (on the head node only by default: one listener on ``host:port``)
    and deploy ``app``; returns the base URL once the app is running."""
    serve.start(proxy_location=proxy_location, http_options={"host": host, "port": port})
    serve.run(app, name=name, route_prefix=route_prefix)
    return f"http://{host}:{port}{route_prefix.rstrip('/')}"


def stop(name: str = APP_NAME) -> None:
    """Delete the app (its replicas finish what they hold, within graceful_shutdown_timeout_s), then
    shut Serve down. Deleting first keeps the shutdown short: Serve's own shutdown of a running
    app waited past its 30 s limit here."""
    try:
        serve.delete(name)
    finally:
        serve.shutdown()


def read_serve_config(path: str | Path) -> dict[str, Any]:
    """What ``ray-mm serve --serve-config FILE`` takes from a Ray Serve config file (validated by
    Serve's own schema): ``host``, ``port``, ``proxy_location``, ``route_prefix``, and the
    ``ServeSettings`` from the ``actors.serve:app_builder`` application's args and its deployment's
    ``num_replicas`` / ``max_ongoing_requests``."""
    import yaml
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(yaml.safe_load(Path(path).read_text()))
    apps = [a for a in schema.applications if a.import_path == "actors.serve:app_builder"]
    if len(apps) != 1:
        raise ValueError(f"{path}: expected one application with import_path actors.serve:app_builder, found {len(apps)}")
    (app,) = apps
    settings = {k: v for k, v in (app.args or {}).items() if k in http_api.ServeSettings.model_fields}
    for dep in app.deployments:
        if dep.name == DEPLOYMENT_NAME:
            fields = dep.model_dump(exclude_unset=True)
            settings.update({k: fields[k] for k in ("num_replicas", "max_ongoing_requests", "graceful_shutdown_timeout_s") if k in fields})
    return {
        "host": schema.http_options.host, "port": schema.http_options.port,
        "proxy_location": str(getattr(schema.proxy_location, "value", schema.proxy_location)),
        "route_prefix": app.route_prefix or "/",
        "settings": http_api.ServeSettings.model_validate(settings),
    }
