"""Input the model cannot take is a 422 ``MediaUnsupportedError`` naming the item; only ray-mm's own faults are 500.

Qwen2-VL's ``smart_resize`` refuses an image or frame whose aspect ratio is over 200 with a
``ValueError``. The adapter checks that limit before either pixel path runs, so the
hand-tuned path and the HF processor give the same error. A ``ValueError`` the processor
raises for a reason ray-mm does not check up front is a 422 too, with the processor's
message made safe. A ``KeyError`` or a ``TypeError`` in ray-mm's own code stays a 500.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from transformers import AutoProcessor

from ray_mm.config import RayMMConfig
from ray_mm.models.qwen2_vl import Qwen2VLAdapter, _size_from_options
from ray_mm.pipeline import Preprocessor
from tests.unit.media_factory import noisy_rgb

IMG = "<|vision_start|><|image_pad|><|vision_end|>"
VID = "<|vision_start|><|video_pad|><|vision_end|>"
PATHS = ("hand", "hf", "hand_uint8")


def _png_uri(width: int, height: int) -> str:
    buf = io.BytesIO()
    Image.fromarray(noisy_rgb(width, height, seed=width * 7 + height)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the HF processor was called: the hand path fell back")


def _preprocessor(model_dir: Path, path: str) -> Preprocessor:
    """A Preprocessor whose adapter takes one pixel path only: the hand path (HF processors made to
    fail, as in test_qwen2_vl_fast), in float32 or uint8 transport, or the HF processor."""
    transport = "uint8" if path == "hand_uint8" else "float32"
    pre = Preprocessor(model_dir, RayMMConfig(transport=transport))
    adapter = Qwen2VLAdapter(model_dir, use_hand_path=path != "hf")
    if path != "hf":
        adapter.processor.image_processor.preprocess = _refuse  # type: ignore[method-assign]
        adapter.processor.video_processor.preprocess = _refuse  # type: ignore[method-assign]
    pre.adapter = adapter
    return pre


@pytest.fixture(scope="module")
def pres(qwen2_vl_dir: Path) -> dict[str, Preprocessor]:
    return {path: _preprocessor(qwen2_vl_dir, path) for path in PATHS}


def _error(record: dict[str, Any]) -> dict[str, Any]:
    assert record["ok"] is False, record
    return record["error"]


# --------------------------------------------------------------------------- aspect ratio over the limit


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("size", [(1, 400), (400, 1), (1, 201)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("as_uri", [True, False], ids=["data_uri", "pil"])
def test_extreme_aspect_ratio_image_is_422(pres: dict[str, Preprocessor], path: str, size: tuple[int, int], as_uri: bool) -> None:
    width, height = size
    source: Any = _png_uri(width, height) if as_uri else Image.fromarray(noisy_rgb(width, height, seed=3))
    rid = f"ar-{path}-{width}x{height}"
    err = _error(pres[path].run({"request_id": rid, "prompt": f"look {IMG}", "images": [source]}).record)
    assert (err["type"], err["status"]) == ("MediaUnsupportedError", 422), err
    assert err["message"].startswith(f"image 0 of request {rid}: "), err
    assert "aspect ratio" in err["message"] and f"{width}x{height}" in err["message"]
    assert "base64" not in err["message"] and len(err["message"]) < 300


def test_hand_path_and_hf_processor_give_the_same_error(pres: dict[str, Preprocessor]) -> None:
    line = {"request_id": "same", "prompt": f"a {IMG} b {IMG}", "images": [_png_uri(64, 48), _png_uri(500, 2)]}
    errors = [_error(pres[path].run(line).record) for path in PATHS]
    assert all(e == errors[0] for e in errors), errors
    assert errors[0]["status"] == 422 and errors[0]["message"].startswith("image 1 of request same: ")


@pytest.mark.parametrize("path", PATHS)
def test_extreme_aspect_ratio_video_is_422(pres: dict[str, Preprocessor], path: str) -> None:
    frames = np.random.default_rng(1).integers(0, 256, size=(4, 2, 500, 3), dtype=np.uint8)
    err = _error(pres[path].run({"request_id": "v", "prompt": f"{VID} what?", "videos": [frames]}).record)
    assert (err["type"], err["status"]) == ("MediaUnsupportedError", 422), err
    assert err["message"].startswith("video 0 of request v: video frames of 500x2 pixels"), err


def test_frames_adapter_extreme_aspect_video_among_images_is_422(qwen2_vl_dir: Path) -> None:
    pre = Preprocessor(qwen2_vl_dir, adapter="qwen2_vl_frames")
    frames = np.random.default_rng(2).integers(0, 256, size=(2, 2, 500, 3), dtype=np.uint8)
    line = {"request_id": "fv", "prompt": IMG * 2, "images": [{"url": frames, "kind": "video"}]}
    err = _error(pre.run(line).record)
    assert (err["type"], err["status"]) == ("MediaUnsupportedError", 422), err
    assert err["message"].startswith("image 0 of request fv: video frames of 500x2 pixels"), err


def test_draft_decode_leaves_the_refusal_to_the_processor_step(qwen2_vl_dir: Path) -> None:
    """With ``jpeg_draft`` the target size is asked for while decoding: no ValueError there (it would be a 400)."""
    buf = io.BytesIO()
    Image.fromarray(noisy_rgb(2000, 8, seed=4)).save(buf, "JPEG")
    uri = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    pre = Preprocessor(qwen2_vl_dir, RayMMConfig(jpeg_draft=True))
    err = _error(pre.run({"request_id": "dr", "prompt": IMG, "images": [uri]}).record)
    assert (err["type"], err["status"]) == ("MediaUnsupportedError", 422), err


# --------------------------------------------------------------------------- tiny images are the model's to take


@pytest.mark.parametrize("path", ("hand", "hf"))
def test_two_by_two_image_is_taken_like_the_processor_does(pres: dict[str, Preprocessor], qwen2_vl_dir: Path, path: str) -> None:
    """Not an error: ``smart_resize`` scales a 2x2 image up to ``min_pixels``, and so does the HF
    processor; refusing it would break parity with the model's own processor."""
    image = Image.fromarray(noisy_rgb(2, 2, seed=5))
    prompt = f"tiny {IMG}"
    outcome = pres[path].run({"request_id": "tiny", "prompt": prompt, "images": [_png_uri(2, 2) if path == "hf" else image]})
    assert outcome.ok, outcome.record
    processor = AutoProcessor.from_pretrained(str(qwen2_vl_dir), local_files_only=True)
    source = Image.open(io.BytesIO(base64.b64decode(_png_uri(2, 2).split(",", 1)[1]))).convert("RGB") if path == "hf" else image
    ref = processor(text=[prompt], images=[source], return_tensors="np")
    assert outcome.record["input_ids"] == ref["input_ids"][0].tolist()
    assert [it["grid_thw"] for it in outcome.record["items"]] == ref["image_grid_thw"].tolist()
    np.testing.assert_allclose(outcome.features[0], ref["pixel_values"], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- what the processor refuses, and our own faults


def _with_process(model_dir: Path, process: Callable[..., Any]) -> Preprocessor:
    pre = Preprocessor(model_dir)
    adapter = Qwen2VLAdapter(model_dir)
    adapter.process = process  # type: ignore[method-assign]
    pre.adapter = adapter
    return pre


def test_a_processor_value_error_is_422_with_its_message_made_safe(qwen2_vl_dir: Path) -> None:
    secret = "data:image/png;base64," + "QUJD" * 500

    def refuse(modality: str, data: Any, options: Any = None) -> Any:
        raise ValueError(f"Unable to infer channel dimension format of {secret}\n" + "x" * 400)

    err = _error(_with_process(qwen2_vl_dir, refuse).run({"request_id": "pv", "prompt": IMG, "images": [_png_uri(8, 8)]}).record)
    assert (err["type"], err["status"]) == ("MediaUnsupportedError", 422), err
    assert err["message"].startswith("image 0 of request pv: ") and "Unable to infer channel dimension" in err["message"]
    assert "QUJDQUJD" not in err["message"] and "\n" not in err["message"]
    assert len(err["message"]) < 330  # the reason is cut to ~200 characters


def test_a_library_type_error_is_422(qwen2_vl_dir: Path) -> None:
    def refuse(modality: str, data: Any, options: Any = None) -> Any:
        raise TypeError("Invalid image type: expected PIL, numpy or torch")  # as a library raises it: not in ray_mm code

    err = _error(_with_process(qwen2_vl_dir, refuse).run({"request_id": "tl", "prompt": IMG, "images": [_png_uri(8, 8)]}).record)
    assert (err["type"], err["status"]) == ("MediaUnsupportedError", 422), err


@pytest.mark.parametrize("fault", ["key_error", "type_error_in_ray_mm"])
def test_an_internal_bug_is_still_500_and_logged(qwen2_vl_dir: Path, caplog: pytest.LogCaptureFixture, fault: str) -> None:
    def broken(modality: str, data: Any, options: Any = None) -> Any:
        if fault == "key_error":
            raise KeyError("pixel_values")
        return _size_from_options({"shortest_edge": 1}, {"min_pixels": [1]})  # int([1]): a TypeError raised in ray_mm

    with caplog.at_level(logging.ERROR, logger="ray_mm"):
        err = _error(_with_process(qwen2_vl_dir, broken).run({"request_id": "bug", "prompt": IMG, "images": [_png_uri(8, 8)]}).record)
    assert (err["type"], err["status"]) == ("InternalError", 500), err
    assert err["message"].startswith("image 0 of request bug: ") and "Traceback" not in err["message"]
    logged = [r for r in caplog.records if r.name == "ray_mm.pipeline" and "request bug" in r.getMessage()]
    assert logged and logged[0].exc_info is not None, caplog.records
