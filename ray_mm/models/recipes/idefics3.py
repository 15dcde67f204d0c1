"""Idefics3 (``Idefics3Processor``): ``<image>`` in the prompt becomes the image's tiles.

An image is resized so its longest edge is at most ``size["longest_edge"]``, then up to multiples
of the tile (``max_image_size``) and split into rows x cols tiles plus a global view. Its expansion
is, per tile, ``<fake_token_around_image><row_r_col_c>`` + ``image_seq_len`` x ``<image>``, each row
closed by ``"\\n"``; then ``"\\n<fake_token_around_image><global-img>"`` + ``image_seq_len`` x
``<image>`` + ``<fake_token_around_image>``. An image that fits in one tile is the global view alone.
Every piece of text sits between special tokens, so id-space expansion equals the processor's text.

``pixel_values`` is ``(1, tiles, 3, tile, tile)``: the processor packs every tile of a request's
images along axis 1 (all tiles are ``tile`` squares, so its cross-image padding is a no-op);
``pixel_attention_mask`` likewise. The feature token is ``config.image_token_id`` (``<image>``).

Tiny: 64-pixel tiles, SigLIP-style tower with patch 16 (4x4 patches), pixel-shuffled by
``scale_factor`` 2 to ``image_seq_len`` = 4 tokens per tile; at most 3x3 tiles (192-pixel edge).
"""

from typing import Any

from ray_mm.models.families import QWEN_CHAT_SPECIALS, MediaPart
from ray_mm.models.recipes import Recipe, Tok, text_config, vision_tower

TILE = 64
PATCH = 16
SCALE_FACTOR = 2
IMAGE_SEQ_LEN = (TILE // PATCH) ** 2 // SCALE_FACTOR**2  # 4
LONGEST_EDGE = 3 * TILE

ROW_COL_TOKENS = tuple(f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6))
IDEFICS3_SPECIALS = ("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>") + ROW_COL_TOKENS

# Image tiling, SmolVLM's too.
TILING = {"size": {"longest_edge": LONGEST_EDGE}, "max_image_size": {"longest_edge": TILE}, "do_image_splitting": True}


def tiny_config(bos_token: str) -> dict[str, Any]:
    """``config.json`` of the tiny Idefics3 (and SmolVLM): a Llama text model with ``bos_token`` and
    ``<end_of_utterance>`` as its EOS, the SigLIP-style tower, the pixel shuffle, ``<image>`` features."""
    return {
        "text_config": text_config(model_type="llama", head_dim=32, bos_token_id=Tok(bos_token),
                                   eos_token_id=Tok("<end_of_utterance>")),
        "vision_config": vision_tower(TILE, PATCH),
        "scale_factor": SCALE_FACTOR,
        "image_token_id": Tok("<image>"),
        "tie_word_embeddings": True,
    }


# The hub template (HuggingFaceM4/Idefics3-8B-Llama3), with string contents allowed.
CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'] is string %}{{': ' + message['content']}}{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

RECIPE = Recipe(
    name="idefics3",
    processor_class="Idefics3Processor",
    special_tokens=QWEN_CHAT_SPECIALS + ("<|begin_of_text|>",) + IDEFICS3_SPECIALS,
    media_parts=(MediaPart("image", "<image>"),),
    sub_processors=(("image_processor", "Idefics3ImageProcessor", TILING),),
    processor_kwargs={"image_seq_len": IMAGE_SEQ_LEN},
    chat_template=CHAT_TEMPLATE,
    config_class="Idefics3Config",
    config=tiny_config("<|begin_of_text|>"),
    architectures=("Idefics3ForConditionalGeneration",),
)
