"""Qwen2.5-VL adapter against the in-tree HF ``Qwen2_5_VLProcessor``, on whole requests.

Every parity check goes through the shared helper (:mod:`tests.conformance`): ids, offsets and every
output array (``second_per_grid_ts`` included) of ray-mm's item-by-item pipeline against one call
of the HF processor on the whole request, with the frames ray-mm sampled and their metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoProcessor

from ray_mm.errors import MediaUnsupportedError
from ray_mm.io import dump_features
from ray_mm.models import load_adapter
from ray_mm.models.qwen2_5_vl import Qwen2_5_VLAdapter
from ray_mm.pipeline import Preprocessor
from ray_mm.synth import make_image, make_video
from tests.conformance import (
    Family,
    check_legacy_roundtrip,
    check_request,
    config_for,
    corrupt_first_item,
    oracle,
)

IMG = "<|vision_start|><|image_pad|><|vision_end|>"
VID = "<|vision_start|><|video_pad|><|vision_end|>"
FAMILY = Family("qwen2_5_vl", image=IMG, video=VID)
# 3 s at 10 fps: 4 frames sampled from 30 give sampled_fps = 4 / 30 * 10, so second_per_grid_ts = 1.5.
VIDEO_NFRAMES = {"url": "v.mp4", "nframes": 4}
VIDEO_FPS = {"url": "v.mp4", "fps": 2.0}


@pytest.fixture(scope="module")
def model_dir(family_dir: Any) -> Path:
    return family_dir("qwen2_5_vl")


@pytest.fixture(scope="module")
def hf(model_dir: Path) -> Any:
    return AutoProcessor.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("qwen2_5_vl_media")
    (root / "a.jpg").write_bytes(make_image(600, 400, "JPEG", seed=1))
    (root / "b.png").write_bytes(make_image(37, 91, "PNG", seed=2))
    (root / "c.jpg").write_bytes(make_image(333, 517, "JPEG", seed=3))
    (root / "d.png").write_bytes(make_image(130, 45, "PNG", seed=4))
    (root / "v.mp4").write_bytes(make_video(320, 180, fps=10, seconds=3.0))
    return root


def _run_ids(checked: Any, ids: list[int]) -> dict[str, Any]:
    """ray-mm on ``ids`` (skip_tokenizer_init) with the checked request's media."""
    base = {k: v for k, v in checked.line.items() if k not in ("prompt", "messages")}
    return checked.pre.run({**base, "request_id": "ids", "input_ids": ids, "skip_tokenizer_init": True}).record


def _assert_400(record: dict[str, Any], *words: str) -> None:
    assert record["ok"] is False, record
    err = record["error"]
    assert err["status"] == 400 and err["type"] == "AlignmentError", err
    for word in words:
        assert word in err["message"], err["message"]


# --------------------------------------------------------------------------- registration and encoder


def test_registered_and_takes_video_metadata(model_dir: Path) -> None:
    adapter = load_adapter(model_dir)
    assert isinstance(adapter, Qwen2_5_VLAdapter) and adapter.name == "qwen2_5_vl"
    assert adapter.takes_video_metadata
    assert adapter.placeholder_texts == {"image": IMG, "video": VID}
    # The hand path takes both modalities (same processors as Qwen2-VL).
    assert adapter._pixel_paths["image"] is not None and adapter._pixel_paths["video"] is not None


def test_encoder_yields_one_embedding_per_placeholder_token(model_dir: Path, hf: Any) -> None:
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

    adapter = Qwen2_5_VLAdapter(model_dir)
    torch.manual_seed(0)
    encoder = adapter.build_encoder()
    assert type(encoder).__name__ == "Qwen2_5_VisionTransformerPretrainedModel"
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 255, (97, 131, 3), dtype=np.uint8), rng.integers(0, 255, (60, 44, 3), dtype=np.uint8)]
    items = [adapter.process("image", im)[0] for im in images]
    items += adapter.process("video", rng.integers(0, 255, (4, 90, 120, 3), dtype=np.uint8))
    for item in items:
        emb = adapter.encode(encoder, {k: torch.from_numpy(v) for k, v in item.features.items()})
        assert emb.shape == (item.num_tokens, adapter.config.vision_config.out_hidden_size)
        assert torch.isfinite(emb).all()
    # Same vision weights inside the HF model: its image features equal ours, item by item.
    model = Qwen2_5_VLModel(adapter.config).eval()
    model.visual.load_state_dict(encoder.state_dict())
    ref = hf(text=[IMG + IMG], images=images, return_tensors="pt")
    with torch.inference_mode():
        expected = model.get_image_features(ref["pixel_values"], ref["image_grid_thw"]).pooler_output
    for item, exp in zip(items[:2], expected, strict=True):
        got = adapter.encode(encoder, {k: torch.from_numpy(v) for k, v in item.features.items()})
        torch.testing.assert_close(got, exp, atol=1e-4, rtol=1e-4)


