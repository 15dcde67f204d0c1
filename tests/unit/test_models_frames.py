"""qwen2_vl_frames: a video among the images expands into K image items (MiniCPM-V style).

HF parity here: the HF processor called with the K frames as K separate images and a
prompt holding one image placeholder per frame.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ray_mm.models import Qwen2VLFramesAdapter, load_adapter


def _frames(k: int, height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(k, height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def adapter(qwen2_vl_dir: Path) -> Qwen2VLFramesAdapter:
    a = load_adapter(qwen2_vl_dir, "qwen2_vl_frames")
    assert isinstance(a, Qwen2VLFramesAdapter)
    return a


@pytest.fixture(scope="module")
def hf(qwen2_vl_dir: Path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(qwen2_vl_dir)


def test_capabilities(adapter: Qwen2VLFramesAdapter, hf) -> None:
    assert adapter.name == "qwen2_vl_frames"
    assert adapter.dynamic_frame_expansion is True
    assert adapter.expand_video_as_frames is True
    assert adapter.modalities == frozenset({"image"})
    assert adapter.input_modalities == frozenset({"image", "video"})
    assert adapter.placeholder_token_ids == {"image": hf.tokenizer.convert_tokens_to_ids("<|image_pad|>")}
    assert adapter.placeholder_texts == {"image": "<|vision_start|><|image_pad|><|vision_end|>"}


def test_video_expands_into_k_image_items_like_processor_images(adapter: Qwen2VLFramesAdapter, hf) -> None:
    k = 6
    frames = _frames(k, 180, 320, seed=1)
    leading = Image.fromarray(_frames(1, 333, 517, seed=2)[0])
    ph = adapter.placeholder_texts["image"]
    # A plain image, then the video's K frames, each with its own image placeholder.
    prompt = f"Look: {ph} then the clip: " + "".join(ph for _ in range(k)) + " What changed?"
    ref = hf(text=[prompt], images=[leading, *list(frames)], return_tensors="np")

    lead_items = adapter.process("image", leading, {})
    frame_items = adapter.process("video", frames, {})
    assert len(lead_items) == 1 and len(frame_items) == k
    items = lead_items + frame_items
    assert all(it.modality == "image" and it.primary == "pixel_values" for it in items)
    assert [it.grid_thw for it in items] == ref["image_grid_thw"].tolist()
    np.testing.assert_allclose(
        np.concatenate([it.features["pixel_values"] for it in items]), ref["pixel_values"], atol=1e-5, rtol=0
    )
    ids = ref["input_ids"][0].tolist()
    assert sum(it.num_tokens for it in items) == ids.count(hf.image_token_id)

    tid = adapter.placeholder_token_ids["image"]
    counts = iter(it.num_tokens for it in items)
    expanded: list[int] = []
    for t in adapter.tokenize(prompt):
        expanded.extend([t] * next(counts) if t == tid else [t])
    assert expanded == ids


def test_frames_accept_pixel_options(adapter: Qwen2VLFramesAdapter, hf) -> None:
    frames = _frames(2, 360, 640, seed=3)
    opts = {"max_pixels": 16 * 28 * 28}
    ref = hf(
        text=[adapter.placeholder_texts["image"] * 2],
        images=list(frames),
        size={"shortest_edge": hf.image_processor.size["shortest_edge"], "longest_edge": opts["max_pixels"]},
        return_tensors="np",
    )
    items = adapter.process("video", frames, opts)
    assert [it.grid_thw for it in items] == ref["image_grid_thw"].tolist()
    np.testing.assert_allclose(
        np.concatenate([it.features["pixel_values"] for it in items]), ref["pixel_values"], atol=1e-5, rtol=0
    )


def test_rejects_audio_and_empty_video(adapter: Qwen2VLFramesAdapter) -> None:
    with pytest.raises(ValueError, match="audio"):
        adapter.process("audio", np.zeros(1600, np.float32))
    with pytest.raises(ValueError, match="non-empty"):
        adapter.process("video", np.zeros((0, 8, 8, 3), np.uint8))


def test_encoder_rows_per_frame(adapter: Qwen2VLFramesAdapter) -> None:
    torch.manual_seed(0)
    encoder = adapter.build_encoder()
    for item in adapter.process("video", _frames(3, 64, 96, seed=4)):
        emb = adapter.encode(encoder, {k: torch.from_numpy(v) for k, v in item.features.items()})
        assert emb.shape == (item.num_tokens, adapter.config.vision_config.hidden_size)


def test_encode_accepts_numpy_features(adapter: Qwen2VLFramesAdapter) -> None:
    torch.manual_seed(0)
    encoder = adapter.build_encoder()
    (item,) = adapter.process("video", _frames(1, 40, 40, seed=5))
    emb = adapter.encode(encoder, item.features)  # type: ignore[arg-type]  # numpy straight from the object store
    assert emb.shape[0] == item.num_tokens


# --------------------------------------------------------------------------- videos in 'videos' (not among the images)


def _videos_list_line(adapter: Qwen2VLFramesAdapter, k: int) -> tuple[dict, list]:
    """An image, a video's K frames, another image, in prompt order; the video given in 'videos'."""
    ph = adapter.placeholder_texts["image"]
    a, b = Image.fromarray(_frames(1, 200, 120, seed=6)[0]), Image.fromarray(_frames(1, 40, 300, seed=7)[0])
    frames = _frames(k, 64, 96, seed=8)
    line = {"request_id": "vl", "prompt": f"A {ph} clip {ph * k} B {ph}", "images": [a, b], "videos": [frames]}
    return line, [a, *frames, b]


