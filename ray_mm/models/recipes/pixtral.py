"""Pixtral (``PixtralProcessor``, ``LlavaForConditionalGeneration`` over a Pixtral vision tower).

An image becomes rows of ``[IMG]`` (one per 16-pixel patch column) each closed by ``[IMG_BREAK]``,
the last row by ``[IMG_END]``; ``[IMG]`` is both the prompt's placeholder and the feature token.
The image is resized so its longest edge fits ``longest_edge`` (a multiple of the patch size),
then each side is rounded up to whole patches: ``longest_edge`` 128 gives at most 8 x 8 patches.
"""

from ray_mm.models.families import MediaPart
from ray_mm.models.recipes import Recipe, Tok, text_config, vision_tower

PATCH = 16
LONGEST_EDGE = 128  # at most 8 x 8 = 64 [IMG] tokens and 8 row ends per image

RECIPE = Recipe(
    name="pixtral",
    processor_class="PixtralProcessor",
    special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "[IMG]", "[IMG_BREAK]", "[IMG_END]"),
    media_parts=(MediaPart("image", "[IMG]"),),
    sub_processors=(("image_processor", "PixtralImageProcessor", {
        "size": {"longest_edge": LONGEST_EDGE},
        "patch_size": {"height": PATCH, "width": PATCH},
    }),),
    processor_kwargs={"patch_size": PATCH, "spatial_merge_size": 1},
    config_class="LlavaConfig",
    config={
        "vision_config": vision_tower(LONGEST_EDGE, PATCH, model_type="pixtral", head_dim=16),
        "text_config": text_config(model_type="mistral"),
        "image_token_index": Tok("[IMG]"),
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "full",
        "projector_hidden_act": "gelu",
        "multimodal_projector_bias": True,
        "tie_word_embeddings": True,
    },
    architectures=("LlavaForConditionalGeneration",),
)
