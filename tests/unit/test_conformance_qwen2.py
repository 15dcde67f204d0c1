"""Qwen2-VL and Qwen2-Audio against their HF processors, through the shared conformance helper."""

from __future__ import annotations

from pathlib import Path

import pytest

from ray_mm.synth import make_audio, make_image, make_video
from tests.conformance import Family, check_legacy_roundtrip, check_request, corrupt_first_item

IMG = "<|vision_start|><|image_pad|><|vision_end|>"
VID = "<|vision_start|><|video_pad|><|vision_end|>"
AUD = "<|audio_bos|><|AUDIO|><|audio_eos|>"
QWEN2_VL = Family("qwen2_vl", IMG, VID)
QWEN2_AUDIO = Family("qwen2_audio", AUD, skip_outputs=frozenset())


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("media")
    (d / "odd.jpg").write_bytes(make_image(333, 517, seed=1))
    (d / "wide.png").write_bytes(make_image(640, 200, "PNG", seed=2))
    (d / "small.jpg").write_bytes(make_image(90, 120, seed=3))
    (d / "clip.mp4").write_bytes(make_video(160, 120, fps=10, seconds=2.0))
    (d / "a.wav").write_bytes(make_audio(2.0, 16000, "wav", freq=300))
    (d / "b.wav").write_bytes(make_audio(3.0, 44100, "wav", freq=500))
    return d


def test_qwen2_vl_mixed_order_and_legacy(family_dir, media: Path) -> None:  # type: ignore[no-untyped-def]
    line = {"request_id": "m", "prompt": f"A{IMG}\n{VID}B {IMG}\n\n{IMG}",
            "images": ["odd.jpg", "wide.png", "small.jpg"], "videos": [{"url": "clip.mp4", "nframes": 4}]}
    checked = check_request(family_dir("qwen2_vl"), QWEN2_VL, line, media)
    assert [i["modality"] for i in checked.record["items"]] == ["image", "video", "image", "image"]
    assert checked.record["path"] == "fast"
    check_legacy_roundtrip(checked)
    bad = checked.pre.run({"request_id": "bad", "input_ids": corrupt_first_item(checked, "short_run"),
                           "skip_tokenizer_init": True, "images": checked.line["images"],
                           "videos": checked.line["videos"]}).record
    assert not bad["ok"] and bad["error"]["status"] == 400 and "expected" in bad["error"]["message"]


def test_qwen2_vl_video_with_fps(family_dir, media: Path) -> None:  # type: ignore[no-untyped-def]
    line = {"request_id": "v", "prompt": f"Watch {VID} now", "videos": [{"url": "clip.mp4", "fps": 2.0}]}
    check_request(family_dir("qwen2_vl"), QWEN2_VL, line, media)


def test_qwen2_audio_two_clips(family_dir, media: Path) -> None:  # type: ignore[no-untyped-def]
    line = {"request_id": "a", "prompt": f"First {AUD} then\n{AUD}.", "audios": ["a.wav", "b.wav"]}
    checked = check_request(family_dir("qwen2_audio"), QWEN2_AUDIO, line, media)
    check_legacy_roundtrip(checked)
