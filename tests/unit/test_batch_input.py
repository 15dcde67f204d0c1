"""A batch never aborts because of one line: request-file reading, duplicate ids (``ray_mm.request.jsonl.dedupe``)
and ``ray-mm align`` on a file with a repeated id, bad JSON and lines that are not objects."""

from __future__ import annotations

import base64
import json
from collections import Counter
from pathlib import Path

import pytest

from ray_mm import cli
from ray_mm.errors import RequestError
from ray_mm.media.synth import make_image
from ray_mm.request.jsonl import dedupe, read_requests

IMG = "<|vision_start|><|image_pad|><|vision_end|>"
URI = "data:image/jpeg;base64," + base64.b64encode(make_image(64, 48, seed=4)).decode()


def test_dedupe_turns_a_repeated_id_into_its_own_409_error() -> None:
    lines = [("line1", {"request_id": "a"}), ("line2", {"request_id": "b"}), ("line4", {"request_id": "a", "x": 1}),
             ("line5", {"request_id": "a"})]
    out = list(dedupe(lines))
    assert out[:2] == lines[:2]
    for (rid, err), line in zip(out[2:], ("line 4", "line 5")):
        assert rid == "a"
        assert isinstance(err, RequestError) and err.status == 409
        assert err.message == f"request a: duplicate request_id ({line}); the first line with this id (line 1) is processed"


def test_dedupe_keys_error_lines_and_lines_without_an_id_by_their_fallback() -> None:
    bad = RequestError("request line2: not valid JSON")
    lines = [("line1", {"prompt": "no id"}), ("line2", bad), ("line3", [1, 2]), ("line4", {"request_id": "line9"}),
             ("line9", {"prompt": "no id"})]
    out = list(dedupe(lines))
    assert out[:4] == lines[:4]
    rid, err = out[4]  # line 9's fallback id was taken by line 4's request_id
    assert rid == "line9" and isinstance(err, RequestError) and err.status == 409


def test_dedupe_names_positions_for_lines_not_read_from_a_file() -> None:
    (_, _), (rid, err) = dedupe([("r1", {"request_id": "r1"}), ("r1", {"request_id": "r1"})])
    assert rid == "r1" and "(entry 2)" in err.message and "(entry 1)" in err.message


def test_read_requests_opens_the_file_at_the_call(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_requests(tmp_path / "missing.jsonl")  # not only when iterated: the CLI reports it before any work
    with pytest.raises(IsADirectoryError):
        read_requests(tmp_path)


def test_read_requests_gives_each_bad_line_its_error_and_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"request_id": "bom"}\n{"request_id": \n\n[1, 2]\n"str"\n\xff\xfe\n{"request_id": "last"}\n')
    lines = list(read_requests(path))
    assert [f for f, _ in lines] == ["line1", "line2", "line4", "line5", "line6", "line7"]
    assert lines[0][1] == {"request_id": "bom"}
    assert isinstance(lines[1][1], RequestError) and "not valid JSON" in lines[1][1].message
    assert lines[2][1] == [1, 2] and lines[3][1] == "str"
    assert isinstance(lines[4][1], RequestError) and "not valid UTF-8" in lines[4][1].message
    assert lines[5][1] == {"request_id": "last"}


def _write(path: Path, lines: list[object]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_align_writes_one_record_per_line_with_a_repeated_id_and_bad_lines(
    tmp_path: Path, qwen2_vl_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = {"request_id": "r1", "prompt": f"see {IMG}", "images": [URI]}
    requests = _write(tmp_path / "in.jsonl", [
        good,                                          # line 1
        {"request_id": "r2", "prompt": "text only"},   # line 2
        '{"request_id": "r3", "prompt": ',             # line 3: not JSON
        "[1, 2]",                                      # line 4: not an object
        '"str"',                                       # line 5
        "3",                                           # line 6
        {**good, "prompt": f"again {IMG}"},            # line 7: r1 again
        "null",                                        # line 8
        {"request_id": "r2", "prompt": "and again"},   # line 9: r2 again
    ])
    out = tmp_path / "out.jsonl"
    rc = cli.main(["align", "--model", str(qwen2_vl_dir), "--requests", str(requests), "--out", str(out)])
    assert rc == 0
    assert "Traceback" not in capsys.readouterr().err
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(records) == 9  # every line, exactly one record
    assert Counter(r["request_id"] for r in records) == Counter(
        {"r1": 2, "r2": 2, "line3": 1, "line4": 1, "line5": 1, "line6": 1, "line8": 1})
    by_line = dict(zip(range(1, 10), records))  # align writes in input order
    assert by_line[1]["ok"] and by_line[2]["ok"]
    assert by_line[1]["input_ids"] != [] and by_line[1]["items"][0]["modality"] == "image"
    for n, rid, first in ((7, "r1", 1), (9, "r2", 2)):
        assert by_line[n]["request_id"] == rid and by_line[n]["ok"] is False
        assert by_line[n]["error"] == {
            "type": "RequestError", "status": 409,
            "message": f"request {rid}: duplicate request_id (line {n}); the first line with this id (line {first}) is processed"}
    assert by_line[3]["error"]["status"] == 400 and "not valid JSON" in by_line[3]["error"]["message"]
    for n in (4, 5, 6, 8):
        assert by_line[n]["error"]["type"] == "RequestError" and by_line[n]["error"]["status"] == 400
        assert "JSON object" in by_line[n]["error"]["message"]
