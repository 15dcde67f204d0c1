"""Gemma 3 (``Gemma3Processor``): ``<start_of_image>`` in the prompt becomes
``"\\n\\n<start_of_image>"`` + ``image_seq_length`` soft tokens + ``"<end_of_image>\\n\\n"``.

The processor reads ``tokenizer.boi_token`` / ``eoi_token`` / ``image_token`` (the soft token);
the model's feature token is ``config.image_token_index`` (the soft token, not the placeholder).
Tiny: 56-pixel SigLIP tower with patch 14 (4x4 patches), average-pooled to 2x2 = 4 soft tokens
per image (``mm_tokens_per_image`` = the processor's ``image_seq_length``). Pan-and-scan is a
call kwarg of the processor (``do_pan_and_scan``, off by default: the processor's class defaults
override the image processor's config), so ray-mm takes it per item as an option.
"""

from ray_mm.models.families import QWEN_CHAT_SPECIALS, MediaPart
from ray_mm.models.recipes import Recipe, Tok, siglip_tower, text_config

IMAGE_SIZE = 56
PATCH = 14
TOKENS_PER_IMAGE = 4  # (56 / 14)^2 patches pooled 2x2

NAMED = (
    ("boi_token", "<start_of_image>"),
    ("eoi_token", "<end_of_image>"),
    ("image_token", "<image_soft_token>"),
)

RECIPE = Recipe(
    name="gemma3",
    processor_class="Gemma3Processor",
    special_tokens=QWEN_CHAT_SPECIALS + tuple(tok for _, tok in NAMED),
    named_tokens=NAMED,
    media_parts=(MediaPart("image", "<start_of_image>"),),
    sub_processors=(
        ("image_processor", "Gemma3ImageProcessor", {
            "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
            "resample": 2,  # bilinear, as Gemma 3's preprocessor_config.json
        }),
    ),
    processor_kwargs={"image_seq_length": TOKENS_PER_IMAGE},
    config_class="Gemma3Config",
    config={
        "text_config": text_config(head_dim=32, query_pre_attn_scalar=32, sliding_window=512),
        "vision_config": siglip_tower(IMAGE_SIZE, PATCH),
        "mm_tokens_per_image": TOKENS_PER_IMAGE,
        "boi_token_index": Tok("<start_of_image>"),
        "eoi_token_index": Tok("<end_of_image>"),
        "image_token_index": Tok("<image_soft_token>"),
        "tie_word_embeddings": True,
    },
    architectures=("Gemma3ForConditionalGeneration",),
)
