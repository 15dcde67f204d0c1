"""Build a tiny, fully offline Hugging Face model directory for tests and demos.

``make_model(out_dir, family)`` writes everything ``AutoProcessor``,
``AutoTokenizer`` and ``AutoConfig`` need, with no network access:

- a byte-level BPE tokenizer trained with ``tokenizers`` on the built-in corpus
  (:mod:`ray_mm.models.corpus`), with the same normalizer / pre-tokenizer /
  decoder as Qwen2's tokenizer, and the family's special tokens as real special
  tokens;
- a Qwen-style chat template rendering OpenAI-ish content parts into the
  family's placeholder text;
- processor configs (Qwen2-VL image + video processor with small pixel budgets,
  or Whisper feature extractor for Qwen2-Audio);
- ``config.json`` with a tiny vision tower / audio encoder and a tiny text model,
  so building the encoder from config with random init takes milliseconds;
- ``ray_mm_model.json`` with ``{"family": ...}``.

No weights are written: encoders are built from config with random init.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from ray_mm.models.corpus import corpus_lines

Family = Literal["qwen2_vl", "qwen2_audio"]
FAMILIES: tuple[str, ...] = ("qwen2_vl", "qwen2_audio")

MODEL_MARKER = "ray_mm_model.json"

# Same split regex as transformers' Qwen2Tokenizer, so the saved vocab/merges
# tokenize identically once Qwen2Tokenizer rebuilds its backend from them.
_QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

VOCAB_TARGET = 1536

SPECIAL_TOKENS: dict[str, list[str]] = {
    "qwen2_vl": [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ],
    "qwen2_audio": [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|audio_bos|>",
        "<|audio_eos|>",
        "<|AUDIO|>",
    ],
}

# Pixel budgets of the tiny Qwen2-VL processors (factor = patch 14 * merge 2 = 28).
IMAGE_MIN_PIXELS = 4 * 28 * 28  # 3136: 4 merged tokens at least
IMAGE_MAX_PIXELS = 256 * 28 * 28  # 200704: 1920x1080 -> 588x336, 252 tokens
VIDEO_MIN_PIXELS = 4 * 28 * 28  # per frame
VIDEO_MAX_PIXELS = 64 * 28 * 28  # 50176 per frame: 640x360 -> 280x168, 60 tokens per 2 frames

def _chat_template(counters: str, media_parts: str) -> str:
    """A Qwen-style chat template; ``media_parts`` renders one media content part (jinja ``elif`` chain)."""
    return (
        counters
        + "{% for message in messages %}"
        "{% if loop.first and message['role'] != 'system' %}"
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "{% endif %}"
        "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}"
        "{{ message['content'] }}<|im_end|>\n"
        "{% else %}"
        "{% for content in message['content'] %}"
        + media_parts
        + "{% elif 'text' in content %}"
        "{{ content['text'] }}"
        "{% endif %}"
        "{% endfor %}"
        "<|im_end|>\n"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}"
        "<|im_start|>assistant\n"
        "{% endif %}"
    )


QWEN2_VL_CHAT_TEMPLATE = _chat_template(
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}",
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content or 'video_url' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>",
)

QWEN2_AUDIO_CHAT_TEMPLATE = _chat_template(
    "{% set audio_count = namespace(value=0) %}",
    "{% if content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n",
)

_TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}


def _train_tokenizer(family: str):
    """Train a Qwen2-compatible byte-level BPE and wrap it in transformers' Qwen2Tokenizer."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    specials = SPECIAL_TOKENS[family]
    tok = Tokenizer(
        models.BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False, byte_fallback=False)
    )
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TARGET,
        min_frequency=1,
        show_progress=False,
        special_tokens=[AddedToken(s, special=True, normalized=False) for s in specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus_lines(), trainer)
    model = json.loads(tok.to_str())["model"]
    vocab: dict[str, int] = model["vocab"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]

    eos, pad = "<|im_end|>", "<|endoftext|>"
    extra = [s for s in specials if s not in (eos, pad)]
    hf_tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token=eos,
        pad_token=pad,
        extra_special_tokens=extra,
        model_max_length=32768,
    )
    # Special tokens keep the ids the trainer gave them (0..len(specials)-1).
    ids = hf_tok.convert_tokens_to_ids(specials)
    if ids != list(range(len(specials))):  # pragma: no cover - a tokenizers/transformers behaviour change
        raise RuntimeError(f"special token ids moved: {dict(zip(specials, ids))}")
    return hf_tok


