"""Qwen2.5-Omni (``qwen2_5_omni``) against its HF processor (``Qwen2_5OmniProcessor``, in tree), on
whole requests with images, videos and audio together.

Processing is the generic adapter's (the Omni processors' ``_process_videos`` takes ``__call__``'s
whole merged kwargs: handled in ``GenericAdapter.run_subprocessor``); the family adapter only builds
the thinker as the encoder. Every expansion is one bare run (``<|IMAGE|>`` / ``<|VIDEO|>`` /
``<|AUDIO|>`` x n) inside the prompt's own ``<|vision_bos|>...<|vision_eos|>`` /
``<|audio_bos|>...<|audio_eos|>``; audio features are Whisper log-mels padded to 30 s, so an
item's arrays never depend on the others (``feature_attention_mask`` marks its length).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import conformance as cf

IMG = "<|vision_bos|><|IMAGE|><|vision_eos|>"
VID = "<|vision_bos|><|VIDEO|><|vision_eos|>"
AUD = "<|audio_bos|><|AUDIO|><|audio_eos|>"
BARE = {"image": "<|IMAGE|>", "video": "<|VIDEO|>", "audio": "<|AUDIO|>"}
FAMILY = cf.Family("qwen2_5_omni", IMG, VID)
NFRAMES = {"url": "v.mp4", "nframes": 4}


model, media = cf.family_fixtures("qwen2_5_omni", {**cf.USUAL_MEDIA, "long.wav": (2.5, 44100), "short.wav": (0.7, 16000, 300.0)})


@pytest.fixture(scope="module")
def mixed(model: Path, media: Path) -> cf.Checked:
    """Audio, image, video, image, audio in that prompt order, text and newlines right against each."""
    line = {"request_id": "mixed", "prompt": f"A{AUD}\n{IMG}x{VID}\nB {IMG}.{AUD}",
            "images": ["a.jpg", "b.png"], "videos": [NFRAMES], "audios": ["long.wav", "short.wav"]}
    return cf.check_request(model, FAMILY, line, media)


def test_adapter_and_tokens(model: Path) -> None:
    from ray_mm.models import load_adapter
    from ray_mm.models.qwen2_5_omni import Qwen2_5OmniAdapter

    adapter = load_adapter(model)
    assert isinstance(adapter, Qwen2_5OmniAdapter) and adapter.name == "qwen2_5_omni"
    assert adapter.modalities == {"image", "video", "audio"}
    assert adapter.placeholder_tokens == adapter.feature_tokens == BARE
    thinker = adapter.config.thinker_config
    assert adapter.feature_token_ids == {"image": thinker.image_token_index, "video": thinker.video_token_index,
                                         "audio": thinker.audio_token_index}


def test_one_image(model: Path, media: Path) -> None:
    checked = cf.check_request(model, FAMILY, {"request_id": "one", "prompt": f"Describe {IMG}.", "images": ["a.jpg"]}, media)
    (item,) = checked.record["items"]
    assert checked.record["path"] == "fast" and item["num_tokens"] == item["grid_thw"][1] * item["grid_thw"][2] // 4
    cf.check_legacy_roundtrip(checked)


def test_several_images_of_odd_sizes(model: Path, media: Path) -> None:
    checked = cf.check_several_images(model, FAMILY, media)
    assert len(checked.record["items"]) == 4


def test_video_alone(model: Path, media: Path) -> None:
    checked = cf.check_request(model, FAMILY, {"request_id": "vid", "prompt": f"What happens in {VID}?", "videos": [NFRAMES]}, media)
    (item,) = checked.record["items"]
    assert checked.record["path"] == "fast" and item["grid_thw"][0] == 2 and len(item["offsets"]) == 1
    cf.check_legacy_roundtrip(checked)


def test_audio_of_two_lengths_and_rates(model: Path, media: Path) -> None:
    line = {"request_id": "aud", "prompt": f"First {AUD} then\n{AUD}.", "audios": ["long.wav", "short.wav"]}
    checked = cf.check_request(model, FAMILY, line, media)
    first, second = checked.record["items"]
    # 10 ms mel frames, halved twice: 2.5 s -> 63 tokens, 0.7 s -> 18.
    assert (first["num_tokens"], second["num_tokens"]) == (62, 17)
    assert first["feature_shape"] == [1, 128, 3000]  # padded to 30 s, as for the whole request
    cf.check_legacy_roundtrip(checked)


def test_every_modality_in_prompt_order(mixed: cf.Checked) -> None:
    rec = mixed.record
    assert rec["path"] == "fast"
    assert [(i["modality"], i["index"]) for i in rec["items"]] == [
        ("audio", 0), ("image", 0), ("video", 0), ("image", 1), ("audio", 1)]
    cf.check_legacy_roundtrip(mixed)


@pytest.mark.parametrize("prompt", [
    f"\n{AUD}\n{IMG}\n{VID}\n",  # newlines right against the wrapped placeholders
    "x<|AUDIO|>\ny <|IMAGE|>\n<|VIDEO|>z",  # bare placeholders against text
    f"{IMG}\n\n{AUD}\n\nend",
    "<|IMAGE|><|AUDIO|><|VIDEO|>",  # side by side
], ids=["wrapped", "bare", "double-newlines", "side-by-side"])
def test_placeholders_against_text(model: Path, media: Path, prompt: str) -> None:
    line = {"request_id": "edge", "prompt": prompt, "images": ["d.png"] if "IMAGE" in prompt else [],
            "videos": [NFRAMES] if "VIDEO" in prompt else [], "audios": ["short.wav"] if "AUDIO" in prompt else []}
    checked = cf.check_request(model, FAMILY, line, media)
    assert checked.record["path"] == "fast"
    cf.check_legacy_roundtrip(checked)


def test_chat_messages(model: Path, media: Path) -> None:
    messages = cf.chat(
        ("system", "Be brief."),
        ("user", {"audio": "short.wav"}, "and\n", {"image": "c.jpg"}, {"video": {"url": "v.mp4", "nframes": 4}}),
        ("assistant", "Sure."),
        ("user", {"image": "b.png"}, "again?"),
    )
    checked, hf_text = cf.check_chat(model, FAMILY, messages, media)
    assert f"{AUD}and\n{IMG}{VID}" in hf_text
    assert checked.record["path"] == "fast"
    assert [i["modality"] for i in checked.record["items"]] == ["audio", "image", "video", "image"]
    cf.check_legacy_roundtrip(checked)


def test_corrupted_expansions_are_400s(mixed: cf.Checked) -> None:
    # Every Omni expansion is one bare run: a short run is the only damage inside one (the "text" after
    # the first run is the prompt's <|audio_eos|>, not the item's). Each modality, then the first item.
    for modality in ("audio", "image", "video"):
        item = next(i for i in mixed.record["items"] if i["modality"] == modality)
        ids = list(mixed.hf_ids)
        del ids[item["offsets"][0][0]]
        cf.assert_alignment_error(cf.run_ids(mixed, f"short-{modality}", ids), "expected", f"{modality} {item['index']}")
    assert set(cf.check_corruptions(mixed, ("short_run",))) == {"short_run"}


def test_count_mismatches_both_ways_are_400s(mixed: cf.Checked) -> None:
    prompts = (f"A{AUD}\n{IMG}x{VID}\nB {IMG}.{AUD}{AUD}", f"A{AUD}\n{IMG}x{VID}\nB {IMG}.", f"A{AUD}{VID}{VID}{IMG}{IMG}{AUD}")
    messages = cf.check_count_mismatches(mixed, prompts, modality="audio")
    assert len(messages) == 5  # each prompt, one placeholder too many as ids, one item too few


def test_encoder_gives_one_row_per_feature_token(mixed: cf.Checked) -> None:
    """The thinker's towers on each item: one row per feature token, and for audio the same rows as the
    thinker's own feature path over both clips at once."""
    encoded = cf.check_encoder_rows(mixed.pre, mixed.line, hidden_size=mixed.pre.adapter.config.thinker_config.text_config.hidden_size)
    assert type(encoded.encoder).__name__ == "Qwen2_5OmniThinkerModel"
    assert {i["modality"] for i in encoded.outcome.record["items"]} == {"image", "video", "audio"}
    audios = cf.pack(encoded.outcome.item_features, ["input_features", "feature_attention_mask"])
    cf.check_whole_request_rows(encoded, audios, method="get_audio_features", modality="audio")
