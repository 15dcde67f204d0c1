"""PaliGemma (``PaliGemmaProcessor``): each ``<image>`` in the prompt becomes ``image_seq_length``
``<image>`` tokens (the placeholder is its own feature token); the processor then puts the
tokenizer's BOS right after the last image token and a newline at the end of the prompt (the
call-level layout ray-mm's ``paligemma`` adapter repeats, :mod:`ray_mm.models.paligemma`).

Its image processor is SigLIP's, carrying ``image_seq_length``; its ``__init__`` adds 1024
``<locNNNN>`` and 128 ``<segNNN>`` tokens to the tokenizer, so ``VOCAB`` counts them. Tiny: a
56-pixel SigLIP tower with patch 14, 4x4 = 16 image tokens, projected to the text width.
"""

from ray_mm.models.families import QWEN_CHAT_SPECIALS, TEXT_CONFIG, MediaPart
from ray_mm.models.recipes import VOCAB, Recipe, Tok, siglip_tower, text_config

IMAGE_SIZE = 56
PATCH = 14
TOKENS_PER_IMAGE = (IMAGE_SIZE // PATCH) ** 2  # 16

NAMED = (
    ("bos_token", "<bos>"),  # the processor inserts it after the last image token
    ("image_token", "<image>"),
)

RECIPE = Recipe(
    name="paligemma",
    processor_class="PaliGemmaProcessor",
    special_tokens=QWEN_CHAT_SPECIALS + tuple(tok for _, tok in NAMED),
    named_tokens=NAMED,
    media_parts=(MediaPart("image", "<image>"),),
    sub_processors=(
        ("image_processor", "SiglipImageProcessor", {
            "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
            "image_seq_length": TOKENS_PER_IMAGE,
            "resample": 3,  # bicubic, as PaliGemma's preprocessor_config.json
        }),
    ),
    config_class="PaliGemmaConfig",
    config={
        "text_config": text_config(model_type="gemma", head_dim=32, bos_token_id=Tok("<bos>")),
        "vision_config": siglip_tower(IMAGE_SIZE, PATCH),
        "image_token_index": Tok("<image>"),
        "vocab_size": VOCAB,
        "projection_dim": TEXT_CONFIG["hidden_size"],
        "hidden_size": TEXT_CONFIG["hidden_size"],
        "tie_word_embeddings": True,
    },
    architectures=("PaliGemmaForConditionalGeneration",),
)
