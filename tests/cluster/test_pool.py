"""The pool on a simulated 3-node cluster: placement, parity with the in-process pipeline,
zero-copy features, placeholder counts, admission and ready-queue bounds."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray

from actors.local_cluster import LOOPBACK, LocalCluster
from actors.pool import Pool
from ray_mm.cli.demo import serve_directory
from ray_mm.config import MediaPolicy, RayMMConfig
from ray_mm.errors import PoolSaturatedError
from ray_mm.media.synth import make_image, make_video
from ray_mm.models import load_adapter, make_model
from ray_mm.pipeline import Preprocessor
from ray_mm.pool.config import PoolConfig

IMG = "<|vision_start|><|image_pad|><|vision_end|>"
VID = "<|vision_start|><|video_pad|><|vision_end|>"
COMPARED = ("ok", "path", "input_ids", "items")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("model"), "qwen2_vl")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    d = tmp_path_factory.mktemp("media")
    (d / "big.jpg").write_bytes(make_image(1920, 1080, seed=1))
    (d / "small.jpg").write_bytes(make_image(640, 480, seed=2))
    (d / "shape.png").write_bytes(make_image(333, 517, "PNG", seed=3))
    (d / "clip.mp4").write_bytes(make_video(160, 120, fps=10, seconds=2.0))
    with serve_directory(d) as base:
        yield d, base


@pytest.fixture(scope="module")
def config() -> RayMMConfig:
    # Media are served on 127.0.0.1, which the SSRF guard refuses unless told otherwise.
    return RayMMConfig(media=MediaPolicy(allow_private_addresses=True))


def workload(model_dir: Path, media: Path, base: str) -> list[dict[str, Any]]:
    adapter = load_adapter(model_dir)
    data_uri = "data:image/jpeg;base64," + base64.b64encode((media / "small.jpg").read_bytes()).decode()
    lines: list[dict[str, Any]] = []
    for k in range(10):
        lines.append({"request_id": f"img-{k}", "prompt": f"{k}: {IMG} and {IMG}",
                      "images": [f"{base}/big.jpg", f"{base}/shape.png" if k % 2 else data_uri]})
    lines.append({"request_id": "mixed", "prompt": f"{IMG} then {VID} then {IMG}",
                  "images": [f"{base}/small.jpg", f"{base}/shape.png"], "videos": [f"{base}/clip.mp4"]})
    lines.append({"request_id": "chat", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_uri}}, {"type": "text", "text": "what?"}]}]})
    lines.append({"request_id": "ids", "input_ids": adapter.tokenize(f"look {IMG} here"), "skip_tokenizer_init": True,
                  "images": [f"{base}/small.jpg"]})
    lines.append({"request_id": "bad", "prompt": f"{IMG}", "images": [f"{base}/missing.jpg"]})
    return lines


def test_every_node_is_on_loopback(cluster: LocalCluster) -> None:
    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len(nodes) == 4
    assert {n["NodeManagerAddress"] for n in nodes} == {LOOPBACK}


def test_pool_matches_in_process_pipeline_and_places_work(
    cluster: LocalCluster, model_dir: Path, served: tuple[Path, str], config: RayMMConfig
) -> None:
    media, base = served
    lines = workload(model_dir, media, base)
    pre = Preprocessor(model_dir, config)
    expected = {line["request_id"]: pre.run(line).record for line in lines}
    with Pool(str(model_dir), config, PoolConfig(cpu_workers=2, gpu_workers=1)) as pool:
        records = list(pool.run([(line["request_id"], line) for line in lines]))
        stats = pool.stats()

    got = {r["request_id"]: r for r in records}
    assert sorted(got) == sorted(expected) and len(records) == len(lines)
    for rid, exp in expected.items():
        if exp["ok"]:
            assert {k: got[rid][k] for k in COMPARED} == {k: exp[k] for k in COMPARED}, rid
        else:
            assert got[rid]["error"]["type"] == exp["error"]["type"] == "MediaFetchError"
    assert got["ids"]["path"] == "legacy" and got["img-0"]["path"] == "fast"

    # Placement: media work on both CPU nodes only; GPU workers only on the GPU node.
    cpu_ids = {n.node_id for n in cluster.cpu_nodes}
    gpu_ids = {n.node_id for n in cluster.gpu_nodes}
    assert set(stats["items_per_node"]) == cpu_ids
    assert {w["node_id"] for w in stats["media_workers"]} == cpu_ids
    assert {w["node_id"] for w in stats["gpu_workers"]} <= gpu_ids

    # The GPU side: read-only object-store views, and one embedding per placeholder token.
    media_tokens = set(load_adapter(model_dir).placeholder_token_ids.values())
    for rec in records:
        if rec["ok"]:
            consumer = rec["consumer"]
            assert consumer["node_id"] in gpu_ids
            assert consumer["zero_copy"] is True
            assert consumer["embeddings"] == sum(1 for t in rec["input_ids"] if t in media_tokens) > 0
    assert sum(w["arrays_checked"] for w in stats["gpu_workers"]) > 0
    assert sum(w["writable_copies"] for w in stats["gpu_workers"]) == 0


def test_coordinator_never_holds_feature_bytes(
    cluster: LocalCluster, model_dir: Path, served: tuple[Path, str], config: RayMMConfig
) -> None:
    media, base = served
    # A slow consumer keeps requests queued and leased, so their features can be located.
    cfg = PoolConfig(cpu_workers=2, gpu_workers=1, consumer="noop", consumer_delay_s=2.0, pull_batch_size=1)
    with Pool(str(model_dir), config, cfg) as pool:
        for k in range(4):
            pool.submit({"request_id": f"r{k}", "prompt": IMG, "images": [f"{base}/big.jpg"]})
        deadline = time.monotonic() + 60
        locations: list[dict[str, Any]] = []
        while time.monotonic() < deadline and len(locations) < 3:
            time.sleep(0.5)
            locations = ray.get(pool.coordinator.feature_locations.remote())
        head = ray.get(pool.coordinator.node_id.remote())
        list(pool.results(timeout_s=120))
    assert len(locations) >= 3
    cpu_ids = {n.node_id for n in cluster.cpu_nodes}
    for loc in locations:
        assert loc["object_size"] > 500_000  # a 1080p image's features (593 KB of uint8 pixels), big enough to show a copy
        assert head not in loc["node_ids"], "a feature was copied to the coordinator's node"
        assert set(loc["node_ids"]) & cpu_ids


def test_admission_limit_and_bounded_ready_queue(
    cluster: LocalCluster, model_dir: Path, served: tuple[Path, str], config: RayMMConfig
) -> None:
    media, base = served
    cfg = PoolConfig(cpu_workers=2, gpu_workers=1, consumer="noop", consumer_delay_s=0.5, pull_batch_size=1,
                     max_inflight_requests=6, ready_queue_size=2, freeze_gc_after_start=False)
    with Pool(str(model_dir), config, cfg) as pool:
        for k in range(6):
            pool.submit({"request_id": f"a{k}", "prompt": IMG, "images": [f"{base}/small.jpg"]})
        with pytest.raises(PoolSaturatedError) as err:
            pool.submit({"request_id": "a6", "prompt": IMG, "images": [f"{base}/small.jpg"]})
        assert err.value.status == 503
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and ray.get(pool.coordinator.stats.remote())["ready"] < 2:
            time.sleep(0.2)
        time.sleep(1.0)
        stats = ray.get(pool.coordinator.stats.remote())
        records = list(pool.results(timeout_s=120))
        workers = pool.stats()["media_workers"]
    assert stats["ready"] == 2 and stats["max_ready_seen"] == 2
    assert [w["gc_frozen_objects"] for w in workers] == [0, 0]  # freeze_gc_after_start=False
    assert len(records) == 6 and all(r["ok"] for r in records)


def test_features_reach_the_gpu_worker_unchanged(
    cluster: LocalCluster, model_dir: Path, served: tuple[Path, str], config: RayMMConfig
) -> None:
    """Byte for byte, per item and in prompt order, what the in-process pipeline produces: media
    workers build each call's features in one reused buffer and batch a request's items per worker,
    so a buffer reused too early or an item routed to the wrong place shows up here."""
    from actors.gpu_worker import feature_digest

    media, base = served
    kinds = [f"{base}/big.jpg", f"{base}/shape.png", f"{base}/small.jpg"]
    lines = []
    for k in range(12):
        images = [f"{kinds[(k + j) % 3]}?r={k}-{j}" for j in range(2 + k % 2)]
        lines.append({"request_id": f"d{k}", "prompt": " ".join([IMG] * len(images)) + (f" {VID}" if k % 4 == 0 else ""),
                      "images": images, **({"videos": [f"{base}/clip.mp4"]} if k % 4 == 0 else {})})
    pre = Preprocessor(model_dir, config)
    expected = {}
    for line in lines:
        prepared = pre.prepare(line)
        processed = [pre.process_item(spec) for spec in prepared.request.items()]
        alignment = pre.align_request(prepared, [[p.meta for p in group] for group in processed])
        by_meta = {id(p.meta): p for group in processed for p in group}
        expected[line["request_id"]] = [feature_digest(by_meta[id(item.meta)].features) for item in alignment.items]
    cfg = PoolConfig(cpu_workers=2, gpu_workers=1, consumer="digest", max_inflight_per_worker=2)
    with Pool(str(model_dir), config, cfg) as pool:
        records = list(pool.run([(line["request_id"], line) for line in lines]))
        workers = pool.stats()["media_workers"]
    assert len(records) == len(lines) and all(r["ok"] for r in records), [r.get("error") for r in records]
    for rec in records:
        assert rec["consumer"]["feature_digests"] == expected[rec["request_id"]], rec["request_id"]
    assert all(w["output_arena_allocations"] is not None for w in workers)  # the reused buffer was on
    assert all(w["gc_frozen_objects"] > 0 for w in workers)  # freeze_gc_after_start, on by default



def _all_free(totals: dict[str, float], timeout_s: float = 30) -> bool:
    """Whether every resource in ``totals`` is wholly available again within ``timeout_s``
    (actors release theirs asynchronously after a kill)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        free = ray.available_resources()
        if all(free.get(k, 0) >= v for k, v in totals.items()):
            return True
        time.sleep(0.2)
    return False


