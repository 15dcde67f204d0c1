"""The table of per-family facts that ``make_model`` builds tiny offline model directories from.

One :class:`FamilySpec` per family: its special tokens (and the tokenizer
attributes a processor reads, such as MiniCPM-V's ``tokenizer.image_token``),
the compact placeholder each chat-template media part renders to, a processor
builder (the real in-tree Hugging Face processor class with small pixel
budgets) and a ``config.json`` builder (tiny vision tower / audio encoder and
tiny text model, token ids taken from the tokenizer). The shared tokenizer
training and chat-template skeleton live in :mod:`ray_mm.models.make_model`.

Nothing here imports transformers at module import time: builders import it
when called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

QWEN_CHAT_SPECIALS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN_VL_SPECIALS: tuple[str, ...] = QWEN_CHAT_SPECIALS + (
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Pixel budgets of the tiny Qwen2-VL / Qwen2.5-VL processors (factor = patch 14 * merge 2 = 28).
IMAGE_MIN_PIXELS = 4 * 28 * 28  # 3136: 4 merged tokens at least
IMAGE_MAX_PIXELS = 256 * 28 * 28  # 200704: 1920x1080 -> 588x336, 252 tokens
VIDEO_MIN_PIXELS = 4 * 28 * 28  # per frame
VIDEO_MAX_PIXELS = 64 * 28 * 28  # 50176 per frame: 640x360 -> 280x168, 60 tokens per 2 frames

# Qwen3-VL (factor = patch 16 * merge 2 = 32). Its video budget is per *video* (t * h * w), so the
# per-frame bound is the qwen-vl-utils cap: `max_video_tokens` merged tokens' worth of pixels a frame.
QWEN3_IMAGE_MIN_PIXELS = 4 * 32 * 32  # 4096
QWEN3_IMAGE_MAX_PIXELS = 256 * 32 * 32  # 262144: 1920x1080 -> 672x352, 231 tokens
QWEN3_VIDEO_MIN_PIXELS = 4 * 32 * 32  # whole video
QWEN3_VIDEO_FRAME_TOKENS = 64  # per frame: 640x360 -> 320x192, 60 tokens per 2 frames
QWEN3_VIDEO_MAX_PIXELS = QWEN3_VIDEO_FRAME_TOKENS * 32 * 32 * 256  # the cap binds up to 256 frames

# MiniCPM-V 4.6: a slice is ~scale_resolution^2 pixels; 600x400 -> 2x3 slices, 200x200 -> none.
MINICPM_SCALE_RESOLUTION = 224
MINICPM_MAX_SLICES = 9
MINICPM_VIDEO_MAX_SLICES = 2  # 640x360 frame -> 1x2 slices

TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}


@dataclass(frozen=True)
class MediaPart:
    """How the chat template renders one kind of media content part.

    ``placeholder`` is the compact placeholder text (what the processor expands).
    ``label`` adds ``"<label> <k>: "`` before it: always if ``label_always``,
    otherwise only with ``add_vision_id``.
    """

    modality: str
    placeholder: str
    label: str | None = None
    label_always: bool = False
    suffix: str = ""


@dataclass(frozen=True)
class FamilySpec:
    """Everything ``make_model`` needs to know about one family."""

    name: str
    processor_class: str  # the in-tree transformers processor class AutoProcessor must give
    special_tokens: tuple[str, ...]  # trained as special tokens, in this order (ids 0..n-1)
    media_parts: tuple[MediaPart, ...]
    build_processor: Callable[[Any, str], Any]  # (tokenizer, chat_template) -> processor
    build_config: Callable[[Any], Any]  # tokenizer -> PreTrainedConfig
    named_tokens: tuple[tuple[str, str], ...] = ()  # tokenizer attributes, e.g. ("image_token", "<|image_pad|>")
    unk_token: str | None = None

    @property
    def placeholders(self) -> dict[str, str]:
        """Compact placeholder text per modality, as the chat template renders it."""
        return {part.modality: part.placeholder for part in self.media_parts}


def _token_ids(tokenizer, **names: str) -> dict[str, int]:
    return {key: tokenizer.convert_tokens_to_ids(tok) for key, tok in names.items()}


def _text_config(tokenizer, **extra: Any) -> dict[str, Any]:
    tid = tokenizer.convert_tokens_to_ids
    cfg = dict(TEXT_CONFIG)
    cfg.update(
        vocab_size=len(tokenizer),
        bos_token_id=tid("<|endoftext|>"),
        eos_token_id=tid("<|im_end|>"),
        pad_token_id=tid("<|endoftext|>"),
    )
    cfg.update(extra)
    return cfg


def _qwen_vl_ids(tokenizer) -> dict[str, int]:
    return _token_ids(
        tokenizer,
        image_token_id="<|image_pad|>",
        video_token_id="<|video_pad|>",
        vision_start_token_id="<|vision_start|>",
        vision_end_token_id="<|vision_end|>",
    )


# --- qwen2_vl -------------------------------------------------------------------------------------


def _qwen2_vl_vision_processors():
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

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
    return image_processor, video_processor


def _qwen2_vl_processor(tokenizer, chat_template: str):
    from transformers import Qwen2VLProcessor

    image_processor, video_processor = _qwen2_vl_vision_processors()
    return Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=chat_template,
    )


def _qwen2_vl_config(tokenizer):
    from transformers import Qwen2VLConfig

    # head_dim 32 -> 16 rotary frequencies split over (t, h, w).
    text_config = _text_config(tokenizer, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]})
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
        **_qwen_vl_ids(tokenizer),
        tie_word_embeddings=True,
    )
    config.architectures = ["Qwen2VLForConditionalGeneration"]
    return config


# --- qwen2_5_vl: Qwen2-VL's image/video processors, plus second_per_grid_ts per video -------------


def _qwen2_5_vl_processor(tokenizer, chat_template: str):
    from transformers import Qwen2_5_VLProcessor

    image_processor, video_processor = _qwen2_vl_vision_processors()
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=chat_template,
    )


def _qwen2_5_vl_config(tokenizer):
    from transformers import Qwen2_5_VLConfig

    text_config = _text_config(tokenizer, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]})
    config = Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "in_channels": 3,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "tokens_per_second": 2,
            "window_size": 112,
            "fullatt_block_indexes": [1],
            "out_hidden_size": text_config["hidden_size"],
        },
        **_qwen_vl_ids(tokenizer),
        tie_word_embeddings=True,
    )
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    return config


# --- qwen3_vl: patch 16 (factor 32), mean/std 0.5, timestamped video groups -----------------------


def _qwen3_vl_processor(tokenizer, chat_template: str):
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    half = [0.5, 0.5, 0.5]
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": QWEN3_IMAGE_MIN_PIXELS, "longest_edge": QWEN3_IMAGE_MAX_PIXELS},
        patch_size=16,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=half,
        image_std=half,
    )
    video_processor = Qwen3VLVideoProcessor(
        size={"shortest_edge": QWEN3_VIDEO_MIN_PIXELS, "longest_edge": QWEN3_VIDEO_MAX_PIXELS},
        patch_size=16,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=half,
        image_std=half,
        cap_pixels_per_frame=True,
        max_video_tokens=QWEN3_VIDEO_FRAME_TOKENS,
    )
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=chat_template,
    )


def _qwen3_vl_config(tokenizer):
    from transformers import Qwen3VLConfig

    # head_dim 32 -> 16 rotary frequencies, interleaved over (t, h, w) as 6/5/5.
    text_config = _text_config(
        tokenizer,
        head_dim=32,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_section": [6, 5, 5],
            "mrope_interleaved": True,
        },
    )
    config = Qwen3VLConfig(
        text_config=text_config,
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "in_channels": 3,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 256,
            "deepstack_visual_indexes": [0],
            "out_hidden_size": text_config["hidden_size"],
        },
        **_qwen_vl_ids(tokenizer),
        tie_word_embeddings=True,
    )
    config.architectures = ["Qwen3VLForConditionalGeneration"]
    return config


# --- minicpmv4_6: slices, image ids, per-frame video blocks ---------------------------------------

MINICPM_NAMED_TOKENS: tuple[tuple[str, str], ...] = (
    ("image_token", "<|image_pad|>"),
    ("video_token", "<|video_pad|>"),
    ("image_start_token", "<image>"),
    ("image_end_token", "</image>"),
    ("slice_start_token", "<slice>"),
    ("slice_end_token", "</slice>"),
    ("image_id_start_token", "<image_id>"),
    ("image_id_end_token", "</image_id>"),
)


def _minicpmv4_6_processor(tokenizer, chat_template: str):
    from transformers import MiniCPMV4_6ImageProcessor, MiniCPMV4_6Processor, MiniCPMV4_6VideoProcessor

    common = {"scale_resolution": MINICPM_SCALE_RESOLUTION, "patch_size": 14, "downsample_mode": "16x"}
    return MiniCPMV4_6Processor(
        image_processor=MiniCPMV4_6ImageProcessor(max_slice_nums=MINICPM_MAX_SLICES, **common),
        video_processor=MiniCPMV4_6VideoProcessor(max_slice_nums=MINICPM_VIDEO_MAX_SLICES, **common),
        tokenizer=tokenizer,
        chat_template=chat_template,
    )


def _minicpmv4_6_config(tokenizer):
    from transformers import MiniCPMV4_6Config

    text_config = _text_config(
        tokenizer,
        model_type="qwen3_5_text",
        num_hidden_layers=2,
        layer_types=["linear_attention", "full_attention"],
        head_dim=32,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        linear_num_key_heads=2,
        linear_num_value_heads=2,
    )
    config = MiniCPMV4_6Config(
        text_config=text_config,
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_channels": 3,
            "image_size": MINICPM_SCALE_RESOLUTION,
            "patch_size": 14,
            "window_kernel_size": [2, 2],
        },
        insert_layer_id=0,  # the window-attention merger runs after vision layer 0
        image_size=MINICPM_SCALE_RESOLUTION,
        downsample_mode="16x",
        merge_kernel_size=[2, 2],
        merger_times=1,
        **_token_ids(tokenizer, image_token_id="<|image_pad|>", video_token_id="<|video_pad|>"),
        tie_word_embeddings=True,
    )
    config.architectures = ["MiniCPMV4_6ForConditionalGeneration"]
    return config


# --- qwen2_audio ----------------------------------------------------------------------------------


def _qwen2_audio_processor(tokenizer, chat_template: str):
    from transformers import Qwen2AudioProcessor, WhisperFeatureExtractor

    feature_extractor = WhisperFeatureExtractor(
        feature_size=128,
        sampling_rate=16000,
        hop_length=160,
        chunk_length=30,
        n_fft=400,
        padding_value=0.0,
        return_attention_mask=True,
    )
    return Qwen2AudioProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer, chat_template=chat_template)


def _qwen2_audio_config(tokenizer):
    from transformers import Qwen2AudioConfig

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
        text_config=_text_config(tokenizer, model_type="qwen2"),
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    config.architectures = ["Qwen2AudioForConditionalGeneration"]
    return config


# --- the table ------------------------------------------------------------------------------------

_QWEN_VL_PARTS = (
    MediaPart("image", "<|vision_start|><|image_pad|><|vision_end|>", label="Picture"),
    MediaPart("video", "<|vision_start|><|video_pad|><|vision_end|>", label="Video"),
)

FAMILY_SPECS: dict[str, FamilySpec] = {
    spec.name: spec
    for spec in (
        FamilySpec(
            name="qwen2_vl",
            processor_class="Qwen2VLProcessor",
            special_tokens=QWEN_VL_SPECIALS,
            media_parts=_QWEN_VL_PARTS,
            build_processor=_qwen2_vl_processor,
            build_config=_qwen2_vl_config,
        ),
        FamilySpec(
            name="qwen2_audio",
            processor_class="Qwen2AudioProcessor",
            special_tokens=QWEN_CHAT_SPECIALS + ("<|audio_bos|>", "<|audio_eos|>", "<|AUDIO|>"),
            media_parts=(MediaPart("audio", "<|audio_bos|><|AUDIO|><|audio_eos|>", label="Audio", label_always=True, suffix="\n"),),
            build_processor=_qwen2_audio_processor,
            build_config=_qwen2_audio_config,
        ),
        FamilySpec(
            name="qwen2_5_vl",
            processor_class="Qwen2_5_VLProcessor",
            special_tokens=QWEN_VL_SPECIALS,
            media_parts=_QWEN_VL_PARTS,
            build_processor=_qwen2_5_vl_processor,
            build_config=_qwen2_5_vl_config,
        ),
        FamilySpec(
            name="qwen3_vl",
            processor_class="Qwen3VLProcessor",
            special_tokens=QWEN_VL_SPECIALS,
            media_parts=_QWEN_VL_PARTS,
            build_processor=_qwen3_vl_processor,
            build_config=_qwen3_vl_config,
        ),
        FamilySpec(
            name="minicpmv4_6",
            processor_class="MiniCPMV4_6Processor",
            special_tokens=QWEN_CHAT_SPECIALS + ("<unk>",) + tuple(tok for _, tok in MINICPM_NAMED_TOKENS),
            # The processor replaces its bare image/video token; ids, <image>, slices come from the processor.
            media_parts=(MediaPart("image", "<|image_pad|>"), MediaPart("video", "<|video_pad|>")),
            build_processor=_minicpmv4_6_processor,
            build_config=_minicpmv4_6_config,
            named_tokens=MINICPM_NAMED_TOKENS,
            unk_token="<unk>",
        ),
    )
}
