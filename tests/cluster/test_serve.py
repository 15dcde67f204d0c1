"""ray-mm serve on the simulated cluster: a real HTTP client against the real Serve app in front of a
real pool (one cluster, one pool, one app per module). Records equal the in-process pipeline's;
every error has its status; saturation is 503 with Retry-After; a client that goes away, a duplicate
id and a coordinator restart leave nothing behind and never get two answers."""

from __future__ import annotations

import asyncio
import base64
import http.server
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray

from actors.local_cluster import LOOPBACK, LocalCluster, free_port
from actors.pool import Pool
from actors.serve import build_app, coordinator_name, read_serve_config, start, stop
from ray_mm import handoff
from ray_mm.cli.demo import serve_directory
from ray_mm.config import MediaPolicy, RayMMConfig
from ray_mm.handoff.mrope import mrope_positions, mrope_spec_for
from ray_mm.media.synth import make_image
from ray_mm.models import load_adapter, make_model
from ray_mm.pipeline import Preprocessor
from ray_mm.pool.config import PoolConfig
from ray_mm.serve import http_api

IMG = "<|vision_start|><|image_pad|><|vision_end|>"
COMPARED = ("ok", "path", "input_ids", "items")
MAX_INFLIGHT = 40  # above the load test's 32 concurrent clients: saturation only where a test makes it
CONFIG_ROOT = Path(__file__).resolve().parents[2] / "cluster_configs"


class _SlowHandler(http.server.SimpleHTTPRequestHandler):
    """``/slow/<name>``: the file after 1.5 s; ``/stall/<name>``: no answer for 4 s, then the connection closes."""

    def do_GET(self) -> None:  # noqa: N802 - name of the base class's hook
        if self.path.startswith("/slow/"):
            time.sleep(1.5)
            self.path = self.path[len("/slow"):]
        elif self.path.startswith("/stall/"):
            time.sleep(4.0)
            return
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        pass


def _data_uri(data: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("model"), "qwen2_vl")


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("media")
    (d / "tiny.jpg").write_bytes(make_image(64, 48, seed=1))
    (d / "mid.jpg").write_bytes(make_image(320, 240, seed=2))
    with serve_directory(d, _SlowHandler) as base:
        yield base


@pytest.fixture(scope="module")
def config() -> RayMMConfig:
    # Media are served on 127.0.0.1, which the SSRF guard refuses unless told otherwise.
    return RayMMConfig(media=MediaPolicy(allow_private_addresses=True))


@pytest.fixture(scope="module")
def pre(model_dir: Path, config: RayMMConfig) -> Preprocessor:
    return Preprocessor(model_dir, config)


@pytest.fixture(scope="module")
def server(cluster: LocalCluster, model_dir: Path, config: RayMMConfig) -> Iterator[tuple[str, Pool]]:
    """The pool, its front door at ``/``, and a second app at ``/nopool`` whose pool does not exist."""
    cfg = PoolConfig(cpu_workers=2, gpu_workers=1, consumer="noop", max_inflight_requests=MAX_INFLIGHT, request_timeout_s=30)
    settings = http_api.ServeSettings(max_body_bytes=1 << 20, max_features_bytes=1 << 20, graceful_shutdown_timeout_s=1)
    with Pool(str(model_dir), config, cfg) as pool:
        url = start(build_app(coordinator_name(pool), model_dir, None, settings, cfg.request_timeout_s), LOOPBACK, free_port())
        from ray import serve

        serve.run(build_app("ray_mm_coordinator_missing", model_dir, None, settings, 30.0, deployment_name="nopool"),
                  name="nopool", route_prefix="/nopool")
        try:
            yield url, pool
        finally:
            serve.delete("nopool")
            stop()


@pytest.fixture
def client(server: tuple[str, Pool]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server[0], timeout=60) as c:
        yield c


def _coordinator_stats(pool: Pool) -> dict[str, Any]:
    return ray.get(pool.coordinator.stats.remote(), timeout=30)


def _wait_idle(pool: Pool, timeout_s: float = 15.0) -> dict[str, Any]:
    """The coordinator's stats once it holds no request, no waiter and no uncollected record."""
    end = time.monotonic() + timeout_s
    while True:
        stats = _coordinator_stats(pool)
        if stats["inflight"] == 0 and stats["waiters"] == 0 and stats["results_waiting"] == 0 or time.monotonic() > end:
            return stats
        time.sleep(0.2)


