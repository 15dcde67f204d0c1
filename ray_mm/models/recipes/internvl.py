"""InternVL (``InternVLProcessor``, InternVL3-hf layout): the prompt's ``<IMG_CONTEXT>`` (the
processor's ``image_token``) becomes ``<img>`` + ``<IMG_CONTEXT>`` x (tokens per tile x tiles) +
``</img>``; tiles come from dynamic tiling by aspect ratio (``GotOcr2ImageProcessor`` with
``crop_to_patches``: the tile grid closest to the image's aspect ratio, plus a thumbnail tile when
there is more than one). A video's ``<video>`` becomes one ``Frame{i}: <img>...</img>`` line per
frame, joined by newlines; its frames join ``pixel_values`` in prompt order.

The processor reads ``tokenizer.start_image_token`` / ``end_image_token`` / ``context_image_token``
/ ``video_token`` (and their ``_id``); the model's feature token is ``config.image_token_id``
(``<IMG_CONTEXT>``), for images and video frames alike. Tiny: 56-pixel tiles, patch 14 (4x4
patches) pixel-shuffled by ``downsample_ratio`` 0.5 to 2x2 = 4 tokens per tile
(``image_seq_length``), at most 6 tiles.
"""

from ray_mm.models.families import QWEN_CHAT_SPECIALS, MediaPart
from ray_mm.models.recipes import Recipe, Tok, text_config, vision_tower

TILE = 56
PATCH = 14
TOKENS_PER_TILE = 4  # (56 / 14)^2 patches * downsample_ratio^2
MAX_TILES = 6

NAMED = (
    ("start_image_token", "<img>"),
    ("end_image_token", "</img>"),
    ("context_image_token", "<IMG_CONTEXT>"),
    ("video_token", "<video>"),
)

RECIPE = Recipe(
    name="internvl",
    processor_class="InternVLProcessor",
    special_tokens=QWEN_CHAT_SPECIALS + tuple(tok for _, tok in NAMED),
    named_tokens=NAMED,
    media_parts=(MediaPart("image", "<IMG_CONTEXT>", suffix="\n"), MediaPart("video", "<video>", suffix="\n")),
    sub_processors=(
        ("image_processor", "GotOcr2ImageProcessor", {
            "size": {"height": TILE, "width": TILE},
            "crop_to_patches": True,
            "min_patches": 1,
            "max_patches": MAX_TILES,
        }),
        ("video_processor", "InternVLVideoProcessor", {"size": {"height": TILE, "width": TILE}}),
    ),
    processor_kwargs={"image_seq_length": TOKENS_PER_TILE},
    config_class="InternVLConfig",
    config={
        "text_config": text_config(model_type="qwen2"),
        "vision_config": vision_tower([TILE, TILE], [PATCH, PATCH]),
        "image_token_id": Tok("<IMG_CONTEXT>"),
        "image_seq_length": TOKENS_PER_TILE,
        "downsample_ratio": 0.5,
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default",
        "tie_word_embeddings": True,
    },
    architectures=("InternVLForConditionalGeneration",),
)
