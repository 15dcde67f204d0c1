"""Qwen3-VL (``Qwen3VLProcessor``): patch 16 (factor 32), mean / std 0.5, timestamped video groups.

Qwen2-VL's placeholders and ids (:mod:`ray_mm.models.recipes.qwen2_vl`). The image processor is
Qwen2-VL's with Qwen3-VL's settings; ``Qwen3VLVideoProcessor`` bounds a whole video and caps each
frame at :data:`~ray_mm.models.families.QWEN3_VIDEO_FRAME_TOKENS` merged tokens. Tiny: a two-layer
vision tower with deepstack after layer 0; head_dim 32 gives 16 rotary frequencies, interleaved
over (t, h, w) as 6/5/5.
"""

from ray_mm.models.families import (
    QWEN3_IMAGE_MAX_PIXELS,
    QWEN3_IMAGE_MIN_PIXELS,
    QWEN3_VIDEO_FRAME_TOKENS,
    QWEN3_VIDEO_MAX_PIXELS,
    QWEN3_VIDEO_MIN_PIXELS,
    QWEN_VL_SPECIALS,
    TEXT_CONFIG,
)
from ray_mm.models.recipes import Recipe, text_config
from ray_mm.models.recipes.qwen2_vl import QWEN_VL_IDS, QWEN_VL_PARTS

HALF = [0.5, 0.5, 0.5]
# Both sub-processors: patch 16, merge 2 (factor 32), mean / std 0.5.
PIXELS = {"patch_size": 16, "temporal_patch_size": 2, "merge_size": 2, "image_mean": HALF, "image_std": HALF}

RECIPE = Recipe(
    name="qwen3_vl",
    processor_class="Qwen3VLProcessor",
    special_tokens=QWEN_VL_SPECIALS,
    media_parts=QWEN_VL_PARTS,
    sub_processors=(
        ("image_processor", "Qwen2VLImageProcessor",
         {"size": {"shortest_edge": QWEN3_IMAGE_MIN_PIXELS, "longest_edge": QWEN3_IMAGE_MAX_PIXELS}, **PIXELS}),
        ("video_processor", "Qwen3VLVideoProcessor",
         {"size": {"shortest_edge": QWEN3_VIDEO_MIN_PIXELS, "longest_edge": QWEN3_VIDEO_MAX_PIXELS}, **PIXELS,
          "cap_pixels_per_frame": True, "max_video_tokens": QWEN3_VIDEO_FRAME_TOKENS}),
    ),
    config_class="Qwen3VLConfig",
    config={
        "text_config": text_config(
            head_dim=32,
            rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [6, 5, 5], "mrope_interleaved": True},
        ),
        "vision_config": {
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
            "out_hidden_size": TEXT_CONFIG["hidden_size"],
        },
        **QWEN_VL_IDS,
        "tie_word_embeddings": True,
    },
    architectures=("Qwen3VLForConditionalGeneration",),
)
