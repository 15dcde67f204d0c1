"""MiniCPM-V 4.6 (``MiniCPMV4_6Processor``): images with slices and image ids, videos as per-frame blocks.

The chat template renders the bare ``<|image_pad|>`` / ``<|video_pad|>``; the processor replaces
them with ``<image>`` ... ``</image>``, slice rows and ``<image_id>k</image_id>``, reading those
tokens from the tokenizer's attributes (:data:`~ray_mm.models.families.MINICPM_NAMED_TOKENS`).
A slice is about ``scale_resolution`` squared pixels (224 here; at most 9 slices an image, 2 a
video frame). Tiny: a two-layer SigLIP-style tower with its window-attention merger after layer 0,
and a two-layer Qwen3.5 text model (linear attention, then full attention).
"""

from ray_mm.models.families import (
    MINICPM_MAX_SLICES,
    MINICPM_NAMED_TOKENS,
    MINICPM_SCALE_RESOLUTION,
    MINICPM_VIDEO_MAX_SLICES,
    QWEN_CHAT_SPECIALS,
    MediaPart,
)
from ray_mm.models.recipes import Recipe, Tok, text_config, vision_tower

SLICES = {"scale_resolution": MINICPM_SCALE_RESOLUTION, "patch_size": 14, "downsample_mode": "16x"}

RECIPE = Recipe(
    name="minicpmv4_6",
    processor_class="MiniCPMV4_6Processor",
    special_tokens=QWEN_CHAT_SPECIALS + ("<unk>",) + tuple(tok for _, tok in MINICPM_NAMED_TOKENS),
    # The processor replaces its bare image/video token; ids, <image>, slices come from the processor.
    media_parts=(MediaPart("image", "<|image_pad|>"), MediaPart("video", "<|video_pad|>")),
    sub_processors=(
        ("image_processor", "MiniCPMV4_6ImageProcessor", {"max_slice_nums": MINICPM_MAX_SLICES, **SLICES}),
        ("video_processor", "MiniCPMV4_6VideoProcessor", {"max_slice_nums": MINICPM_VIDEO_MAX_SLICES, **SLICES}),
    ),
    named_tokens=MINICPM_NAMED_TOKENS,
    unk_token="<unk>",
    config_class="MiniCPMV4_6Config",
    config={
        "text_config": text_config(
            model_type="qwen3_5_text",
            num_hidden_layers=2,
            layer_types=["linear_attention", "full_attention"],
            head_dim=32,
            linear_key_head_dim=16,
            linear_value_head_dim=16,
            linear_num_key_heads=2,
            linear_num_value_heads=2,
        ),
        "vision_config": vision_tower(MINICPM_SCALE_RESOLUTION, 14, num_hidden_layers=2, window_kernel_size=[2, 2]),
        "insert_layer_id": 0,  # the window-attention merger runs after vision layer 0
        "image_size": MINICPM_SCALE_RESOLUTION,
        "downsample_mode": "16x",
        "merge_kernel_size": [2, 2],
        "merger_times": 1,
        "image_token_id": Tok("<|image_pad|>"),
        "video_token_id": Tok("<|video_pad|>"),
        "tie_word_embeddings": True,
    },
    architectures=("MiniCPMV4_6ForConditionalGeneration",),
)