def test_prompt_with_images_matches_in_process(client: httpx.Client, media: str, pre: Preprocessor) -> None:
    line = {"request_id": "img-1", "prompt": f"Look: {IMG} and {IMG}.",
            "images": [f"{media}/mid.jpg", _data_uri(make_image(100, 80, seed=5))]}
    expected = pre.run(line).record
    r = client.post("/v1/preprocess", json=line)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["request_id"] == "img-1" and expected["ok"]
    assert {k: got[k] for k in COMPARED} == {k: expected[k] for k in COMPARED}
    assert http_api.FEATURE_REFS_KEY not in got and "features" not in got and "handoff" not in got
    assert got["consumer"]["zero_copy"] is True  # answered after a GPU worker consumed it


def test_openai_chat_completions_body(client: httpx.Client, pre: Preprocessor) -> None:
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_uri(make_image(64, 64, seed=7))}},
                                             {"type": "text", "text": "What is this?"}]}]
    body = {"model": "qwen2-vl", "messages": messages, "max_tokens": 16, "temperature": 0.2, "stream": False}
    r = client.post("/v1/preprocess", json=body, headers={"X-Request-Id": "chat-1"})
    assert r.status_code == 200, r.text
    got = r.json()
    expected = pre.run({"request_id": "chat-1", "messages": messages}).record
    assert got["request_id"] == "chat-1"
    assert {k: got[k] for k in COMPARED} == {k: expected[k] for k in COMPARED}


def test_include_features_equal_in_process_and_are_capped(client: httpx.Client, media: str, pre: Preprocessor) -> None:
    line = {"request_id": "feat-1", "prompt": f"{IMG} then {IMG}", "images": [f"{media}/tiny.jpg", _data_uri(make_image(90, 60, seed=3))]}
    outcome = pre.run(line)
    r = client.post("/v1/preprocess", params={"include_features": "true"}, json=line)
    assert r.status_code == 200, r.text
    got = r.json()
    assert {k: got[k] for k in COMPARED} == {k: outcome.record[k] for k in COMPARED}
    arrays = http_api.decode_features(got["features"])
    expected = {f"item{k}": f for k, f in enumerate(outcome.features)}
    for k, named in enumerate(outcome.item_features):
        expected.update({f"item{k}.{name}": value for name, value in named.items()})
    assert sorted(arrays) == sorted(expected)
    for name, value in expected.items():
        assert arrays[name].dtype == value.dtype and arrays[name].shape == value.shape, name
        assert (arrays[name] == value).all(), name
    # 320x240 gives 1.8 MB of features: over this app's 1 MiB inline cap.
    r = client.post("/v1/preprocess", params={"include_features": "true"},
                    json={"request_id": "feat-big", "prompt": IMG, "images": [f"{media}/mid.jpg"]})
    assert r.status_code == 413 and r.json()["error"]["status"] == 413
    assert r.json()["request_id"] == "feat-big" and "features" not in r.json()


@pytest.mark.parametrize("fmt", ["sglang", "vllm"])
def test_handoff_metadata(client: httpx.Client, media: str, pre: Preprocessor, model_dir: Path, fmt: str) -> None:
    line = {"request_id": f"ho-{fmt}", "prompt": f"{IMG} and {IMG}", "images": [f"{media}/tiny.jpg", f"{media}/mid.jpg"]}
    outcome = pre.run(line)
    r = client.post("/v1/preprocess", params={"format": fmt}, json=line)
    assert r.status_code == 200, r.text
    got = r.json()
    adapter = load_adapter(model_dir)
    mrope = mrope_positions(outcome.record["input_ids"], outcome.record["items"], mrope_spec_for(adapter))
    if fmt == "sglang":
        payload = handoff.to_sglang(outcome.record, outcome.item_features, mrope=mrope)
    else:
        payload = handoff.to_vllm(outcome.record, adapter.placeholder_token_ids, mrope=mrope)
    assert got["handoff"] == json.loads(json.dumps(handoff.describe(payload)))
    extras = got["handoff"]["ray_mm"]  # Qwen2-VL: M-RoPE positions (3 x seq, described) and the delta
    assert extras["mrope_positions"]["shape"] == [3, len(got["input_ids"])] and extras["mrope_position_delta"] == mrope[1]
    assert "features" not in got


BAD_MEDIA = "data:image/jpeg;base64," + base64.b64encode(b"not a jpeg at all").decode()


