"""A batch never aborts because of one line, on the pool: ``ray-mm run`` with a repeated id and bad
lines writes one record per line (as ``align`` does) and exits 0; ``Pool`` takes a reused id as a new
request, answers an id still in flight with a 409 record, and reports whether features could be
inlined through the coordinator."""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.local_cluster import LocalCluster
from actors.pool import Pool
from ray_mm import cli
from ray_mm.media.synth import make_image
from ray_mm.models import make_model
from ray_mm.pool.config import PoolConfig

pytestmark = pytest.mark.cluster
IMG = "<|vision_start|><|image_pad|><|vision_end|>"
URI = "data:image/jpeg;base64," + base64.b64encode(make_image(64, 48, seed=5)).decode()
# One media worker per pool: the module's cluster has two CPU-node slots, so the CLI's pool and the
# module's pool fit side by side whatever order the tests run in.
POOL = PoolConfig(cpu_workers=1, gpu_workers=1, consumer="noop", request_timeout_s=60)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("model"), "qwen2_vl")


@pytest.fixture(scope="module")
def pool(cluster: LocalCluster, model_dir: Path) -> Iterator[Pool]:
    with Pool(str(model_dir), None, POOL) as p:
        yield p


def line(rid: str, prompt: str = "look") -> dict[str, Any]:
    return {"request_id": rid, "prompt": f"{prompt} {IMG}", "images": [URI]}


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _key(rec: dict[str, Any]) -> str:
    """What run and align must agree on (run records also carry pool timings and the consumer's summary)."""
    return json.dumps({k: rec.get(k) for k in ("request_id", "ok", "error", "path", "input_ids", "items")}, sort_keys=True)


def test_run_writes_one_record_per_line_like_align_and_exits_0(
    cluster: LocalCluster, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    requests = tmp_path / "in.jsonl"
    requests.write_text("".join(x + "\n" for x in [
        json.dumps(line("r1")),
        json.dumps(line("r2", "other")),
        '{"request_id": "r3", "prompt": ',   # line 3: not JSON
        json.dumps(line("r1", "again")),     # line 4: r1 again
        "[1, 2]",                            # line 5: not an object
        json.dumps(line("r4")),
    ]))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("pool:\n  consumer: noop\n  request_timeout_s: 60\n")
    common = ["--model", str(model_dir), "--requests", str(requests), "--config", str(cfg)]
    run_out, align_out = tmp_path / "run.jsonl", tmp_path / "align.jsonl"
    rc = cli.main(["run", "--address", cluster.address, *common, "--out", str(run_out),
                   "--cpu-workers", "1", "--gpu-workers", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0, err[-3000:]
    assert "Traceback" not in err
    assert cli.main(["align", *common, "--out", str(align_out)]) == 0
    ran, aligned = _records(run_out), _records(align_out)
    assert len(ran) == 6  # every line, exactly one record
    assert Counter(r["request_id"] for r in ran) == Counter({"r1": 2, "r2": 1, "line3": 1, "line5": 1, "r4": 1})
    # The same records as align (the pool writes them as they complete, in any order).
    assert sorted(map(_key, ran)) == sorted(map(_key, aligned))
    dup = [r for r in ran if r["request_id"] == "r1" and not r["ok"]]
    assert len(dup) == 1 and dup[0]["error"]["status"] == 409 and "duplicate request_id (line 4)" in dup[0]["error"]["message"]
    assert [r["ok"] for r in ran if r["request_id"] in ("r2", "r4")] == [True, True]
    assert {r["request_id"]: r["error"]["status"] for r in ran if r["request_id"].startswith("line")} == {"line3": 400, "line5": 400}


def test_pool_takes_a_reused_id_as_a_new_request(pool: Pool) -> None:
    for attempt in range(2):
        rid = pool.submit(line("again"), "again")
        records = list(pool.results(timeout_s=60))  # before the fix, the second record was dropped: a hang
        assert [(r["request_id"], r["ok"]) for r in records] == [(rid, True)], (attempt, records)
    assert pool.pending == {}  # nothing kept per id once its record is out


def test_pool_run_answers_an_id_in_flight_with_a_409_record(pool: Pool) -> None:
    lines = [("a", line("a")), ("b", line("b")), ("a", line("a", "twice")), ("c", line("c"))]
    records = list(pool.run(lines))  # before the fix: RequestError raised, no record for anyone
    assert Counter(r["request_id"] for r in records) == Counter({"a": 2, "b": 1, "c": 1})
    refused = [r for r in records if not r["ok"]]
    assert len(refused) == 1 and refused[0]["error"]["type"] == "RequestError" and refused[0]["error"]["status"] == 409
    assert "already in the pool" in refused[0]["error"]["message"]
    assert pool.stats()["refused"] == 1
