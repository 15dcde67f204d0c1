"""End-to-end parity: ray-mm's pipeline (items one at a time) against the HF processor on the whole request.

The oracle is ``AutoProcessor`` called once with the full prompt and every
media item; ray-mm tokenizes, processes each item separately and aligns.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import AutoProcessor

from ray_mm.config import MediaPolicy, RayMMConfig
from ray_mm.media import MediaLoader
from ray_mm.media.synth import make_audio, make_image, make_video
from ray_mm.pipeline import Preprocessor
from ray_mm.types import MediaSpec

IMG = "<|vision_start|><|image_pad|><|vision_end|>"
VID = "<|vision_start|><|video_pad|><|vision_end|>"
AUD = "<|audio_bos|><|AUDIO|><|audio_eos|>"


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("media")
    (d / "tiny.png").write_bytes(make_image(20, 30, "PNG", seed=1))
    (d / "odd.jpg").write_bytes(make_image(333, 517, seed=2))
    (d / "large.jpg").write_bytes(make_image(1920, 1080, seed=3))
    (d / "gray.jpg").write_bytes(make_image(200, 150, mode="L", seed=4))
    (d / "cmyk.jpg").write_bytes(make_image(180, 240, mode="CMYK", seed=5))
    (d / "clip.mp4").write_bytes(make_video(160, 120, fps=10, seconds=3.0, gop=5))
    (d / "a1.wav").write_bytes(make_audio(1.5, 16000, "wav", freq=300))
    (d / "a2.wav").write_bytes(make_audio(4.0, 44100, "wav", freq=500))
    return d


def _config(media_dir: Path) -> RayMMConfig:
    return RayMMConfig(media=MediaPolicy(allowed_local_media_path=str(media_dir)))


def _hf_image(path: Path) -> Image.Image:
    # The oracle decodes with Pillow on its own; the processor does the RGB conversion.
    return Image.open(io.BytesIO(path.read_bytes()))


def _split(concat: np.ndarray, grids: np.ndarray) -> list[np.ndarray]:
    sizes = [int(np.prod(g)) for g in grids]
    return np.split(concat, np.cumsum(sizes)[:-1])


def test_images_and_video_mixed_match_processor(qwen2_vl_dir: Path, media_dir: Path) -> None:
    names = ["tiny.png", "odd.jpg", "large.jpg", "gray.jpg", "cmyk.jpg"]
    prompt = f"<|im_start|>user\nA {IMG} B {IMG} then {VID} C {IMG} D {IMG} E {IMG}<|im_end|>\n"
    line = {
        "request_id": "mix",
        "prompt": prompt,
        "images": [str(media_dir / n) for n in names],
        "videos": [{"url": str(media_dir / "clip.mp4"), "fps": 2.0}],
    }
    pre = Preprocessor(qwen2_vl_dir, _config(media_dir))
    outcome = pre.run(line)
    assert outcome.ok, outcome.record

    # The oracle gets the same sampled frames ray-mm decoded (decode is ray-mm's; processing is compared).
    video = MediaLoader(_config(media_dir)).load(MediaSpec("video", 0, str(media_dir / "clip.mp4"), {"fps": 2.0}, "mix"))
    processor = AutoProcessor.from_pretrained(str(qwen2_vl_dir), local_files_only=True)
    ref = processor(
        text=[prompt], images=[_hf_image(media_dir / n) for n in names], videos=[video.data.frames], return_tensors="np"
    )
    rec = outcome.record
    assert rec["input_ids"] == ref["input_ids"][0].tolist()
    assert rec["path"] == "fast"

    images = [it for it in rec["items"] if it["modality"] == "image"]
    videos = [it for it in rec["items"] if it["modality"] == "video"]
    assert [it["grid_thw"] for it in images] == ref["image_grid_thw"].tolist()
    assert [it["grid_thw"] for it in videos] == ref["video_grid_thw"].tolist()
    # Prompt order: image, image, video, image, image, image.
    assert [it["modality"] for it in rec["items"]] == ["image", "image", "video", "image", "image", "image"]

    ref_images = _split(ref["pixel_values"], ref["image_grid_thw"])
    features = outcome.features
    ours_images = [f for f, it in zip(features, rec["items"]) if it["modality"] == "image"]
    for ours, theirs in zip(ours_images, ref_images, strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    ours_video = next(f for f, it in zip(features, rec["items"]) if it["modality"] == "video")
    np.testing.assert_allclose(ours_video, ref["pixel_values_videos"], atol=1e-5, rtol=0)

    # Offsets point at runs of the right token and length in the processor's ids.
    ids = np.asarray(ref["input_ids"][0])
    for it in rec["items"]:
        (start, end), = it["offsets"]
        token = processor.image_token_id if it["modality"] == "image" else processor.video_token_id
        assert end - start + 1 == it["num_tokens"]
        assert (ids[start : end + 1] == token).all()
        assert ids[start - 1] != token and (end + 1 == len(ids) or ids[end + 1] != token)


def test_legacy_scan_on_processor_ids_is_unchanged(qwen2_vl_dir: Path, media_dir: Path) -> None:
    prompt = f"{IMG}x {IMG} y {IMG}"
    images = [str(media_dir / n) for n in ("odd.jpg", "tiny.png", "gray.jpg")]
    pre = Preprocessor(qwen2_vl_dir, _config(media_dir))
    fast = pre.run({"request_id": "f", "prompt": prompt, "images": images}).record
    processor = AutoProcessor.from_pretrained(str(qwen2_vl_dir), local_files_only=True)
    ref_ids = processor(text=[prompt], images=[_hf_image(Path(p)) for p in images], return_tensors="np")["input_ids"][0]
    ref_ids = ref_ids.tolist()

    legacy = pre.run({"request_id": "l", "input_ids": ref_ids, "skip_tokenizer_init": True, "images": images}).record
    assert legacy["ok"], legacy
    assert legacy["path"] == "legacy"
    assert legacy["input_ids"] == ref_ids
    assert [it["offsets"] for it in legacy["items"]] == [it["offsets"] for it in fast["items"]]
    assert [it["hash"] for it in legacy["items"]] == [it["hash"] for it in fast["items"]]

    # Mixed: first image already expanded, the others still single placeholders.
    image_pad = processor.image_token_id
    first_len = fast["items"][0]["num_tokens"]
    start = fast["items"][0]["offsets"][0][0]
    compact = pre.adapter.tokenize(prompt)
    k = compact.index(image_pad)
    mixed = compact[:k] + [image_pad] * first_len + compact[k + 1 :]
    out = pre.run({"request_id": "m", "input_ids": mixed, "skip_tokenizer_init": True, "images": images}).record
    assert out["ok"] and out["input_ids"] == ref_ids and out["items"][0]["offsets"][0][0] == start

    # A run matching neither 1 nor the item's count fails this request only, naming both counts.
    bad = compact[:k] + [image_pad] * (first_len + 3) + compact[k + 1 :]
    err = pre.run({"request_id": "b", "input_ids": bad, "skip_tokenizer_init": True, "images": images}).record
    assert not err["ok"] and err["error"]["type"] == "AlignmentError" and err["error"]["status"] == 400
    assert str(first_len + 3) in err["error"]["message"] and str(first_len) in err["error"]["message"]
    assert "image 0" in err["error"]["message"]


def test_two_audio_clips_match_processor(qwen2_audio_dir: Path, media_dir: Path) -> None:
    prompt = f"<|im_start|>user\nAudio 1: {AUD}\nAudio 2: {AUD}\nWhich is higher?<|im_end|>\n"
    line = {"request_id": "au", "prompt": prompt, "audios": [str(media_dir / "a1.wav"), str(media_dir / "a2.wav")]}
    pre = Preprocessor(qwen2_audio_dir, _config(media_dir))
    outcome = pre.run(line)
    assert outcome.ok, outcome.record
    loader = MediaLoader(_config(media_dir))
    waves = [loader.load(MediaSpec("audio", k, str(media_dir / n), {}, "au")).data for k, n in enumerate(["a1.wav", "a2.wav"])]
    processor = AutoProcessor.from_pretrained(str(qwen2_audio_dir), local_files_only=True)
    ref = processor(text=[prompt], audio=waves, return_tensors="np", sampling_rate=16000)
    assert outcome.record["input_ids"] == ref["input_ids"][0].tolist()
    for k, ours in enumerate(outcome.features):
        np.testing.assert_allclose(ours[0], ref["input_features"][k], atol=1e-5, rtol=0)
    counts = [it["num_tokens"] for it in outcome.record["items"]]
    assert counts[0] < counts[1]  # 1.5 s against 4 s of audio


def test_frames_adapter_maps_frames_onto_image_placeholders(qwen2_vl_dir: Path, media_dir: Path) -> None:
    loader = MediaLoader(_config(media_dir))
    video = loader.load(MediaSpec("video", 0, str(media_dir / "clip.mp4"), {"nframes": 4}, "fr")).data
    k = len(video.frames)
    prompt = f"Before {IMG} " + " ".join(IMG for _ in range(k)) + " after"
    line = {
        "request_id": "fr",
        "prompt": prompt,
        "images": [str(media_dir / "odd.jpg"), {"url": str(media_dir / "clip.mp4"), "kind": "video", "nframes": 4}],
    }
    pre = Preprocessor(qwen2_vl_dir, _config(media_dir), adapter="qwen2_vl_frames")
    outcome = pre.run(line)
    assert outcome.ok, outcome.record
    rec = outcome.record
    assert rec["path"] == "legacy" and len(rec["items"]) == 1 + k
    processor = AutoProcessor.from_pretrained(str(qwen2_vl_dir), local_files_only=True)
    frames = [Image.fromarray(f) for f in video.frames]
    ref = processor(text=[prompt], images=[_hf_image(media_dir / "odd.jpg"), *frames], return_tensors="np")
    assert rec["input_ids"] == ref["input_ids"][0].tolist()
    assert [it["grid_thw"] for it in rec["items"]] == ref["image_grid_thw"].tolist()
    for ours, theirs in zip(outcome.features, _split(ref["pixel_values"], ref["image_grid_thw"]), strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    assert [it.get("source", {}).get("index") for it in rec["items"][1:]] == [1] * k


def test_one_bad_request_does_not_affect_others(qwen2_vl_dir: Path, media_dir: Path) -> None:
    pre = Preprocessor(qwen2_vl_dir, _config(media_dir))
    good = {"request_id": "g", "prompt": f"{IMG}", "images": [str(media_dir / "odd.jpg")]}
    too_many = {"request_id": "p", "prompt": f"{IMG} {IMG}", "images": [str(media_dir / "odd.jpg")]}
    too_few = {"request_id": "q", "prompt": f"{IMG}", "images": [str(media_dir / "odd.jpg")] * 2}
    records = [pre.run(line).record for line in (good, too_many, good | {"request_id": "g2"}, too_few)]
    assert [r["ok"] for r in records] == [True, False, True, False]
    assert "more image placeholders" in records[1]["error"]["message"]
    assert "2 image items but only 1" in records[3]["error"]["message"]



def test_items_per_request_cap_refuses_the_request_before_any_fetch(qwen2_vl_dir: Path, media_dir: Path) -> None:
    policy = MediaPolicy(allowed_local_media_path=str(media_dir), max_items_per_request=3)
    pre = Preprocessor(qwen2_vl_dir, RayMMConfig(media=policy))
    fetched: list[str] = []
    process = pre.process_item
    pre.process_item = lambda spec: (fetched.append(spec.label), process(spec))[1]  # type: ignore[method-assign]
    at_cap = {"request_id": "at", "prompt": IMG * 2 + VID, "images": [str(media_dir / "tiny.png")] * 2,
              "videos": [{"url": str(media_dir / "clip.mp4"), "nframes": 4}]}
    over = {"request_id": "over", "prompt": IMG * 3 + VID, "images": [str(media_dir / "tiny.png")] * 3,
            "videos": [str(media_dir / "clip.mp4")]}
    assert pre.run(at_cap).record["ok"]
    fetched.clear()
    record = pre.run(over).record
    assert not record["ok"]
    assert record["error"]["type"] == "MediaLimitError" and record["error"]["status"] == 413
    assert "4 media items" in record["error"]["message"] and "request over" in record["error"]["message"]
    assert fetched == []


def test_uint8_transport_normalised_later_matches_processor(qwen2_vl_dir: Path, media_dir: Path) -> None:
    names = ["odd.jpg", "large.jpg", "cmyk.jpg"]
    prompt = f"{IMG} {IMG} {VID} {IMG}"
    line = {"request_id": "u8", "prompt": prompt, "images": [str(media_dir / n) for n in names],
            "videos": [{"url": str(media_dir / "clip.mp4"), "nframes": 4}]}
    base = _config(media_dir)
    pre8 = Preprocessor(qwen2_vl_dir, base.model_copy(update={"transport": "uint8"}))
    req = pre8.prepare(line)
    processed = [pre8.process_item(spec) for spec in req.request.items()]
    shipped = [p for group in processed for p in group]
    # What travels: each image / video once as its resized uint8 pixels (F, H, W, 3), 1/8 of the float32 bytes.
    assert all(p.feature.dtype == np.uint8 and p.feature.ndim == 4 and p.feature.shape[-1] == 3 for p in shipped)
    assert [p.meta.feature_shape for p in shipped] == [list(p.feature.shape) for p in shipped]
    float_pre = Preprocessor(qwen2_vl_dir, base.model_copy(update={"transport": "float32"}))
    assert float_pre.transport == "float32" and pre8.transport == "uint8"
    ref = float_pre.run(line)
    assert ref.ok
    out8 = pre8.run(line)
    assert out8.record["input_ids"] == ref.record["input_ids"]
    for ours, theirs in zip(out8.features, ref.features, strict=True):
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    # And normalised the way a GPU worker does it, on torch tensors.
    import torch

    for item in shipped:
        finished = pre8.adapter.finish_features({k: torch.from_numpy(v) for k, v in item.features.items()})
        float_item = float_pre.process_item(next(s for s in req.request.items() if s.modality == item.meta.modality
                                                 and s.index == item.meta.index))[0]
        np.testing.assert_allclose(finished[item.primary].numpy(), float_item.feature, atol=1e-5, rtol=0)
