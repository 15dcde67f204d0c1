"""LLaVA-NeXT (``LlavaNextProcessor``, anyres tiling, ``LlavaNextForConditionalGeneration``).

An image becomes one run of ``<image>`` (placeholder and feature token alike): the base tile's
patches, then the best-fitting pinpoint grid's patches, unpadded to the image's aspect ratio,
one newline embedding per row. The pinpoints are LLaVA-v1.6's scaled from 336 to a 56-pixel
tile (1x2, 2x1, 2x2, 3x1, 1x3 tiles), so images of different shapes get different tile counts.
The CLIP tower is LLaVA-1.5's (:mod:`ray_mm.models.recipes.llava`), 56 px / patch 14 (16 patches +
CLS; the ``default`` strategy drops the CLS), and so are the processor's settings.
The chat template writes ``<image>\\n`` per image, as LLaVA's templates do.
"""

from ray_mm.models.families import MediaPart
from ray_mm.models.recipes import Recipe, Tok, text_config
from ray_mm.models.recipes.llava import CLIP_TOWER, CROP, PROCESSOR_KWARGS

TILE = CROP  # the base tile is LLaVA-1.5's crop
PINPOINTS = [[TILE, 2 * TILE], [2 * TILE, TILE], [2 * TILE, 2 * TILE], [3 * TILE, TILE], [TILE, 3 * TILE]]

RECIPE = Recipe(
    name="llava_next",
    processor_class="LlavaNextProcessor",
    special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"),
    media_parts=(MediaPart("image", "<image>", suffix="\n"),),
    sub_processors=(("image_processor", "LlavaNextImageProcessor", {
        "size": {"shortest_edge": TILE},
        "crop_size": {"height": TILE, "width": TILE},
        "image_grid_pinpoints": PINPOINTS,
    }),),
    processor_kwargs=PROCESSOR_KWARGS,
    config_class="LlavaNextConfig",
    config={
        "vision_config": CLIP_TOWER,
        "text_config": text_config(model_type="llama"),
        "image_grid_pinpoints": PINPOINTS,
        "image_token_index": Tok("<image>"),
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "projector_hidden_act": "gelu",
        "tie_word_embeddings": True,
    },
    architectures=("LlavaNextForConditionalGeneration",),
)
