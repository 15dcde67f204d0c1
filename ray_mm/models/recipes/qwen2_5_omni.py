"""Qwen2.5-Omni (``Qwen2_5OmniProcessor``): images, videos and audio in one request.

Images and videos are Qwen2-VL patches (patch 14, merge 2, temporal 2): ``<|IMAGE|>`` /
``<|VIDEO|>`` x n; audio is Whisper log-mel features padded to 30 s, ``<|AUDIO|>`` x n. The
prompt wraps them as the model's chat template does: ``<|vision_bos|>...<|vision_eos|>`` and
``<|audio_bos|>...<|audio_eos|>``. ``config.json`` is the hub layout: a thinker (audio tower,
vision tower, text model) and a talker / token2wav that nothing here builds. The settings it
shares come from the recipes of Qwen2-VL (image / video processors, M-RoPE), Qwen2.5-VL (vision
tower) and Qwen2-Audio (feature extractor, audio encoder).
"""

from __future__ import annotations

from ray_mm.models.families import QWEN_CHAT_SPECIALS, TEXT_CONFIG, MediaPart
from ray_mm.models.recipes import Recipe, Tok, text_config
from ray_mm.models.recipes.qwen2_5_vl import VISION_TOWER
from ray_mm.models.recipes.qwen2_audio import AUDIO_ENCODER, WHISPER_FEATURES
from ray_mm.models.recipes.qwen2_vl import IMAGE_PROCESSOR, MROPE, VIDEO_FRAMES

OMNI_NAMED_TOKENS = (
    ("image_token", "<|IMAGE|>"),
    ("video_token", "<|VIDEO|>"),
    ("audio_token", "<|AUDIO|>"),
    ("vision_bos_token", "<|vision_bos|>"),
    ("vision_eos_token", "<|vision_eos|>"),
    ("audio_bos_token", "<|audio_bos|>"),
    ("audio_eos_token", "<|audio_eos|>"),
)

RECIPE = Recipe(
    name="qwen2_5_omni",
    processor_class="Qwen2_5OmniProcessor",
    special_tokens=QWEN_CHAT_SPECIALS + tuple(tok for _, tok in OMNI_NAMED_TOKENS),
    named_tokens=OMNI_NAMED_TOKENS,
    media_parts=(
        MediaPart("image", "<|vision_bos|><|IMAGE|><|vision_eos|>"),
        MediaPart("video", "<|vision_bos|><|VIDEO|><|vision_eos|>"),
        MediaPart("audio", "<|audio_bos|><|AUDIO|><|audio_eos|>"),
    ),
    sub_processors=(
        IMAGE_PROCESSOR,
        # No size here: the processor's class-level videos_kwargs (128..768 merged tokens a frame) win at
        # call time, as they do for the real checkpoint, and ray-mm takes the same merged kwargs.
        ("video_processor", "Qwen2VLVideoProcessor", VIDEO_FRAMES),
        ("feature_extractor", "WhisperFeatureExtractor", WHISPER_FEATURES),
    ),
    config_class="Qwen2_5OmniConfig",
    config={
        "thinker_config": {
            "audio_config": {**AUDIO_ENCODER, "n_window": 100, "output_dim": TEXT_CONFIG["hidden_size"]},
            "vision_config": VISION_TOWER,
            # head_dim 32 -> 16 rotary frequencies split over (t, h, w).
            "text_config": text_config(rope_parameters=MROPE),
            "audio_token_index": Tok("<|AUDIO|>"),
            "image_token_index": Tok("<|IMAGE|>"),
            "video_token_index": Tok("<|VIDEO|>"),
            "audio_start_token_id": Tok("<|audio_bos|>"),
            "audio_end_token_id": Tok("<|audio_eos|>"),
        },
        # The talker (speech out) is never built; tiny, with its token ids in the tiny vocabulary.
        "talker_config": {
            "hidden_size": 64, "embedding_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32, "vocab_size": 64,
            "tts_codec_start_token_id": 60, "tts_codec_end_token_id": 61, "tts_codec_pad_token_id": 62,
            "tts_codec_mask_token_id": 63,
            "tts_text_start_token_id": Tok("<|endoftext|>"), "tts_text_end_token_id": Tok("<|endoftext|>"),
            "tts_text_pad_token_id": Tok("<|endoftext|>"),
            "audio_token_index": Tok("<|AUDIO|>"), "image_token_index": Tok("<|IMAGE|>"),
            "video_token_index": Tok("<|VIDEO|>"), "vision_start_token_id": Tok("<|vision_bos|>"),
            "vision_end_token_id": Tok("<|vision_eos|>"), "audio_start_token_id": Tok("<|audio_bos|>"),
            "audio_end_token_id": Tok("<|audio_eos|>"),
            "rope_parameters": MROPE,
        },
        "enable_audio_output": False,  # ray-mm feeds the thinker; speech output is the talker's
    },
    architectures=("Qwen2_5OmniForConditionalGeneration",),
)
