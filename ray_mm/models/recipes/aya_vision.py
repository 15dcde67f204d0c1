"""Aya Vision (``AyaVisionProcessor`` over GOT-OCR2's tiling image processor, SigLIP + Cohere2).

The prompt's ``<image>`` becomes ``<|START_OF_IMG|>``, then per crop tile ``TILE_k`` and its
``<|IMG_PATCH|>`` run, then ``TILE_GLOBAL`` and the thumbnail's run, then ``<|END_OF_IMG|>``;
``<|IMG_PATCH|>`` is the feature token (``image_token_index``). Tiles are 56 px: a 14-px SigLIP
patch grid of 4 x 4, pixel-shuffled by 2 into 4 tokens a tile (``img_size`` 56 over
``patch_size`` 14 x ``downsample_factor`` 2). At most 4 crop tiles (the real model: 12).
"""

from ray_mm.models.families import MediaPart
from ray_mm.models.recipes import Recipe, Tok, siglip_tower, text_config

TILE = 56
PATCH = 14
DOWNSAMPLE = 2

RECIPE = Recipe(
    name="aya_vision",
    processor_class="AyaVisionProcessor",
    special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<|START_OF_IMG|>", "<|END_OF_IMG|>",
                    "<|IMG_PATCH|>", "<|IMG_LINE_BREAK|>", "TILE_GLOBAL"),
    media_parts=(MediaPart("image", "<image>"),),
    sub_processors=(("image_processor", "GotOcr2ImageProcessor", {
        "size": {"height": TILE, "width": TILE},
        "crop_to_patches": True,
        "min_patches": 1,
        "max_patches": 4,
    }),),
    processor_kwargs={"patch_size": PATCH, "img_size": TILE, "downsample_factor": DOWNSAMPLE},
    config_class="AyaVisionConfig",
    config={
        "vision_config": siglip_tower(TILE, PATCH, num_hidden_layers=2),
        "text_config": text_config(model_type="cohere2", layer_types=["full_attention"]),
        "downsample_factor": DOWNSAMPLE,
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "full",
        "image_token_index": Tok("<|IMG_PATCH|>"),
        "tie_word_embeddings": True,
    },
    architectures=("AyaVisionForConditionalGeneration",),
)