def _write_qwen2_vl(out: Path, tokenizer) -> None:
    from transformers import Qwen2VLConfig, Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(
        min_pixels=IMAGE_MIN_PIXELS,
        max_pixels=IMAGE_MAX_PIXELS,
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
    )
    video_processor = Qwen2VLVideoProcessor(
        min_pixels=VIDEO_MIN_PIXELS,
        max_pixels=VIDEO_MAX_PIXELS,
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
        do_sample_frames=False,
        cap_pixels_per_frame=False,
    )
    processor = Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)

    tid = tokenizer.convert_tokens_to_ids
    text_config = dict(_TEXT_CONFIG)
    text_config.update(
        vocab_size=len(tokenizer),
        bos_token_id=tid("<|endoftext|>"),
        eos_token_id=tid("<|im_end|>"),
        pad_token_id=tid("<|endoftext|>"),
        # head_dim 32 -> 16 rotary frequencies split over (t, h, w).
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]},
    )
    config = Qwen2VLConfig(
        text_config=text_config,
        vision_config={
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": text_config["hidden_size"],  # merger output dim == LLM hidden size
            "mlp_ratio": 2,
            "num_heads": 2,
            "in_channels": 3,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=tid("<|image_pad|>"),
        video_token_id=tid("<|video_pad|>"),
        vision_start_token_id=tid("<|vision_start|>"),
        vision_end_token_id=tid("<|vision_end|>"),
        tie_word_embeddings=True,
    )
    config.architectures = ["Qwen2VLForConditionalGeneration"]
    config.save_pretrained(out)


def _write_qwen2_audio(out: Path, tokenizer) -> None:
    from transformers import Qwen2AudioConfig, Qwen2AudioProcessor, WhisperFeatureExtractor

    feature_extractor = WhisperFeatureExtractor(
        feature_size=128,
        sampling_rate=16000,
        hop_length=160,
        chunk_length=30,
        n_fft=400,
        padding_value=0.0,
        return_attention_mask=True,
    )
    processor = Qwen2AudioProcessor(
        feature_extractor=feature_extractor,
        tokenizer=tokenizer,
        chat_template=QWEN2_AUDIO_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)

    tid = tokenizer.convert_tokens_to_ids
    text_config = dict(_TEXT_CONFIG)
    text_config.update(
        model_type="qwen2",
        vocab_size=len(tokenizer),
        bos_token_id=tid("<|endoftext|>"),
        eos_token_id=tid("<|im_end|>"),
        pad_token_id=tid("<|endoftext|>"),
    )
    config = Qwen2AudioConfig(
        audio_config={
            "model_type": "qwen2_audio_encoder",
            "num_mel_bins": 128,
            "encoder_layers": 1,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 64,
            "d_model": 32,
            "max_source_positions": 1500,  # 30 s of 10 ms mel frames, halved by conv2
            "scale_embedding": False,
            "activation_function": "gelu",
        },
        text_config=text_config,
        audio_token_index=tid("<|AUDIO|>"),
    )
    config.architectures = ["Qwen2AudioForConditionalGeneration"]
    config.save_pretrained(out)


def make_model(out_dir: str | Path, family: Family = "qwen2_vl") -> Path:
    """Write a tiny offline model directory for ``family`` into ``out_dir`` and return its path.

    The directory loads with ``AutoProcessor`` / ``AutoTokenizer`` / ``AutoConfig``
    under ``HF_HUB_OFFLINE=1``. Existing files of the same names are overwritten.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(family)
    if family == "qwen2_vl":
        _write_qwen2_vl(out, tokenizer)
    else:
        _write_qwen2_audio(out, tokenizer)
    (out / MODEL_MARKER).write_text(json.dumps({"family": family}, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m ray_mm.models.make_model DIR [--family F]`` (the CLI's ``make-model`` does the same)."""
    import argparse

    parser = argparse.ArgumentParser(prog="make-model", description=__doc__.splitlines()[0])
    parser.add_argument("dir")
    parser.add_argument("--family", default="qwen2_vl", choices=FAMILIES)
    args = parser.parse_args(argv)
    path = make_model(args.dir, args.family)
    print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
