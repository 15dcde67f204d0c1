"""Qwen2-VL (``Qwen2VLProcessor``): an image or video is ``<|vision_start|>`` + ``<|image_pad|>`` /
``<|video_pad|>`` x n + ``<|vision_end|>``, n its merged 14-px patches (patch 14, merge 2, temporal 2).

Small pixel budgets (:data:`~ray_mm.models.families.IMAGE_MAX_PIXELS` and the rest); videos come
as the frames ray-mm sampled (``do_sample_frames`` off), each frame under its own budget. Tiny: a
one-layer vision tower whose merger outputs the text width; head_dim 32 gives 16 rotary frequencies
split over (t, h, w). Qwen2.5-VL starts from this row; Qwen3-VL takes its placeholders and ids, and
Qwen2.5-Omni its sub-processor settings and M-RoPE.
"""

from ray_mm.models.families import (
    IMAGE_MAX_PIXELS,
    IMAGE_MIN_PIXELS,
    QWEN_VL_SPECIALS,
    TEXT_CONFIG,
    VIDEO_MAX_PIXELS,
    VIDEO_MIN_PIXELS,
    MediaPart,
)
from ray_mm.models.recipes import Recipe, Tok, text_config

PATCHES = {"patch_size": 14, "temporal_patch_size": 2, "merge_size": 2}
IMAGE_PROCESSOR = ("image_processor", "Qwen2VLImageProcessor",
                   {"min_pixels": IMAGE_MIN_PIXELS, "max_pixels": IMAGE_MAX_PIXELS, **PATCHES})
VIDEO_FRAMES = {**PATCHES, "do_sample_frames": False, "cap_pixels_per_frame": False}  # ray-mm's frames, as they are
MROPE = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]}
QWEN_VL_PARTS = (
    MediaPart("image", "<|vision_start|><|image_pad|><|vision_end|>", label="Picture"),
    MediaPart("video", "<|vision_start|><|video_pad|><|vision_end|>", label="Video"),
)
QWEN_VL_IDS = {
    "image_token_id": Tok("<|image_pad|>"),
    "video_token_id": Tok("<|video_pad|>"),
    "vision_start_token_id": Tok("<|vision_start|>"),
    "vision_end_token_id": Tok("<|vision_end|>"),
}

RECIPE = Recipe(
    name="qwen2_vl",
    processor_class="Qwen2VLProcessor",
    special_tokens=QWEN_VL_SPECIALS,
    media_parts=QWEN_VL_PARTS,
    sub_processors=(
        IMAGE_PROCESSOR,
        ("video_processor", "Qwen2VLVideoProcessor", {"min_pixels": VIDEO_MIN_PIXELS, "max_pixels": VIDEO_MAX_PIXELS, **VIDEO_FRAMES}),
    ),
    config_class="Qwen2VLConfig",
    config={
        "text_config": text_config(rope_parameters=MROPE),
        "vision_config": {
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": TEXT_CONFIG["hidden_size"],  # merger output dim == LLM hidden size
            "mlp_ratio": 2,
            "num_heads": 2,
            "in_channels": 3,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        **QWEN_VL_IDS,
        "tie_word_embeddings": True,
    },
    architectures=("Qwen2VLForConditionalGeneration",),
)
