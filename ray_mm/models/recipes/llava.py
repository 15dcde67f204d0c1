"""LLaVA-1.5 (``LlavaProcessor``): the prompt's ``<image>`` becomes ``<image>`` x n, one run, with
n = (crop / patch)^2 + ``num_additional_image_tokens`` (CLIP's CLS) - 1 (the ``default`` feature
strategy drops CLS again). The image is resized (shortest edge) and center-cropped to a square.

The processor reads ``tokenizer.image_token``; the model's feature token is
``config.image_token_index`` (``<image>``, the placeholder itself). Tiny: 56-pixel crop, CLIP
patch 14: 16 tokens per image.
"""

from ray_mm.models.families import QWEN_CHAT_SPECIALS, MediaPart
from ray_mm.models.recipes import Recipe, Tok, text_config, vision_tower

CROP = 56
PATCH = 14
CLIP_TOWER = vision_tower(CROP, PATCH, model_type="clip_vision_model", projection_dim=32, num_hidden_layers=2)
# CLIP's CLS counts in the processor's arithmetic; the ``default`` strategy drops it from the features.
PROCESSOR_KWARGS = {"patch_size": PATCH, "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1}

RECIPE = Recipe(
    name="llava",
    processor_class="LlavaProcessor",
    special_tokens=QWEN_CHAT_SPECIALS + ("<image>",),
    named_tokens=(("image_token", "<image>"),),
    media_parts=(MediaPart("image", "<image>", suffix="\n"),),
    sub_processors=(
        ("image_processor", "LlavaImageProcessor", {
            "size": {"shortest_edge": CROP},
            "crop_size": {"height": CROP, "width": CROP},
        }),
    ),
    processor_kwargs=PROCESSOR_KWARGS,
    config_class="LlavaConfig",
    config={
        "text_config": text_config(model_type="qwen2"),
        "vision_config": CLIP_TOWER,
        "image_token_index": Tok("<image>"),
        "image_seq_length": (CROP // PATCH) ** 2,
        "vision_feature_select_strategy": "default",
        "vision_feature_layer": -2,
        "tie_word_embeddings": True,
    },
    architectures=("LlavaForConditionalGeneration",),
)