def test_check_input_refuses_extreme_aspect_ratio(model_dir: Path) -> None:
    adapter = Qwen2_5_VLAdapter(model_dir)
    with pytest.raises(MediaUnsupportedError, match="aspect ratio"):
        adapter.process("image", np.zeros((5, 1200, 3), np.uint8))
    with pytest.raises(MediaUnsupportedError, match="aspect ratio"):
        adapter.process("video", np.zeros((4, 5, 1200, 3), np.uint8))


# --------------------------------------------------------------------------- parity on whole requests


def test_one_image(model_dir: Path, media: Path) -> None:
    checked = check_request(model_dir, FAMILY, {"request_id": "one", "prompt": f"Describe {IMG}.", "images": ["a.jpg"]}, media)
    assert checked.record["path"] == "fast" and checked.record["items"][0]["num_tokens"] == 247


def test_several_images_of_odd_sizes(model_dir: Path, media: Path) -> None:
    line = {"request_id": "odd", "prompt": f"{IMG}\n{IMG} and\n{IMG}{IMG}\nwhich?",
            "images": ["b.png", "c.jpg", "d.png", "a.jpg"]}
    checked = check_request(model_dir, FAMILY, line, media)
    assert [i["index"] for i in checked.record["items"]] == [0, 1, 2, 3]


def test_image_video_image_in_prompt_order(model_dir: Path, media: Path) -> None:
    line = {"request_id": "mixed", "prompt": f"First {IMG}, then{VID}\nlast {IMG}",
            "images": ["a.jpg", "b.png"], "videos": [VIDEO_NFRAMES]}
    checked = check_request(model_dir, FAMILY, line, media)
    assert [i["modality"] for i in checked.record["items"]] == ["image", "video", "image"]
    check_legacy_roundtrip(checked)


@pytest.mark.parametrize("entry", [VIDEO_NFRAMES, VIDEO_FPS], ids=["nframes", "fps"])
def test_video_alone_and_its_second_per_grid_ts(model_dir: Path, media: Path, tmp_path: Path, entry: dict[str, Any]) -> None:
    line = {"request_id": "vid", "prompt": f"What happens in {VID}?", "videos": [entry]}
    checked = check_request(model_dir, FAMILY, line, media)  # second_per_grid_ts compared as a processor output
    ref = oracle(model_dir, FAMILY, line["prompt"], line, media)
    (item,) = checked.record["items"]
    # The record carries HF's value exactly: temporal_patch_size / (frames / total * fps).
    assert item["second_per_grid_ts"] == float(ref["second_per_grid_ts"][0])
    assert item["second_per_grid_ts"] == (1.5 if "nframes" in entry else 1.0)
    # And the feature dump names it as the processor does.
    outcome = checked.pre.run(checked.line)
    with np.load(dump_features(tmp_path, "vid", outcome.features, outcome.item_features)) as npz:
        np.testing.assert_allclose(npz["item0.second_per_grid_ts"], ref["second_per_grid_ts"], rtol=0, atol=1e-6)
        assert set(npz.files) >= {"item0", "item0.pixel_values_videos", "item0.video_grid_thw"}


