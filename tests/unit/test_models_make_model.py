"""make_model: tiny offline model directories that Auto* classes load with the hub switched off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ray_mm.models.make_model import SPECIAL_TOKENS, make_model

VL_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
AUDIO_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|audio_eos|>", "<|AUDIO|>"]


def test_hub_is_offline_in_tests() -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_qwen2_vl_dir_loads_with_auto_classes(qwen2_vl_dir: Path) -> None:
    from transformers import AutoConfig, AutoProcessor, AutoTokenizer

    processor = AutoProcessor.from_pretrained(qwen2_vl_dir)
    config = AutoConfig.from_pretrained(qwen2_vl_dir)
    tokenizer = AutoTokenizer.from_pretrained(qwen2_vl_dir)
    assert type(processor).__name__ == "Qwen2VLProcessor"
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessor"  # the torchvision ("fast") backend
    assert type(processor.video_processor).__name__ == "Qwen2VLVideoProcessor"
    assert config.model_type == "qwen2_vl"
    assert 1000 <= len(tokenizer) <= 2000
    assert config.text_config.vocab_size == len(tokenizer)
    # Config token ids agree with the tokenizer.
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert config.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    # Tiny vision tower.
    assert config.vision_config.depth <= 2 and config.vision_config.embed_dim <= 64
    assert config.vision_config.hidden_size == config.text_config.hidden_size
    ip = processor.image_processor
    assert (ip.patch_size, ip.merge_size, ip.temporal_patch_size) == (14, 2, 2)
    assert ip.size["longest_edge"] < 1920 * 1080
    assert json.loads((qwen2_vl_dir / "ray_mm_model.json").read_text()) == {"family": "qwen2_vl"}


def test_qwen2_audio_dir_loads_with_auto_classes(qwen2_audio_dir: Path) -> None:
    from transformers import AutoConfig, AutoProcessor

    processor = AutoProcessor.from_pretrained(qwen2_audio_dir)
    config = AutoConfig.from_pretrained(qwen2_audio_dir)
    assert type(processor).__name__ == "Qwen2AudioProcessor"
    fe = processor.feature_extractor
    assert type(fe).__name__ == "WhisperFeatureExtractor"
    assert (fe.feature_size, fe.sampling_rate, fe.chunk_length) == (128, 16000, 30)
    assert config.model_type == "qwen2_audio"
    assert config.audio_token_id == processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    assert config.audio_config.num_mel_bins == 128
    assert config.audio_config.encoder_layers <= 2 and config.audio_config.d_model <= 64
    assert json.loads((qwen2_audio_dir / "ray_mm_model.json").read_text()) == {"family": "qwen2_audio"}


@pytest.mark.parametrize(("fixture", "specials"), [("qwen2_vl_dir", VL_SPECIALS), ("qwen2_audio_dir", AUDIO_SPECIALS)])
def test_special_tokens_are_single_special_tokens(fixture: str, specials: list[str], request: pytest.FixtureRequest) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(request.getfixturevalue(fixture))
    assert SPECIAL_TOKENS[fixture.removesuffix("_dir")] == specials
    for tok in specials:
        tid = tokenizer.convert_tokens_to_ids(tok)
        assert isinstance(tid, int) and tid != tokenizer.unk_token_id
        assert tok in tokenizer.all_special_tokens
        # Glued to text on both sides, a special token stays one token.
        ids = tokenizer(f"word{tok}word")["input_ids"]
        assert ids.count(tid) == 1, (tok, tokenizer.convert_ids_to_tokens(ids))
        assert tokenizer.decode([tid]) == tok
    # Ordinary text round-trips through the byte-level BPE.
    text = "The quick brown fox, 1080p! Ünïcödé ok?"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_qwen2_vl_chat_template_renders_placeholders(qwen2_vl_dir: Path) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(qwen2_vl_dir)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "text", "text": "and"},
                {"type": "video"},
                {"type": "text", "text": "What is this?"},
            ],
        }
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>and"
        "<|vision_start|><|video_pad|><|vision_end|>What is this?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_qwen2_audio_chat_template_renders_placeholders(qwen2_audio_dir: Path) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(qwen2_audio_dir)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "audio"}, {"type": "audio"}, {"type": "text", "text": "Same?"}]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
        "Audio 2: <|audio_bos|><|AUDIO|><|audio_eos|>\nSame?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_make_model_is_deterministic_and_fast(tmp_path: Path, qwen2_vl_dir: Path) -> None:
    t0 = time.perf_counter()
    out = make_model(tmp_path / "again", "qwen2_vl")
    elapsed = time.perf_counter() - t0
    assert elapsed < 5.0  # transformers is already imported; training itself takes well under 1 s
    for name in ("tokenizer.json", "config.json", "processor_config.json"):
        assert (out / name).read_bytes() == (qwen2_vl_dir / name).read_bytes(), name


def test_make_model_rejects_unknown_family(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown family"):
        make_model(tmp_path, "llava")  # type: ignore[arg-type]


def test_make_model_loads_in_a_fresh_offline_process(qwen2_audio_dir: Path, tmp_path: Path) -> None:
    """A separate interpreter with the hub off loads the directory (no cached state from this process)."""
    code = (
        "import sys\n"
        "from transformers import AutoProcessor, AutoConfig\n"
        "p = AutoProcessor.from_pretrained(sys.argv[1]); c = AutoConfig.from_pretrained(sys.argv[1])\n"
        "print(type(p).__name__, c.model_type)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    res = subprocess.run([sys.executable, "-c", code, str(qwen2_audio_dir)], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["Qwen2AudioProcessor", "qwen2_audio"]