@pytest.mark.parametrize(("name", "request_kw", "status", "error_type"), [
    ("malformed JSON", {"content": b'{"request_id": "x", "prompt": '}, 400, "RequestError"),
    ("not an object", {"json": [1, 2, 3]}, 400, "RequestError"),
    ("unknown key", {"json": {"request_id": "e-key", "prompt": "hi", "imgs": []}}, 400, "RequestError"),
    ("bad media", {"json": {"request_id": "e-media", "prompt": IMG, "images": [BAD_MEDIA]}}, 400, "MediaDecodeError"),
    ("path outside the root", {"json": {"request_id": "e-path", "prompt": IMG, "images": ["/etc/passwd"]}}, 403, "MediaPolicyError"),
    ("body over the cap", {"content": b'{"request_id": "e-big", "prompt": "' + b"x" * (1 << 20) + b'"}'}, 413, "RequestError"),
    ("tiny deadline", {"params": {"timeout_s": "0.001"}, "json": {"request_id": "e-late", "prompt": IMG,
                                                                  "images": [_data_uri(make_image(64, 48))]}}, 504, "RequestTimeoutError"),
    ("bad query", {"params": {"format": "tgi"}, "json": {"request_id": "e-q", "prompt": "hi"}}, 400, "RequestError"),
])
def test_error_statuses(client: httpx.Client, name: str, request_kw: dict[str, Any], status: int, error_type: str) -> None:
    r = client.post("/v1/preprocess", **request_kw)
    assert r.status_code == status, (name, r.text)
    body = r.json()
    assert body["ok"] is False and body["error"]["status"] == status and body["error"]["type"] == error_type, name
    if "json" in request_kw and isinstance(request_kw["json"], dict) and "params" not in request_kw:
        assert body["request_id"] == request_kw["json"]["request_id"]


def test_routes_and_methods(client: httpx.Client) -> None:
    assert client.get("/v1/preprocess").status_code == 405
    assert client.get("/nothing").status_code == 404
    assert client.post("/healthz").status_code == 405


def test_healthz(client: httpx.Client) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] and body["media_workers_alive"] == 2 and body["gpu_workers_alive"] == 1
    # An app whose pool is not there: unhealthy, and requests are refused with Retry-After.
    r = client.get("/nopool/healthz")
    assert r.status_code == 503 and r.headers["Retry-After"] == "1" and r.json()["ok"] is False
    r = client.post("/nopool/v1/preprocess", json={"request_id": "np-1", "prompt": "hi"})
    assert r.status_code == 503 and r.headers["Retry-After"] == "1" and r.json()["request_id"] == "np-1"


def test_duplicate_id_in_flight_is_409_and_the_first_still_answers(server: tuple[str, Pool], media: str) -> None:
    url, pool = server
    line = {"request_id": "dup-1", "prompt": IMG, "images": [f"{media}/stall/tiny.jpg"]}

    async def both() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            first = asyncio.create_task(c.post("/v1/preprocess", params={"timeout_s": "2"}, json=line))
            await asyncio.sleep(0.7)
            second = await c.post("/v1/preprocess", json={**line, "images": [_data_uri(make_image(64, 48))]})
            return await first, second

    first, second = asyncio.run(both())
    assert second.status_code == 409 and second.json()["error"]["type"] == "RequestError", second.text
    assert first.status_code == 504 and first.json()["request_id"] == "dup-1", first.text  # its own deadline: one answer
    stats = _wait_idle(pool)
    assert stats["inflight"] == 0 and stats["waiters"] == 0 and stats["results_waiting"] == 0


def test_client_that_goes_away_leaves_nothing_behind(server: tuple[str, Pool], media: str) -> None:
    url, pool = server
    with httpx.Client(base_url=url, timeout=0.8) as c, pytest.raises(httpx.ReadTimeout):
        c.post("/v1/preprocess", json={"request_id": "gone-1", "prompt": IMG, "images": [f"{media}/stall/tiny.jpg"]})
    stats = _wait_idle(pool, timeout_s=10)
    assert stats["inflight"] == 0 and stats["waiters"] == 0 and stats["results_waiting"] == 0  # cancelled, not left waiting
    assert stats["counters"].get("waiter_gave_up", 0) >= 1


