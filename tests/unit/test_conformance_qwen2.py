"""Qwen2-VL and Qwen2-Audio against their HF processors, through the shared conformance helper."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import conformance as cf

IMG, VID = cf.QWEN_IMAGE, cf.QWEN_VIDEO
AUD = "<|audio_bos|><|AUDIO|><|audio_eos|>"
QWEN2_VL = cf.Family("qwen2_vl", IMG, VID)
QWEN2_AUDIO = cf.Family("qwen2_audio", AUD, skip_outputs=frozenset())


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cf.write_media(tmp_path_factory.mktemp("media"), {
        "odd.jpg": (333, 517),
        "wide.png": (640, 200),
        "small.jpg": (90, 120),
        "clip.mp4": (160, 120, 10, 2.0),
        "a.wav": (2.0, 16000, 300),
        "b.wav": (3.0, 44100, 500),
    })


def test_qwen2_vl_mixed_order_and_legacy(family_dir, media: Path) -> None:  # type: ignore[no-untyped-def]
    line = {"request_id": "m", "prompt": f"A{IMG}\n{VID}B {IMG}\n\n{IMG}",
            "images": ["odd.jpg", "wide.png", "small.jpg"], "videos": [{"url": "clip.mp4", "nframes": 4}]}
    checked = cf.check_request(family_dir("qwen2_vl"), QWEN2_VL, line, media)
    assert [i["modality"] for i in checked.record["items"]] == ["image", "video", "image", "image"]
    assert checked.record["path"] == "fast"
    cf.check_legacy_roundtrip(checked)
    cf.check_corruptions(checked, ("short_run",))


def test_qwen2_vl_video_with_fps(family_dir, media: Path) -> None:  # type: ignore[no-untyped-def]
    line = {"request_id": "v", "prompt": f"Watch {VID} now", "videos": [{"url": "clip.mp4", "fps": 2.0}]}
    checked = cf.check_request(family_dir("qwen2_vl"), QWEN2_VL, line, media)
    assert [i["modality"] for i in checked.record["items"]] == ["video"]


def test_qwen2_audio_two_clips(family_dir, media: Path) -> None:  # type: ignore[no-untyped-def]
    line = {"request_id": "a", "prompt": f"First {AUD} then\n{AUD}.", "audios": ["a.wav", "b.wav"]}
    checked = cf.check_request(family_dir("qwen2_audio"), QWEN2_AUDIO, line, media)
    assert [(i["modality"], i["index"]) for i in checked.record["items"]] == [("audio", 0), ("audio", 1)]
    cf.check_legacy_roundtrip(checked)
