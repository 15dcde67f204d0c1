"""Qwen2-Audio adapter: clip-by-clip features equal the HF processor on the whole request."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ray_mm.models import Qwen2AudioAdapter, load_adapter


def _clip(seconds: float, freq: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000.0
    return (0.5 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def adapter(qwen2_audio_dir: Path) -> Qwen2AudioAdapter:
    a = load_adapter(qwen2_audio_dir)
    assert isinstance(a, Qwen2AudioAdapter)
    return a


@pytest.fixture(scope="module")
def hf(qwen2_audio_dir: Path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(qwen2_audio_dir)


def test_placeholders_come_from_the_tokenizer(adapter: Qwen2AudioAdapter, hf) -> None:
    assert adapter.placeholder_token_ids == {"audio": hf.tokenizer.convert_tokens_to_ids("<|AUDIO|>")}
    assert adapter.placeholder_token_ids == {"audio": hf.audio_token_id}
    assert adapter.placeholder_texts == {"audio": "<|audio_bos|><|AUDIO|><|audio_eos|>"}
    assert adapter.modalities == frozenset({"audio"})
    assert adapter.vocab_size == len(hf.tokenizer)


def test_two_clips_equal_processor_on_whole_request(adapter: Qwen2AudioAdapter, hf) -> None:
    a, b = _clip(2.5, 440.0, 1), _clip(7.13, 220.0, 2)
    prompt = adapter.apply_chat_template(
        [{"role": "user", "content": [{"type": "audio"}, {"type": "audio"}, {"type": "text", "text": "Same pitch?"}]}]
    )
    assert prompt.count("Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n") == 1
    ref = hf(text=[prompt], audio=[a, b], return_tensors="np")

    items = [adapter.process("audio", x, {})[0] for x in (a, b)]
    for i, item in enumerate(items):
        assert item.modality == "audio" and item.primary == "input_features" and item.grid_thw is None
        feats = item.features["input_features"]
        assert feats.shape == (1, 128, 3000) and feats.dtype == np.float32
        np.testing.assert_allclose(feats[0], ref["input_features"][i], atol=1e-5, rtol=0)
        np.testing.assert_array_equal(item.features["feature_attention_mask"][0], ref["feature_attention_mask"][i])
    assert items[0].num_tokens != items[1].num_tokens
    ids = ref["input_ids"][0].tolist()
    assert sum(i.num_tokens for i in items) == ids.count(hf.audio_token_id)

    # One placeholder per clip, expanded in order: exactly the processor's ids.
    tid = adapter.placeholder_token_ids["audio"]
    counts = iter(i.num_tokens for i in items)
    expanded: list[int] = []
    for t in adapter.tokenize(prompt):
        expanded.extend([t] * next(counts) if t == tid else [t])
    assert expanded == ids


def test_long_clip_is_cut_to_the_30s_chunk_like_the_processor(adapter: Qwen2AudioAdapter, hf) -> None:
    x = _clip(31.0, 330.0, 3)
    ref = hf(text=["<|AUDIO|>"], audio=[x], return_tensors="np")
    (item,) = adapter.process("audio", x)
    np.testing.assert_allclose(item.features["input_features"], ref["input_features"], atol=1e-5, rtol=0)
    assert item.num_tokens == ref["input_ids"][0].tolist().count(hf.audio_token_id) == 750


def test_rejects_bad_input(adapter: Qwen2AudioAdapter) -> None:
    with pytest.raises(ValueError, match="audio"):
        adapter.process("image", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="mono"):
        adapter.process("audio", np.zeros((2, 16000), np.float32))


def test_encoder_rows_equal_num_tokens_and_match_hf_model(adapter: Qwen2AudioAdapter, hf) -> None:
    from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioModel

    torch.manual_seed(0)
    encoder = adapter.build_encoder()
    assert type(encoder).__name__ == "Qwen2AudioEncoder"
    clips = [_clip(1.3, 500.0, 4), _clip(4.0, 300.0, 5)]
    items = [adapter.process("audio", c)[0] for c in clips]
    got = []
    for item in items:
        emb = adapter.encode(encoder, {k: torch.from_numpy(v) for k, v in item.features.items()})
        assert emb.shape == (item.num_tokens, adapter.config.audio_config.d_model)
        got.append(emb)

    # Reference: Qwen2AudioModel.forward on the processor's batch; capture what reaches its projector
    # (the audio tower output) and keep each clip's valid rows, as masked_scatter does.
    model = Qwen2AudioModel(adapter.config).eval()
    model.audio_tower.load_state_dict(encoder.state_dict())
    captured: list[torch.Tensor] = []
    model.multi_modal_projector.register_forward_hook(lambda m, inp, out: captured.append(inp[0]))
    text = adapter.placeholder_texts["audio"] * 2
    ref = hf(text=[text], audio=clips, return_tensors="pt")
    with torch.inference_mode():
        model(
            input_ids=ref["input_ids"],
            attention_mask=ref["attention_mask"],
            input_features=ref["input_features"],
            feature_attention_mask=ref["feature_attention_mask"],
        )
    (tower_out,) = captured
    ids = ref["input_ids"][0].tolist()
    assert sum(i.num_tokens for i in items) == ids.count(hf.audio_token_id)
    for i, (item, emb) in enumerate(zip(items, got, strict=True)):
        torch.testing.assert_close(emb, tower_out[i, : item.num_tokens], atol=1e-4, rtol=1e-4)