def test_concurrent_load_gets_exactly_one_answer_each(server: tuple[str, Pool], client: httpx.Client) -> None:
    url, pool = server
    uris = [_data_uri(make_image(48 + 8 * k, 40 + 4 * k, seed=k)) for k in range(4)]
    clients, per_client = 32, 8

    async def one_client(c: httpx.AsyncClient, k: int) -> list[tuple[str, int, str | None]]:
        out = []
        for j in range(per_client):
            rid = f"load-{k}-{j}"
            r = await c.post("/v1/preprocess", json={"request_id": rid, "prompt": f"{j}: {IMG}", "images": [uris[(k + j) % 4]]})
            out.append((rid, r.status_code, r.json().get("request_id")))
        return out

    async def load() -> list[tuple[str, int, str | None]]:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
            results = await asyncio.gather(*(one_client(c, k) for k in range(clients)))
        return [x for r in results for x in r]

    t0 = time.monotonic()
    answers = asyncio.run(load())
    wall = time.monotonic() - t0
    assert len(answers) == clients * per_client
    assert [(rid, status) for rid, status, _ in answers if status != 200] == []
    assert all(rid == got for rid, _, got in answers)
    assert len({rid for rid, _, _ in answers}) == clients * per_client
    assert client.get("/healthz").status_code == 200
    stats = _wait_idle(pool)
    assert stats["inflight"] == 0 and stats["waiters"] == 0 and stats["results_waiting"] == 0
    print(f"load: {len(answers)} requests in {wall:.1f} s ({len(answers) / wall:.1f} req/s)")


def test_saturated_pool_is_503_with_retry_after(server: tuple[str, Pool], client: httpx.Client, media: str) -> None:
    _, pool = server
    held = [pool.submit({"request_id": f"sat-{k}", "prompt": IMG, "images": [f"{media}/stall/tiny.jpg"]})
            for k in range(MAX_INFLIGHT)]
    try:
        r = client.post("/v1/preprocess", json={"request_id": "sat-http", "prompt": IMG, "images": [_data_uri(make_image(64, 48))]})
        assert r.status_code == 503, r.text
        assert r.headers["Retry-After"] == "1"
        assert r.json()["error"]["type"] == "PoolSaturatedError" and r.json()["request_id"] == "sat-http"
    finally:
        for rid in held:
            pool.cancel(rid)
        records = list(pool.results(timeout_s=30))
    assert sorted(r["request_id"] for r in records) == sorted(held)
    assert client.post("/v1/preprocess", json={"request_id": "sat-after", "prompt": "hi"}).status_code == 200


def test_coordinator_restart_mid_request_is_resubmitted_once(server: tuple[str, Pool], client: httpx.Client, media: str,
                                                              pre: Preprocessor) -> None:
    url, pool = server
    line = {"request_id": "restart-1", "prompt": IMG, "images": [f"{media}/slow/tiny.jpg"]}
    before = ray.get(pool.coordinator.incarnation_id.remote())

    async def during_restart() -> httpx.Response:
        async with httpx.AsyncClient(base_url=url, timeout=90) as c:
            answer = asyncio.create_task(c.post("/v1/preprocess", params={"timeout_s": "25"}, json=line))
            await asyncio.sleep(0.8)  # admitted, its media fetch still running (1.5 s)
            ray.kill(pool.coordinator, no_restart=False)
            return await answer

    r = asyncio.run(during_restart())
    assert r.status_code == 200, r.text
    expected = pre.run({**line, "images": [f"{media}/tiny.jpg"]}).record
    assert {k: r.json()[k] for k in COMPARED} == {k: expected[k] for k in COMPARED}
    assert ray.get(pool.coordinator.incarnation_id.remote()) != before
    end = time.monotonic() + 20
    while client.get("/healthz").status_code != 200:
        assert time.monotonic() < end, "not healthy again 20 s after the coordinator restarted"
        time.sleep(0.5)
    stats = _wait_idle(pool)
    assert stats["waiters"] == 0 and stats["inflight"] == 0


def test_serve_config_file_is_serves_own_schema() -> None:
    opts = read_serve_config(CONFIG_ROOT / "serve.yaml")
    assert opts["host"] == LOOPBACK and opts["proxy_location"] == "HeadOnly"
    assert opts["settings"].num_replicas == 2 and opts["settings"].max_body_bytes == 32 << 20


def test_cli_options_flags_over_serve_config() -> None:
    from ray_mm.cli import build_parser
    from ray_mm.cli.serve import serve_options

    args = build_parser().parse_args(["serve", "--serve-config", str(CONFIG_ROOT / "serve.yaml"), "--port", "9001", "--replicas", "3"])
    opts = serve_options(args)
    assert opts["port"] == 9001 and opts["host"] == LOOPBACK
    assert opts["settings"].num_replicas == 3 and opts["settings"].max_ongoing_requests == 256
    defaults = serve_options(build_parser().parse_args(["serve"]))
    assert (defaults["host"], defaults["port"]) == (LOOPBACK, 8000)
