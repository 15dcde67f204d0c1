"""Precomputed features in requests: processor_output and precomputed_embedding."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoProcessor

from ray_mm.config import MediaPolicy, RayMMConfig
from ray_mm.errors import MediaLimitError
from ray_mm.media.synth import make_image
from ray_mm.pipeline import Preprocessor

IMG = "<|vision_start|><|image_pad|><|vision_end|>"


def _npy(arr: np.ndarray) -> dict[str, str]:
    buf = io.BytesIO()
    np.save(buf, arr)
    return {"npy": base64.b64encode(buf.getvalue()).decode()}


def test_processor_output_gives_same_ids_as_the_media(qwen2_vl_dir: Path, tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "a.jpg").write_bytes(make_image(333, 517, seed=4))
    processor = AutoProcessor.from_pretrained(str(qwen2_vl_dir), local_files_only=True)
    ref = processor.image_processor(images=[Image.open(tmp_path / "a.jpg")], return_tensors="np")
    pre = Preprocessor(qwen2_vl_dir, RayMMConfig(media=MediaPolicy(allowed_local_media_path=str(tmp_path))))
    prompt = f"x {IMG} y {IMG}"
    precomputed = {"format": "processor_output", "pixel_values": _npy(ref["pixel_values"]),
                   "image_grid_thw": ref["image_grid_thw"].tolist()}
    mixed = pre.run({"request_id": "p", "prompt": prompt, "images": [precomputed, str(tmp_path / "a.jpg")]})
    assert mixed.ok, mixed.record
    a, b = mixed.record["items"]
    assert a["num_tokens"] == b["num_tokens"] == int(np.prod(ref["image_grid_thw"][0])) // 4
    assert a["grid_thw"] == b["grid_thw"]
    full = processor(text=[prompt], images=[Image.open(tmp_path / "a.jpg")] * 2, return_tensors="np")
    assert mixed.record["input_ids"] == full["input_ids"][0].tolist()
    np.testing.assert_array_equal(mixed.features[0], ref["pixel_values"])


def test_precomputed_embedding_and_bad_payloads(qwen2_vl_dir: Path) -> None:
    pre = Preprocessor(qwen2_vl_dir)
    emb = np.random.default_rng(0).standard_normal((7, 16)).astype(np.float32)
    ok = pre.run({"request_id": "e", "prompt": IMG, "images": [{"format": "precomputed_embedding", "embedding": emb.tolist()}]})
    assert ok.ok and ok.record["items"][0]["num_tokens"] == 7
    assert ok.record["input_ids"].count(pre.adapter.placeholder_token_ids["image"]) == 7
    bad_grid = {"format": "processor_output", "pixel_values": np.zeros((16, 1176)).tolist(), "image_grid_thw": [[1, 4, 5]]}
    rec = pre.run({"request_id": "g", "prompt": IMG, "images": [bad_grid]}).record
    assert rec["error"]["type"] == "RequestError" and "does not match 16 patches" in rec["error"]["message"]
    bad_b64 = {"format": "precomputed_embedding", "embedding": {"npy": "!!notbase64"}}
    rec = pre.run({"request_id": "b", "prompt": IMG, "images": [bad_b64]}).record
    assert rec["error"]["status"] == 400 and "image 0 of request b" in rec["error"]["message"]


# --------------------------------------------------------------------------- byte cap at admission


def _watch_processing(pre: Preprocessor, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every item that reaches processing (the pipeline's own step and the precomputed reader)."""
    import ray_mm.pipeline as pipeline

    seen: list[str] = []
    process, read = pre.process_item, pipeline.precomputed_features
    monkeypatch.setattr(pre, "process_item", lambda spec: (seen.append(spec.label), process(spec))[1])
    monkeypatch.setattr(pipeline, "precomputed_features", lambda spec, merge: (seen.append(f"read {spec.label}"), read(spec, merge))[1])
    return seen


def test_precomputed_byte_cap_default() -> None:
    assert MediaPolicy().max_precomputed_bytes == 256 << 20
    assert "precomputed" in MediaPolicy.model_fields["max_precomputed_bytes"].description