def test_minimum_pool_wait_names_the_missing_resource_and_leaves_nothing_behind(
    cluster: LocalCluster, model_dir: Path, config: RayMMConfig
) -> None:
    """Three media workers on a cluster with two ``mm_cpu`` slots: the bounded wait ends with an
    error that names the resource and both counts, and the actors it had started are gone."""
    totals = {"mm_cpu": 2, "mm_gpu": 4}
    assert _all_free(totals)  # the module's earlier pools have released theirs
    cfg = PoolConfig(cpu_workers=3, gpu_workers=1, consumer="noop", min_pool_wait_s=3)
    with pytest.raises(TimeoutError) as err:
        Pool(str(model_dir), config, cfg)
    assert "media workers not placed within 3 s" in str(err.value)
    assert "mm_cpu: need 3, cluster has 2" in str(err.value)
    assert _all_free(totals), ray.available_resources()
    cfg = PoolConfig(cpu_workers=2, gpu_workers=1, consumer="noop", min_pool_wait_s=3,
                     coordinator_resources={"mm_no_such_node": 1})
    with pytest.raises(TimeoutError) as err:
        Pool(str(model_dir), config, cfg)
    assert "coordinator not placed within 3 s (mm_no_such_node: need 1, cluster has 0)" in str(err.value)
    assert _all_free(totals), ray.available_resources()


