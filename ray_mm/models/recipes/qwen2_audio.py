"""Qwen2-Audio (``Qwen2AudioProcessor``): an audio part is ``Audio k: <|audio_bos|><|AUDIO|><|audio_eos|>``
then a newline, ``<|AUDIO|>`` x n the processor's expansion of Whisper log-mel features (128 bins,
10 ms hops, padded to 30 s).

Tiny: a one-layer Whisper-style audio encoder (:data:`AUDIO_ENCODER`, which Qwen2.5-Omni's thinker
shares, as it does :data:`WHISPER_FEATURES`) and the tiny Qwen2 text model.
"""

from ray_mm.models.families import QWEN_CHAT_SPECIALS, MediaPart
from ray_mm.models.recipes import Recipe, Tok, text_config

WHISPER_FEATURES = {
    "feature_size": 128,
    "sampling_rate": 16000,
    "hop_length": 160,
    "chunk_length": 30,
    "n_fft": 400,
    "padding_value": 0.0,
    "return_attention_mask": True,
}
AUDIO_ENCODER = {
    "num_mel_bins": 128,
    "encoder_layers": 1,
    "encoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
    "d_model": 32,
    "max_source_positions": 1500,  # 30 s of 10 ms mel frames, halved by conv2
}

RECIPE = Recipe(
    name="qwen2_audio",
    processor_class="Qwen2AudioProcessor",
    special_tokens=QWEN_CHAT_SPECIALS + ("<|audio_bos|>", "<|audio_eos|>", "<|AUDIO|>"),
    media_parts=(MediaPart("audio", "<|audio_bos|><|AUDIO|><|audio_eos|>", label="Audio", label_always=True, suffix="\n"),),
    sub_processors=(("feature_extractor", "WhisperFeatureExtractor", WHISPER_FEATURES),),
    config_class="Qwen2AudioConfig",
    config={
        "audio_config": {
            "model_type": "qwen2_audio_encoder",
            **AUDIO_ENCODER,
            "scale_embedding": False,
            "activation_function": "gelu",
        },
        "text_config": text_config(model_type="qwen2"),
        "audio_token_index": Tok("<|AUDIO|>"),
    },
    architectures=("Qwen2AudioForConditionalGeneration",),
)
