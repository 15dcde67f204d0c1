"""The bad-input corpus (tests/bad_input_corpus.py) end to end: every case gets its documented error.

Two views of the same corpus:
- in process, one test per case through ``Preprocessor.run`` (clear failure messages);
- through the CLI as a subprocess: ``ray-mm align`` under the test network shim for the
  whole corpus (exit 0 without --strict), and the real ``ray-mm`` console script with
  --strict on the cases that need no shim (exit 1).
Loopback only: the HTTP server listens on 127.0.0.1; names resolve through the shim.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

from ray_mm.config import RayMMConfig
from ray_mm.pipeline import Preprocessor, RequestOutcome
from ray_mm.request.jsonl import read_requests
from tests.bad_input_corpus import (
    AUDIO,
    VL,
    Case,
    Corpus,
    CorpusServer,
    build_corpus,
    check_record,
    net_shim,
    serve_corpus_media,
    write_requests,
)

REPO = Path(__file__).resolve().parents[2]
RAY_MM = Path(sys.executable).with_name("ray-mm")


@cache
def _case_names() -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        return [c.name for c in build_corpus(tmp, "http://127.0.0.1:9").cases]


class Env:
    def __init__(self, tmp: Path, server: CorpusServer, corpus: Corpus, models: dict[str, Path]) -> None:
        self.tmp, self.server, self.corpus, self.models = tmp, server, corpus, models
        config = RayMMConfig.model_validate(corpus.config_dict())
        self.pre = {family: Preprocessor(path, config) for family, path in models.items()}
        self.by_name = {c.name: c for c in corpus.cases}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, qwen2_vl_dir: Path, qwen2_audio_dir: Path) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("bad_input_corpus")
    with serve_corpus_media(tmp) as server:
        corpus = build_corpus(tmp, server.base_url)
        yield Env(tmp, server, corpus, {VL: qwen2_vl_dir, AUDIO: qwen2_audio_dir})


def _run_in_process(env: Env, case: Case, fallback: str) -> RequestOutcome:
    if isinstance(case.line, str):  # a raw line: parse it exactly as the CLI does
        path = env.tmp / f"{case.name}.jsonl"
        path.write_text(case.line + "\n")
        ((_, line),) = list(read_requests(path))
        if isinstance(line, Exception):
            return RequestOutcome.failure(fallback, line)  # type: ignore[arg-type]
    else:
        line = case.line
    return env.pre[case.model].run(line, fallback)


def _check_hits(server: CorpusServer, cases: list[Case]) -> list[str]:
    return [
        f"{c.name}: {prefix} was requested {server.hits(prefix)} times, expected {n}"
        for c in cases for prefix, n in c.expect_hits if server.hits(prefix) != n
    ]  # fmt: skip


# --------------------------------------------------------------------------- corpus shape


def test_corpus_shape(env: Env) -> None:
    cases = env.corpus.cases
    bad = [c for c in cases if not c.ok]
    assert len(bad) >= 35 and len(cases) - len(bad) >= 8
    assert all(c.status in (400, 403, 413, 422, 504) for c in bad), "no case may expect a 500"
    assert all((c.error_type is None) == (c.status is None) for c in cases)
    # Good requests are interleaved with bad ones, not bunched at one end.
    first_good = [k for k, c in enumerate(cases) if c.ok]
    assert first_good[0] == 0 and first_good[-1] == len(cases) - 1 and len(first_good) > 5
    triples = env.corpus.triples()
    assert len(triples) == len(cases) and all(len(t) == 3 for t in triples)
    assert {c.error_type for c in bad} >= {
        "RequestError", "MediaFetchError", "MediaDecodeError", "MediaPolicyError",
        "MediaLimitError", "AlignmentError",
    }  # fmt: skip
    json.dumps([c.line for c in cases])  # every line is plain JSON (ready for the pool too)


# --------------------------------------------------------------------------- in process


@pytest.mark.parametrize("name", _case_names())
def test_case_in_process(env: Env, name: str) -> None:
    case = env.by_name[name]
    with net_shim(env.corpus.fake_dns, env.corpus.public_standins):
        before = {p: env.server.hits(p) for p, _ in case.expect_hits}
        outcome = _run_in_process(env, case, "line1")
        seen = {p: env.server.hits(p) - before[p] for p, _ in case.expect_hits}
    problems = check_record(case, outcome.record, "line1")
    problems += [f"{p} requested {seen[p]} times, expected {n}" for p, n in case.expect_hits if seen[p] != n]
    assert not problems, f"{name} ({case.note or 'no note'}): {problems}; record={json.dumps(outcome.record)[:600]}"


# --------------------------------------------------------------------------- through the CLI


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _check_records(cases: list[Case], records: list[dict]) -> list[str]:
    assert len(records) == len(cases), f"{len(records)} records for {len(cases)} request lines"
    problems = []
    for k, (case, rec) in enumerate(zip(cases, records)):
        problems += [f"{case.name}: {p}" for p in check_record(case, rec, f"line{k + 1}")]
    return problems


def test_cli_align_whole_corpus_under_shim(env: Env) -> None:
    """Both models in one subprocess (``--then``): exit 0 without --strict, every record as expected."""
    config = env.corpus.write_config(env.tmp / "config.yaml")
    runs = {}
    for family in (VL, AUDIO):
        cases = env.corpus.select(family)
        runs[family] = (cases, write_requests(env.tmp / f"cli_{family}.jsonl", cases), env.tmp / f"cli_{family}.out.jsonl")
    argv: list[str] = []
    for family, (_, requests, out) in runs.items():
        argv += ["--then"] if argv else []
        argv += ["align", "--model", str(env.models[family]), "--requests", str(requests), "--out", str(out), "--config", str(config)]
    env.server.reset()
    proc = subprocess.run(
        [sys.executable, "-m", "tests.bad_input_corpus", *argv], cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, **env.corpus.shim_env(), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    problems = []
    for cases, _, out in runs.values():
        problems += _check_records(cases, _records(out))
    problems += _check_hits(env.server, env.corpus.cases)
    assert not problems, "\n".join(problems)
    assert "requests ok" in proc.stderr  # the summary table went to stderr


def test_cli_real_console_script_strict(env: Env) -> None:
    """The installed ``ray-mm`` with --strict, no shim: the cases that need none; exit 1, same records."""
    if not RAY_MM.exists():
        pytest.skip(f"no console script at {RAY_MM}")
    config = env.corpus.write_config(env.tmp / "config.yaml")
    cases = env.corpus.select(VL, net_shim=False)
    assert any(not c.ok for c in cases) and any(c.ok for c in cases)
    requests = write_requests(env.tmp / "strict.jsonl", cases)
    out = env.tmp / "strict.out.jsonl"
    env.server.reset()
    proc = subprocess.run(
        [str(RAY_MM), "align", "--model", str(env.models[VL]), "--requests", str(requests), "--out", str(out),
         "--config", str(config), "--strict"],
        cwd=env.tmp, capture_output=True, text=True, timeout=300,
        env={**{k: v for k, v in os.environ.items() if k != "RAY_MM_TEST_NET_SHIM"}, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    problems = _check_records(cases, _records(out)) + _check_hits(env.server, cases)
    assert not problems, "\n".join(problems)