@pytest.mark.parametrize("family", ["qwen3_vl", "minicpmv4_6"])
def test_structured_families_pool_equals_align_and_encoders_fill_every_token(
    cluster: LocalCluster, family: str, served: tuple[Path, str], config: RayMMConfig,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Qwen3-VL (timestamped video groups) and MiniCPM-V (sliced images, image ids, per-frame video
    blocks) through the pool give the in-process records, and the default consumer (the family's
    vision tower) yields one embedding per feature token."""
    media, base = served
    model = make_model(tmp_path_factory.mktemp(family), family)
    adapter = load_adapter(model)
    img, vid = adapter.placeholder_texts["image"], adapter.placeholder_texts["video"]
    lines = [
        {"request_id": "sliced", "prompt": f"A {img}\n{img} B", "images": [f"{base}/big.jpg", f"{base}/shape.png"]},
        {"request_id": "mixed", "prompt": f"{img} then {vid} then {img}", "images": [f"{base}/small.jpg", f"{base}/big.jpg"],
         "videos": [{"url": f"{base}/clip.mp4", "nframes": 4}]},
    ]
    pre = Preprocessor(model, config)
    expected = {line["request_id"]: pre.run(line).record for line in lines}
    assert all(r["ok"] for r in expected.values()), expected
    with Pool(str(model), config, PoolConfig(cpu_workers=2, gpu_workers=1)) as pool:
        got = {r["request_id"]: r for r in pool.run([(line["request_id"], line) for line in lines])}
    feature_ids = set(adapter.feature_token_ids.values())
    for rid, exp in expected.items():
        assert {k: got[rid][k] for k in COMPARED} == {k: exp[k] for k in COMPARED}, rid
        if rid == "mixed":  # the video (and MiniCPM-V's large image) expand into structures, not one run
            assert any(len(item["offsets"]) > 1 for item in got[rid]["items"])
        consumer = got[rid]["consumer"]
        assert "error" not in consumer, consumer
        assert consumer["embeddings"] == sum(1 for t in got[rid]["input_ids"] if t in feature_ids)


@pytest.mark.parametrize("form", ["sglang", "vllm"])
def test_engine_consumers_hand_off_in_the_engines_form(
    cluster: LocalCluster, model_dir: Path, served: tuple[Path, str], config: RayMMConfig, form: str
) -> None:
    """The GPU worker's built-in engine consumers: the user's function gets each request in the
    engine's form (``ray_mm.handoff``), with the M-RoPE positions; the SGLang form equals the one built
    in process from the same request's features; vLLM's carries the encoder's embeddings."""
    from ray_mm import handoff
    from tests.cluster.handoff_sink import SINK, Sink

    media, base = served
    sink = Sink.options(name=SINK).remote()
    line = {"request_id": f"handoff-{form}", "prompt": f"{IMG} then {VID}", "images": [f"{base}/shape.png"],
            "videos": [f"{base}/clip.mp4"]}
    outcome = Preprocessor(model_dir, config).run(line)
    try:
        cfg = PoolConfig(cpu_workers=1, gpu_workers=1, consumer=f"{form}:tests.cluster.handoff_sink:keep")
        with Pool(str(model_dir), config, cfg) as pool:
            (rec,) = list(pool.run([(line["request_id"], line)]))
        (payload,) = ray.get(sink.take.remote())
    finally:
        ray.kill(sink)
    assert rec["ok"], rec
    assert rec["consumer"]["engine"] == {"form": form, "answer": {"seen": 2}}
    extras = payload["ray_mm"]
    assert extras["request_id"] == line["request_id"] and extras["mrope_positions"].shape == (3, len(rec["input_ids"]))
    if form == "sglang":
        expected = handoff.to_sglang(outcome.record, outcome.item_features)
        assert payload["input_ids"] == expected["input_ids"] == rec["input_ids"]
        for key in ("image_data", "video_data"):
            (ours,), (theirs,) = payload[key], expected[key]
            assert set(ours) == set(theirs)
            for name, value in theirs.items():
                if isinstance(value, np.ndarray):
                    np.testing.assert_array_equal(ours[name], value, err_msg=name)
                else:
                    assert ours[name] == value, name
    else:
        adapter = load_adapter(model_dir)
        assert payload["prompt_token_ids"] == adapter.tokenize(line["prompt"])
        assert payload["multi_modal_uuids"] == {"image": [rec["items"][0]["hash"]], "video": [rec["items"][1]["hash"]]}
        image = payload["multi_modal_data"]["image"]
        assert image["image_embeds"].shape[0] == rec["items"][0]["num_tokens"]
        assert image["image_grid_thw"].tolist() == [rec["items"][0]["grid_thw"]]


def test_cancel_and_duplicate_ids_reach_the_owning_shard(
    cluster: LocalCluster, model_dir: Path, served: tuple[Path, str], config: RayMMConfig
) -> None:
    """With two coordinator shards, ``cancel`` and the 409 for an id in flight go to the shard that
    holds the request: each shard's requests are cancelled and refused there, the others finish."""
    from ray_mm.errors import RequestError
    from ray_mm.pool.shards import shard_of

    media, base = served
    ids = [f"s{k}" for k in range(40)]
    by_shard = {s: [i for i in ids if shard_of(i, 2) == s][:2] for s in (0, 1)}
    assert all(len(v) == 2 for v in by_shard.values())
    cfg = PoolConfig(cpu_workers=2, gpu_workers=1, coordinators=2, consumer="noop", consumer_delay_s=1.0, pull_batch_size=1)
    with Pool(str(model_dir), config, cfg) as pool:
        for rid in [*by_shard[0], *by_shard[1]]:
            pool.submit({"request_id": rid, "prompt": IMG, "images": [f"{base}/small.jpg?{rid}"]})
        for s in (0, 1):
            with pytest.raises(RequestError) as err:
                pool.submit({"request_id": by_shard[s][0], "prompt": IMG, "images": [f"{base}/small.jpg"]})
            assert err.value.status == 409
            assert pool.cancel(by_shard[s][1]) is True
        records = {r["request_id"]: r for r in pool.results(timeout_s=120)}
        per_shard = [ray.get(c.stats.remote())["counters"] for c in pool.coordinators]
    assert sorted(records) == sorted([*by_shard[0], *by_shard[1]])
    for s in (0, 1):
        assert records[by_shard[s][0]]["ok"], records[by_shard[s][0]]
        assert records[by_shard[s][1]]["error"]["status"] == 499
        assert per_shard[s].get("cancelled") == 1
