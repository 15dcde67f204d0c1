"""Qwen2.5-VL (``Qwen2_5_VLProcessor``): Qwen2-VL's row (:mod:`ray_mm.models.recipes.qwen2_vl`: image and
video processors, placeholders, ids, M-RoPE) with its own processor, config class and vision tower;
the processor adds ``second_per_grid_ts`` per video.

Tiny: a two-layer window-attention vision tower (window 112 px, layer 1 full attention), whose
settings Qwen2.5-Omni's thinker shares (:data:`VISION_TOWER`).
"""

from dataclasses import replace

from ray_mm.models.families import TEXT_CONFIG
from ray_mm.models.recipes.qwen2_vl import RECIPE as QWEN2_VL

VISION_TOWER = {
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "in_channels": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [1],
    "out_hidden_size": TEXT_CONFIG["hidden_size"],
}

RECIPE = replace(
    QWEN2_VL,
    name="qwen2_5_vl",
    processor_class="Qwen2_5_VLProcessor",
    config_class="Qwen2_5_VLConfig",
    config={**QWEN2_VL.config, "vision_config": {**VISION_TOWER, "tokens_per_second": 2}},
    architectures=("Qwen2_5_VLForConditionalGeneration",),
)
