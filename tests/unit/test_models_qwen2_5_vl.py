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
from transformers import AutoProcessor

from ray_mm.errors import MediaUnsupportedError
from ray_mm.models import load_adapter
from ray_mm.models.qwen2_5_vl import Qwen2_5_VLAdapter
from ray_mm.request.jsonl import dump_features
from tests import conformance as cf

IMG, VID = cf.QWEN_IMAGE, cf.QWEN_VIDEO
FAMILY = cf.Family("qwen2_5_vl", image=IMG, video=VID)
# 3 s at 10 fps: 4 frames sampled from 30 give sampled_fps = 4 / 30 * 10, so second_per_grid_ts = 1.5.
VIDEO_NFRAMES = {"url": "v.mp4", "nframes": 4}
VIDEO_FPS = {"url": "v.mp4", "fps": 2.0}


model_dir, media = cf.family_fixtures("qwen2_5_vl", cf.USUAL_MEDIA, model_name="model_dir")


@pytest.fixture(scope="module")
def hf(model_dir: Path) -> Any:
    return AutoProcessor.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def mixed(model_dir: Path, media: Path) -> cf.Checked:
    """Image, video, image in that prompt order."""
    line = {"request_id": "mixed", "prompt": f"First {IMG}, then{VID}\nlast {IMG}",
            "images": ["a.jpg", "b.png"], "videos": [VIDEO_NFRAMES]}
    return cf.check_request(model_dir, FAMILY, line, media)


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

    # Same vision weights inside the HF model: its image features equal ours, item by item.
    encoder = cf.check_vision_tower(Qwen2_5_VLAdapter(model_dir), hf, Qwen2_5_VLModel)
    assert type(encoder).__name__ == "Qwen2_5_VisionTransformerPretrainedModel"


def test_check_input_refuses_extreme_aspect_ratio(model_dir: Path) -> None:
    adapter = Qwen2_5_VLAdapter(model_dir)
    with pytest.raises(MediaUnsupportedError, match="aspect ratio"):
        adapter.process("image", np.zeros((5, 1200, 3), np.uint8))
    with pytest.raises(MediaUnsupportedError, match="aspect ratio"):
        adapter.process("video", np.zeros((4, 5, 1200, 3), np.uint8))


# --------------------------------------------------------------------------- parity on whole requests


def test_one_image(model_dir: Path, media: Path) -> None:
    checked = cf.check_request(model_dir, FAMILY, {"request_id": "one", "prompt": f"Describe {IMG}.", "images": ["a.jpg"]}, media)
    assert checked.record["path"] == "fast" and checked.record["items"][0]["num_tokens"] == 247


def test_several_images_of_odd_sizes(model_dir: Path, media: Path) -> None:
    checked = cf.check_several_images(model_dir, FAMILY, media, ["b.png", "c.jpg", "d.png", "a.jpg"])
    assert len(checked.record["items"]) == 4


def test_image_video_image_in_prompt_order(mixed: cf.Checked) -> None:
    assert [i["modality"] for i in mixed.record["items"]] == ["image", "video", "image"]
    cf.check_legacy_roundtrip(mixed)


@pytest.mark.parametrize("entry", [VIDEO_NFRAMES, VIDEO_FPS], ids=["nframes", "fps"])
def test_video_alone_and_its_second_per_grid_ts(model_dir: Path, media: Path, tmp_path: Path, entry: dict[str, Any]) -> None:
    line = {"request_id": "vid", "prompt": f"What happens in {VID}?", "videos": [entry]}
    checked = cf.check_request(model_dir, FAMILY, line, media)  # second_per_grid_ts compared as a processor output
    ref = cf.oracle(model_dir, FAMILY, line["prompt"], line, media)
    (item,) = checked.record["items"]
    # The record carries HF's value exactly: temporal_patch_size / (frames / total * fps).
    assert item["second_per_grid_ts"] == float(ref["second_per_grid_ts"][0])
    assert item["second_per_grid_ts"] == (1.5 if "nframes" in entry else 1.0)
    # And the feature dump names it as the processor does.
    outcome = checked.pre.run(checked.line)
    with np.load(dump_features(tmp_path, "vid", outcome.features, outcome.item_features)) as npz:
        np.testing.assert_allclose(npz["item0.second_per_grid_ts"], ref["second_per_grid_ts"], rtol=0, atol=1e-6)
        assert set(npz.files) >= {"item0", "item0.pixel_values_videos", "item0.video_grid_thw"}


def test_chat_messages(model_dir: Path, media: Path) -> None:
    messages = cf.chat(("system", "Be brief."), ("user", {"image": "c.jpg"}, "and the clip", {"video": VIDEO_NFRAMES}, "\ncompare"))
    checked, _ = cf.check_chat(model_dir, FAMILY, messages, media)
    assert checked.record["items"][1]["second_per_grid_ts"] == 1.5
    cf.check_legacy_roundtrip(checked)


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("first", ["video", "image"])
def test_corrupted_expansion_is_a_400(model_dir: Path, media: Path, first: str) -> None:
    media_parts = [VID, IMG] if first == "video" else [IMG, VID]
    line = {"request_id": "bad", "prompt": f"{media_parts[0]} then {media_parts[1]}", "images": ["b.png"],
            "videos": [VIDEO_NFRAMES]}
    checked = cf.check_request(model_dir, FAMILY, line, media)
    assert f"{first} 0" in cf.check_corruptions(checked, ("short_run",), ("expected", f"{first} 0"))["short_run"]
    # Qwen2.5-VL's expansion is one run with no text, so "text" damages the prompt's <|vision_end|> after
    # it (in the tiny vocabulary it becomes <|image_pad|>, the next id): still a 400, whatever it now reads as.
    assert set(cf.check_corruptions(checked, ("text",), ("image",))) == {"text"}


def test_count_mismatch_both_ways_is_a_400(mixed: cf.Checked) -> None:
    a, b = mixed.line["images"]
    # One image placeholder too many (for one image), and one too few (for two): the message names the images.
    cf.assert_alignment_error(cf.rerun(mixed, "many", prompt=f"{IMG} {IMG} {VID}", images=[a]), "image")
    cf.assert_alignment_error(cf.rerun(mixed, "few", prompt=f"{IMG} only", images=[a, b], videos=[]), "image")
    # The whole request (image, video, image) with one image placeholder more or less, as a prompt and as ids.
    prompt = mixed.line["prompt"]
    cf.check_count_mismatches(mixed, (prompt + IMG, prompt.replace(IMG, "", 1)), phrases=("image",))


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
