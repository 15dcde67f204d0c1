"""Command-line mistakes end as one line on stderr and exit status 2, never a traceback; ``--log-level``.

Every case fails before any work starts (no model load for config mistakes, no cluster for ``run``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ray_mm import cli
from ray_mm.config import RayMMConfig, describe_validation_error


@pytest.fixture
def requests_file(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text('{"request_id": "r1", "prompt": "hello"}\n')
    return path


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], *mentions: str) -> str:
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for text in mentions:
        assert text in lines[0], lines[0]
    return lines[0]


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("command", ["align", "run"])
def test_model_directory_that_does_not_exist(
    command: str, tmp_path: Path, requests_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-model"
    line = _fails([command, "--model", str(missing), "--requests", str(requests_file), "--out", str(tmp_path / "o.jsonl")],
                  capsys, "model directory not found", str(missing))
    assert line.startswith(f"ray-mm {command}: error: ")


def test_model_directory_that_is_not_a_model(
    tmp_path: Path, requests_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    line = _fails(["align", "--model", str(empty), "--requests", str(requests_file)], capsys, "cannot load a model", str(empty))
    assert line.startswith("ray-mm align: error: ")


@pytest.mark.parametrize("command", ["align", "run"])
def test_request_file_that_cannot_be_read(
    command: str, tmp_path: Path, qwen2_vl_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for bad in (tmp_path / "missing.jsonl", tmp_path):
        line = _fails([command, "--model", str(qwen2_vl_dir), "--requests", str(bad), "--out", str(tmp_path / "o.jsonl")],
                      capsys, "cannot read request file", str(bad))
        assert line.startswith(f"ray-mm {command}: error: ")


@pytest.mark.parametrize(("yaml_text", "key", "nearest"), [
    ("media:\n  fetch_timout_s: 5\n", "media.fetch_timout_s", "media.fetch_timeout_s"),
    ("meda:\n  fetch_timeout_s: 5\n", "meda", "media"),
    ("video:\n  fsp: 1.0\n", "video.fsp", "video.fps"),
])
@pytest.mark.parametrize("command", ["align", "run"])
def test_misspelt_config_key_names_the_nearest_valid_one(
    command: str, yaml_text: str, key: str, nearest: str, tmp_path: Path, requests_file: Path,
    qwen2_vl_dir: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = _config(tmp_path, yaml_text)
    line = _fails([command, "--model", str(qwen2_vl_dir), "--requests", str(requests_file), "--config", cfg],
                  capsys, cfg, f"unknown key '{key}'", f"did you mean '{nearest}'?")
    assert line.startswith(f"ray-mm {command}: error: ")


def test_misspelt_pool_key(tmp_path: Path, requests_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path, "pool:\n  consumr: noop\n  cpu_workers: 1\n")
    line = _fails(["run", "--requests", str(requests_file), "--config", cfg], capsys,
                  "unknown key 'pool.consumr'", "did you mean 'pool.consumer'?")
    assert line.startswith("ray-mm run: error: ")


def test_misspelt_cluster_config_key(tmp_path: Path, requests_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _config(tmp_path, "cpu_nodes:\n  cuont: 2\n")
    line = _fails(["run", "--requests", str(requests_file), "--cluster-config", spec], capsys,
                  "unknown key 'cpu_nodes.cuont'", "did you mean 'cpu_nodes.count'?")
    assert line.startswith("ray-mm run: error: ")


def test_invalid_config_value_missing_file_and_bad_yaml(
    tmp_path: Path, requests_file: Path, qwen2_vl_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["align", "--model", str(qwen2_vl_dir), "--requests", str(requests_file), "--config"]
    lines = [
        _fails([*common, _config(tmp_path, "media:\n  fetch_timeout_s: -1\n")], capsys,
               "invalid value for 'media.fetch_timeout_s'", "greater than 0"),
        _fails([*common, str(tmp_path / "nope.yaml")], capsys, "cannot read config file", "nope.yaml"),
        _fails([*common, _config(tmp_path, "media: [unclosed\n")], capsys, "not valid YAML"),
        _fails([*common, _config(tmp_path, "- a list\n")], capsys, "expected a mapping"),
    ]
    assert all(line.startswith("ray-mm align: error: ") for line in lines), lines


def test_output_file_that_cannot_be_written(
    tmp_path: Path, requests_file: Path, qwen2_vl_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "missing-dir" / "o.jsonl"
    line = _fails(["align", "--model", str(qwen2_vl_dir), "--requests", str(requests_file), "--out", str(out)],
                  capsys, "cannot write output file")
    assert line.startswith("ray-mm align: error: ") and not out.exists()


def test_describe_validation_error_without_a_close_match_lists_the_valid_keys() -> None:
    with pytest.raises(Exception) as info:
        RayMMConfig.model_validate({"audio": {"zzz": 1}})
    assert describe_validation_error(info.value, RayMMConfig) == "unknown key 'audio.zzz'; valid keys here: sample_rate"


def test_log_level_is_accepted_and_sets_the_ray_mm_logger(
    tmp_path: Path, requests_file: Path, qwen2_vl_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = cli.main(["align", "--model", str(qwen2_vl_dir), "--requests", str(requests_file),
                   "--out", str(tmp_path / "o.jsonl"), "--log-level", "DEBUG"])
    assert rc == 0
    logger = logging.getLogger("ray_mm")
    assert logger.level == logging.DEBUG
    logging.getLogger("ray_mm.test").debug("a debug line")
    assert "a debug line" in capsys.readouterr().err
    assert cli.build_parser().parse_args(["run", "--log-level", "info"]).log_level == "INFO"
    assert cli.build_parser().parse_args(["run"]).log_level == "WARNING"
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(["align", "--model", "m", "--requests", "r", "--log-level", "LOUD"])
    assert info.value.code == 2
