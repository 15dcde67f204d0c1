"""GPU-side checks (skipped without CUDA): device transfer of object-store features,
uint8 normalisation on the device, and the vision tower's embedding count."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

IMG = "<|vision_start|><|image_pad|><|vision_end|>"


def _image_item(model_dir: Path, tmp_path: Path, transport: str):  # noqa: ANN202
    from ray_mm.config import MediaPolicy, RayMMConfig
    from ray_mm.media.synth import make_image
    from ray_mm.pipeline import Preprocessor

    (tmp_path / "a.jpg").write_bytes(make_image(1280, 720, seed=5))
    config = RayMMConfig(media=MediaPolicy(allowed_local_media_path=str(tmp_path)), transport=transport)
    pre = Preprocessor(model_dir, config)
    req = pre.prepare({"request_id": "g", "prompt": IMG, "images": [str(tmp_path / "a.jpg")]})
    return pre, pre.process_item(req.request.items()[0])[0]


def test_uint8_normalised_on_gpu_matches_processor(qwen2_vl_dir: Path, tmp_path: Path) -> None:
    from PIL import Image
    from transformers import AutoProcessor

    pre, item = _image_item(qwen2_vl_dir, tmp_path, "uint8")
    on_device = {k: torch.from_numpy(v).pin_memory().to("cuda", non_blocking=True) for k, v in item.features.items()}
    finished = pre.adapter.finish_features(on_device)
    assert finished["pixel_values"].device.type == "cuda"
    processor = AutoProcessor.from_pretrained(str(qwen2_vl_dir), local_files_only=True)
    ref = processor.image_processor(images=[Image.open(io.BytesIO((tmp_path / "a.jpg").read_bytes()))], return_tensors="np")
    np.testing.assert_allclose(finished["pixel_values"].cpu().numpy(), ref["pixel_values"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_uint8_pixels_finished_on_gpu_equal_the_cpu_finish(family: str, family_dir, tmp_path: Path) -> None:  # noqa: ANN001
    """Images and videos (even and odd frame counts) shipped as uint8 pixels, finished on the GPU: the same
    values as on the CPU, which tests/unit/test_uint8_transport.py checks against the HF processor."""
    from ray_mm.models import load_adapter

    adapter = load_adapter(str(family_dir(family)))
    rng = np.random.default_rng(0)
    meta = {"fps": 10.0, "total_num_frames": 50, "frames_indices": list(range(0, 50, 10)), "duration": 5.0}
    items = [adapter.process("image", rng.integers(0, 256, (333, 517, 3), dtype=np.uint8), {"transport": "uint8"})[0]]
    for frames in (4, 5):
        options = {"transport": "uint8", "video_metadata": {**meta, "frames_indices": meta["frames_indices"][:frames]}}
        video = rng.integers(0, 256, (frames, 90, 200, 3), dtype=np.uint8)
        items.append(adapter.process("video", video, options)[0])
    for item in items:
        on_cpu = adapter.finish_features(item.features)[item.primary]
        on_gpu = adapter.finish_features({k: torch.from_numpy(v).to("cuda") for k, v in item.features.items()})
        assert on_gpu[item.primary].device.type == "cuda"
        assert float(np.abs(on_gpu[item.primary].cpu().numpy() - on_cpu).max()) <= 1e-5


def test_vision_tower_on_gpu_gives_one_row_per_token(qwen2_vl_dir: Path, tmp_path: Path) -> None:
    pre, item = _image_item(qwen2_vl_dir, tmp_path, "float32")
    module = pre.adapter.build_encoder().to("cuda")
    features = {k: torch.from_numpy(v).to("cuda") for k, v in item.features.items()}
    rows = pre.adapter.encode(module, features)
    assert rows.device.type == "cuda" and rows.shape[0] == item.meta.num_tokens


def test_host_staging_on_gpu_reuses_one_pinned_buffer() -> None:
    from ray_mm.handoff.staging import HostStaging

    staging = HostStaging("cuda")
    rng = np.random.default_rng(0)
    for _ in range(5):
        arrays = [rng.standard_normal((4888, 1176)).astype(np.float32), np.array([[1, 94, 52]], dtype=np.int64)]
        for array in arrays:
            array.setflags(write=False)
        moved = staging.to_device(arrays)
        assert all(t.device.type == "cuda" for t in moved)
        for array, tensor in zip(arrays, moved):
            np.testing.assert_array_equal(tensor.cpu().numpy(), array)
    assert staging.pin and staging.allocations == 1