def test_video_in_videos_list_is_refused_before_dispatch(qwen2_vl_dir: Path, adapter: Qwen2VLFramesAdapter) -> None:
    """Alignment orders items per modality: the frames of a 'videos' entry would come after every image,
    so before this refusal image B's features silently filled the video's first frame placeholder."""
    from ray_mm.errors import RequestError
    from ray_mm.pipeline import Preprocessor

    pre = Preprocessor(qwen2_vl_dir, adapter="qwen2_vl_frames")
    dispatched: list[str] = []
    process = pre.process_item
    pre.process_item = lambda spec: (dispatched.append(spec.label), process(spec))[1]  # type: ignore[method-assign]
    line, _ = _videos_list_line(adapter, 3)
    expected = "adapter qwen2_vl_frames takes videos as entries of 'images' with \"kind\": \"video\"; got 1 entry in 'videos'"
    with pytest.raises(RequestError, match=re.escape(expected)):
        pre.prepare(line)
    rec = pre.run(line).record
    assert rec["ok"] is False and rec["error"] == {"type": "RequestError", "status": 400, "message": f"request vl: {expected}"}
    assert dispatched == []
    # The same video among the images, where this adapter takes it, maps frames in prompt order (as HF does).
    moved = line | {"images": [line["images"][0], {"url": line["videos"][0], "kind": "video"}, line["images"][1]], "videos": []}
    ok = pre.run(moved)
    assert ok.ok, ok.record
    _, in_order = _videos_list_line(adapter, 3)
    ref = adapter.processor(text=[line["prompt"]], images=in_order, return_tensors="np")
    assert [it["grid_thw"] for it in ok.record["items"]] == ref["image_grid_thw"].tolist()
    assert ok.record["input_ids"] == ref["input_ids"][0].tolist()


def test_video_part_in_messages_is_refused_too(qwen2_vl_dir: Path) -> None:
    from ray_mm.pipeline import Preprocessor

    pre = Preprocessor(qwen2_vl_dir, adapter="qwen2_vl_frames")
    parts = [{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}, {"type": "text", "text": "what?"}]
    rec = pre.run({"request_id": "chat", "messages": [{"role": "user", "content": parts}]}).record
    assert rec["error"]["type"] == "RequestError" and rec["error"]["status"] == 400, rec
    assert rec["error"]["message"].endswith("got 1 video part in 'messages'")


def test_adapter_placing_videos_itself_is_not_refused(qwen2_vl_dir: Path) -> None:
    from ray_mm.pipeline import Preprocessor

    class PlacingFrames(Qwen2VLFramesAdapter):
        frames_from_videos_in_prompt_order = True

    pre = Preprocessor(qwen2_vl_dir, adapter="qwen2_vl_frames")
    pre.adapter = PlacingFrames(qwen2_vl_dir)
    line, _ = _videos_list_line(pre.adapter, 2)
    assert len(pre.prepare(line).request.media["video"]) == 1
