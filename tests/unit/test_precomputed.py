"""Precomputed features in requests: processor_output and precomputed_embedding."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from transformers import AutoProcessor

from ray_mm.config import MediaPolicy, RayMMConfig
from ray_mm.pipeline import Preprocessor
from ray_mm.synth import make_image

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
