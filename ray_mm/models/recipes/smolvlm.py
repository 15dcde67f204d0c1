"""SmolVLM (``SmolVLMProcessor``): Idefics3's tiled images, plus videos as timestamped frames.

Images expand as Idefics3's do (``ray_mm.models.recipes.idefics3``): per tile
``<fake_token_around_image><row_r_col_c>`` + ``image_seq_len`` x ``<image>``, rows closed by
``"\\n"``, then the global view. A ``<video>`` becomes plain text around one single-view image block
per frame: ``"You are provided the following series of {n} frames from a {H:MM:SS} [H:MM:SS]
video.\\n"``, per frame ``"\\nFrame from {MM:SS}:"`` + ``<fake_token_around_image><global-img>`` +
``image_seq_len`` x ``<image>`` + ``<fake_token_around_image>``, then ``"\\n\\n"``. Frame times come
from the sampling metadata (the frames ray-mm sampled, their source fps). Video frames take
``<image>`` tokens too: the model has one feature token (``config.image_token_id``).

Tiny: Idefics3's tiling and ``config.json`` (:func:`~ray_mm.models.recipes.idefics3.tiny_config`,
BOS ``<|im_start|>``): 64-pixel tiles (frames are squared to one tile), SigLIP-style tower with
patch 16, pixel-shuffled by ``scale_factor`` 2 to 4 tokens per tile; at most 3x3 image tiles.
The processor needs the ``num2words`` package (frame counts in words).
"""

from ray_mm.models.families import QWEN_CHAT_SPECIALS, MediaPart
from ray_mm.models.recipes import Recipe
from ray_mm.models.recipes.idefics3 import IDEFICS3_SPECIALS, IMAGE_SEQ_LEN, TILE, TILING, tiny_config

# transformers.models.smolvlm.processing_smolvlm.DEFAULT_CHAT_TEMPLATE (the hub template of SmolVLM2):
# the processor's apply_chat_template switches to it whenever a message holds a video.
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'] is string %}{{': ' + message['content']}}{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}{{ '<video>' }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

RECIPE = Recipe(
    name="smolvlm",
    processor_class="SmolVLMProcessor",
    special_tokens=QWEN_CHAT_SPECIALS + IDEFICS3_SPECIALS + ("<video>",),
    media_parts=(MediaPart("image", "<image>"), MediaPart("video", "<video>")),
    sub_processors=(
        ("image_processor", "SmolVLMImageProcessor", TILING),
        ("video_processor", "SmolVLMVideoProcessor", {
            "size": {"longest_edge": TILE},
            "max_image_size": {"longest_edge": TILE},
            "do_sample_frames": False,
        }),
    ),
    processor_kwargs={"image_seq_len": IMAGE_SEQ_LEN},
    chat_template=CHAT_TEMPLATE,
    config_class="SmolVLMConfig",
    config=tiny_config("<|im_start|>"),
    architectures=("SmolVLMForConditionalGeneration",),
)