def test_chat_messages(model_dir: Path, media: Path, hf: Any) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "c.jpg"}},
            {"type": "text", "text": "and the clip"},
            {"type": "video_url", "video_url": {"url": "v.mp4", "nframes": 4}},
            {"type": "text", "text": "\ncompare"},
        ]},
    ]
    hf_messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and the clip"}, {"type": "video"},
                                     {"type": "text", "text": "\ncompare"}]},
    ]
    hf_text = hf.apply_chat_template(hf_messages, tokenize=False, add_generation_prompt=True)
    checked = check_request(model_dir, FAMILY, {"request_id": "chat", "messages": messages}, media, hf_text=hf_text)
    assert checked.record["items"][1]["second_per_grid_ts"] == 1.5
    check_legacy_roundtrip(checked)


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("first", ["video", "image"])
def test_corrupted_expansion_is_a_400(model_dir: Path, media: Path, first: str) -> None:
    media_parts = [VID, IMG] if first == "video" else [IMG, VID]
    line = {"request_id": "bad", "prompt": f"{media_parts[0]} then {media_parts[1]}", "images": ["b.png"],
            "videos": [VIDEO_NFRAMES]}
    checked = check_request(model_dir, FAMILY, line, media)
    _assert_400(_run_ids(checked, corrupt_first_item(checked, "short_run")), "expected", f"{first} 0")
    # Qwen2.5-VL's expansion is one run with no text, so "text" damages the prompt's <|vision_end|> after
    # it (in the tiny vocabulary it becomes <|image_pad|>, the next id): still a 400, whatever it now reads as.
    _assert_400(_run_ids(checked, corrupt_first_item(checked, "text")), "image")


def test_count_mismatch_both_ways_is_a_400(model_dir: Path, media: Path) -> None:
    pre = Preprocessor(model_dir, config_for(media))
    too_many = pre.run({"request_id": "many", "prompt": f"{IMG} {IMG} {VID}",
                        "images": [str(media / "a.jpg")], "videos": [dict(VIDEO_NFRAMES, url=str(media / "v.mp4"))]})
    _assert_400(too_many.record, "image")
    too_few = pre.run({"request_id": "few", "prompt": f"{IMG} only",
                       "images": [str(media / "a.jpg"), str(media / "b.png")]})
    _assert_400(too_few.record, "image")


# --------------------------------------------------------------------------- the video hand path


def test_hand_path_video_and_second_per_grid_ts_equal_the_processor(model_dir: Path, hf: Any) -> None:
    """Videos take the hand path (the processor is made to fail); ``second_per_grid_ts`` computed there
    equals ``Qwen2_5_VLProcessor``'s for the same metadata, and so does the HF path's."""
    hand = Qwen2_5_VLAdapter(model_dir)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the HF processor was called: the hand path fell back")

    hand.processor.video_processor.preprocess = refuse  # type: ignore[method-assign]
    via_hf = Qwen2_5_VLAdapter(model_dir, use_hand_path=False)
    rng = np.random.default_rng(7)
    cases = [
        (rng.integers(0, 255, (4, 180, 320, 3), dtype=np.uint8),
         {"fps": 30.0, "total_num_frames": 120, "frames_indices": [0, 30, 60, 90], "duration": 4.0}),
        (rng.integers(0, 255, (6, 90, 200, 3), dtype=np.uint8),
         {"fps": 23.976, "total_num_frames": 71, "frames_indices": [0, 14, 28, 42, 56, 70], "duration": 71 / 23.976}),
        (rng.integers(0, 255, (5, 64, 64, 3), dtype=np.uint8), None),  # no metadata: HF's 24 fps fallback, 2 / 24
    ]
    for frames, meta in cases:
        options = {"video_metadata": meta} if meta is not None else {}
        ref = hf(text=[VID], videos=[frames], do_sample_frames=False,
                 video_metadata=[dict(meta)] if meta is not None else None, return_tensors="np")
        for adapter in (hand, via_hf):
            (item,) = adapter.process("video", frames, options)
            assert item.extras["second_per_grid_ts"] == float(ref["second_per_grid_ts"][0])
            np.testing.assert_allclose(item.features["second_per_grid_ts"], ref["second_per_grid_ts"], rtol=0, atol=1e-6)
            np.testing.assert_allclose(item.features["pixel_values_videos"], ref["pixel_values_videos"], atol=1e-5, rtol=0)
            assert item.grid_thw == ref["video_grid_thw"][0].tolist() and item.expansion is None
    assert hand.process("video", cases[2][0])[0].extras["second_per_grid_ts"] == 2 / 24
