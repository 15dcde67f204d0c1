"""The HTTP contract of ray-mm serve without Ray (ray_mm.serve.http_api): query and body parsing, request ids,
size caps, statuses, and the inline features npz."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ray_mm.errors import InternalError, MediaPolicyError, PoolSaturatedError, RequestError
from ray_mm.serve import http_api


def test_parse_query_defaults_and_values() -> None:
    assert http_api.parse_query({}) == http_api.PreprocessQuery()
    q = http_api.parse_query({"format": "sglang", "include_features": "true", "timeout_s": "2.5"})
    assert (q.format, q.include_features, q.timeout_s) == ("sglang", True, 2.5)
    assert q.needs_features
    assert not http_api.parse_query({"format": "vllm"}).needs_features  # vLLM's payload carries no processor arrays
    assert http_api.parse_query({"include_features": "0"}).include_features is False


@pytest.mark.parametrize("params", [{"format": "tgi"}, {"include_features": "maybe"}, {"timeout_s": "-1"},
                                    {"timeout_s": "nan"}, {"timeout_s": "inf"}, {"timeout_s": "soon"}, {"fromat": "vllm"}])
def test_parse_query_refuses_bad_values(params: dict[str, str]) -> None:
    with pytest.raises(RequestError) as err:
        http_api.parse_query(params)
    assert err.value.status == 400


def test_timeout_is_capped_by_the_server() -> None:
    assert http_api.effective_timeout(http_api.PreprocessQuery(timeout_s=500.0), 120.0) == 120.0
    assert http_api.effective_timeout(http_api.PreprocessQuery(timeout_s=0.5), 120.0) == 0.5
    assert http_api.effective_timeout(http_api.PreprocessQuery(), 120.0) == 120.0


def test_content_length_over_the_cap_is_413() -> None:
    http_api.check_content_length(None, 10)
    http_api.check_content_length("10", 10)
    with pytest.raises(RequestError) as err:
        http_api.check_content_length("11", 10)
    assert err.value.status == 413
    with pytest.raises(RequestError) as err:
        http_api.check_content_length("ten", 10)
    assert err.value.status == 400


def test_request_line_ids_body_header_generated() -> None:
    body = json.dumps({"request_id": "b1", "prompt": "hi"}).encode()
    assert http_api.request_line(body, "h1") == ({"request_id": "b1", "prompt": "hi"}, "b1")
    line, rid = http_api.request_line(b'{"prompt": "hi"}', "h1")
    assert rid == "h1" and line == {"request_id": "h1", "prompt": "hi"}
    line, rid = http_api.request_line(b'{"prompt": "hi"}', None, make_id=lambda: "gen-1")
    assert rid == "gen-1" and line["request_id"] == "gen-1"
    with pytest.raises(RequestError):
        http_api.request_line(b'{"prompt": "hi"}', "bad id with spaces")
    assert http_api.request_line(body, "bad id with spaces")[1] == "b1"  # not used, so not refused


def test_openai_chat_body_keeps_only_messages() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    body = json.dumps({"model": "qwen", "messages": messages, "max_tokens": 8, "stream": False, "temperature": 0}).encode()
    line, rid = http_api.request_line(body, "h2")
    assert line == {"request_id": "h2", "messages": messages} and rid == "h2"
    line, _ = http_api.request_line(json.dumps({"model": "qwen", "messages": messages, "request_id": "b2"}).encode())
    assert line["request_id"] == "b2"
    # A ray-mm messages request (no "model") is passed on whole: its unknown keys stay errors for the parser.
    line, _ = http_api.request_line(json.dumps({"request_id": "r", "messages": messages, "images": ["x"]}).encode())
    assert line["images"] == ["x"]


@pytest.mark.parametrize("body", [b"{bad", b"\xff\xfe", b"[1, 2]", b'"text"', b""])
def test_request_line_refuses_non_objects(body: bytes) -> None:
    with pytest.raises(RequestError) as err:
        http_api.request_line(body, "h")
    assert err.value.status == 400


def test_statuses() -> None:
    ok = {"request_id": "r", "ok": True, "input_ids": [1]}
    assert http_api.answer(ok) == (200, ok)

    def failed(exc: Exception) -> dict:
        return http_api.error_record("r", exc)

    assert http_api.http_status(failed(RequestError("x"))) == 400
    assert http_api.http_status(failed(MediaPolicyError("x"))) == 403
    assert http_api.http_status(failed(RequestError("dup", status=409))) == 409
    assert http_api.http_status(failed(PoolSaturatedError("x"))) == 503
    assert http_api.http_status(failed(InternalError("x"))) == 500
    cancelled = {"request_id": "r", "ok": False, "error": {"type": "Cancelled", "message": "c", "status": 499}}
    status, body = http_api.answer(cancelled)
    assert status == 503 and body["error"]["status"] == 503 and body["error"]["type"] == "Cancelled"
    weird = {"request_id": "r", "ok": False, "error": {"type": "X", "message": "m", "status": 418}}
    assert http_api.answer(weird)[0] == 500
    assert http_api.answer({"request_id": "r", "ok": False})[0] == 500


def _item(shape: list[int], modality: str = "image") -> dict:
    return {"modality": modality, "index": 0, "feature_shape": shape}


def test_features_npz_keys_like_dump_features() -> None:
    a = {"pixel_values": np.arange(12, dtype=np.float32).reshape(3, 4), "image_grid_thw": np.array([[1, 1, 3]])}
    b = {"input_features": np.ones((2, 5), np.float32), "feature_attention_mask": np.ones((2,), np.int32)}
    npz = http_api.features_npz([_item([3, 4]), _item([2, 5], "audio")], [a, b], cap=1 << 20)
    arrays = http_api.decode_features(http_api.encode_features(npz))
    assert sorted(arrays) == ["item0", "item0.image_grid_thw", "item0.pixel_values",
                              "item1", "item1.feature_attention_mask", "item1.input_features"]
    np.testing.assert_array_equal(arrays["item0"], a["pixel_values"])
    np.testing.assert_array_equal(arrays["item1"], b["input_features"])
    np.testing.assert_array_equal(arrays["item0.image_grid_thw"], a["image_grid_thw"])


def test_primary_by_shape_when_the_usual_name_is_absent() -> None:
    arrays = {"grid": np.zeros((1, 3)), "patches": np.zeros((7, 2))}
    assert http_api.primary_name(_item([7, 2]), arrays) == "patches"
    with pytest.raises(InternalError):
        http_api.primary_name(_item([9, 9]), arrays)


def test_features_over_the_cap_are_413() -> None:
    a = {"pixel_values": np.zeros((100, 100), np.float32)}
    with pytest.raises(RequestError) as err:
        http_api.features_npz([_item([100, 100])], [a], cap=1000)
    assert err.value.status == 413
    # The main array is in twice (item0 and item0.pixel_values), as dump_features writes it.
    assert len(http_api.features_npz([_item([100, 100])], [a], cap=100_000)) > 80_000


def test_settings_forbid_unknown_keys() -> None:
    with pytest.raises(ValueError):
        http_api.ServeSettings.model_validate({"max_body_byte": 1})
    assert http_api.ServeSettings().max_body_bytes == 32 << 20


def test_http_api_does_not_import_ray() -> None:
    import subprocess
    import sys

    code = ("import sys, ray_mm.serve.http_api, ray_mm.cli.serve\n"
            "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.') or m.startswith('actors'))\n"
            "print(','.join(bad)); sys.exit(1 if bad else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"imported: {proc.stdout.strip()} {proc.stderr[-500:]}"