@pytest.mark.parametrize("form", ["ndarray", "list", "npy"])
def test_precomputed_over_the_byte_cap_is_413_before_any_item_is_processed(
    qwen2_vl_dir: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    pre = Preprocessor(qwen2_vl_dir, RayMMConfig(media=MediaPolicy(max_precomputed_bytes=10_000)))
    seen = _watch_processing(pre, monkeypatch)
    small = np.ones((16, 64), np.float32)  # 4096 bytes (8192 as float64 lists): under the cap
    big = np.ones((50, 64), np.float32)  # 12800 bytes (and 25600 as float64 lists): over
    encode = {"ndarray": lambda a: a, "list": lambda a: a.tolist(), "npy": _npy}[form]
    line = {"request_id": "big", "prompt": IMG * 2, "images": [{"format": "precomputed_embedding", "embedding": encode(small)},
                                                                {"format": "precomputed_embedding", "embedding": encode(big)}]}
    with pytest.raises(MediaLimitError, match=r"image 1 of request big: precomputed arrays of about \d+ bytes, over the cap of 10000"):
        pre.prepare(line)
    rec = pre.run(line).record
    assert rec["ok"] is False and rec["error"]["type"] == "MediaLimitError" and rec["error"]["status"] == 413, rec
    assert "image 1 of request big" in rec["error"]["message"]
    assert seen == [], "an item was processed before the request was refused"
    under = pre.run(line | {"prompt": IMG, "images": [line["images"][0]]})  # the small one alone is taken
    assert under.ok, under.record
    assert seen == ["image 0 of request big", "read image 0 of request big"]


def test_precomputed_list_is_sized_without_converting_it(qwen2_vl_dir: Path) -> None:
    """10**8 elements (800 MB as float64) built from one shared row: refused at once, with no copy made."""
    row = [0.0] * 1000
    payload = {"format": "processor_output", "pixel_values": [row] * 100_000, "image_grid_thw": [[1, 2, 2]]}
    pre = Preprocessor(qwen2_vl_dir, RayMMConfig(media=MediaPolicy(max_precomputed_bytes=1 << 20)))
    rec = pre.run({"request_id": "huge", "prompt": IMG, "images": [payload]}).record
    assert rec["error"]["status"] == 413 and "800000024 bytes" in rec["error"]["message"], rec


def test_npy_declaring_more_data_than_it_carries_is_400(qwen2_vl_dir: Path) -> None:
    """np.load allocates what the header declares before reading: a 4 TB shape in 128 bytes must not get there."""
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.float32)) | {"shape": (10**12,)}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    payload = {"format": "precomputed_embedding", "embedding": {"npy": base64.b64encode(buf.getvalue() + b"\0" * 16).decode()}}
    rec = Preprocessor(qwen2_vl_dir).run({"request_id": "hdr", "prompt": IMG, "images": [payload]}).record
    assert rec["error"]["type"] == "RequestError" and rec["error"]["status"] == 400, rec
    assert "image 0 of request hdr" in rec["error"]["message"] and "declares" in rec["error"]["message"]


def test_precomputed_items_of_structured_families_are_refused(family_dir) -> None:  # type: ignore[no-untyped-def]
    """A precomputed item is aligned as one run: a Qwen3-VL video (timestamped groups) or a MiniCPM-V image
    (slices) would get wrong ids silently, so they are refused at admission with a 400."""
    from ray_mm.pipeline import Preprocessor

    payload = {"format": "processor_output", "pixel_values_videos": np.zeros((8, 1536), np.float32),
               "video_grid_thw": [[2, 2, 2]]}
    pre = Preprocessor(family_dir("qwen3_vl"))
    rec = pre.run({"request_id": "pv", "prompt": "<|vision_start|><|video_pad|><|vision_end|>", "videos": [payload]}).record
    assert not rec["ok"] and rec["error"]["status"] == 400 and "precomputed video" in rec["error"]["message"]
    image = {"format": "processor_output", "pixel_values": np.zeros((4, 1536), np.float32), "image_grid_thw": [[1, 2, 2]]}
    ok = pre.run({"request_id": "pi", "prompt": "<|vision_start|><|image_pad|><|vision_end|>", "images": [image]}).record
    assert ok["ok"], ok  # a Qwen3-VL image is one run: accepted
    mini = Preprocessor(family_dir("minicpmv4_6")).run({"request_id": "pm", "prompt": "<|image_pad|>", "images": [image]}).record
    assert not mini["ok"] and mini["error"]["status"] == 400
