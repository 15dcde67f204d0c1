"""GLM-4.1V (``Glm4vProcessor``): Qwen2-VL-style patches (patch 14, merge 2, temporal 2) for images
and videos; an image is ``<|image|>`` x n; a video ``<|video|>`` becomes, per frame pair,
``<|begin_of_image|>`` + ``<|image|>`` x n + ``<|end_of_image|>`` + the frame's whole second.
Video embeddings go to ``<|image|>`` positions too (the model reads video positions as image tokens
between ``<|begin_of_video|>`` and ``<|end_of_video|>``)."""

from __future__ import annotations

from ray_mm.models.families import QWEN_CHAT_SPECIALS, TEXT_CONFIG, MediaPart
from ray_mm.models.recipes import VOCAB, Recipe, Tok

GLM4V_TOKENS = ("<|image|>", "<|video|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>")

RECIPE = Recipe(
    name="glm4v",
    processor_class="Glm4vProcessor",
    special_tokens=QWEN_CHAT_SPECIALS + GLM4V_TOKENS,
    named_tokens=(("image_token", "<|image|>"), ("video_token", "<|video|>")),
    # GLM-4.1V's own chat template wraps each media part in its begin/end tokens.
    media_parts=(
        MediaPart("image", "<|begin_of_image|><|image|><|end_of_image|>"),
        MediaPart("video", "<|begin_of_video|><|video|><|end_of_video|>"),
    ),
    sub_processors=(
        # Budgets count t * h * w pixels (an image is two frames): 128 merged tokens at most per image.
        ("image_processor", "Glm4vImageProcessor",
         {"size": {"shortest_edge": 56 * 56, "longest_edge": 2 * 128 * 28 * 28}, "patch_size": 14,
          "temporal_patch_size": 2, "merge_size": 2}),
        # Per video (all frames): 4 frames of 320x180 -> 2 groups of 6x12 patches (18 tokens each).
        ("video_processor", "Glm4vVideoProcessor",
         {"size": {"shortest_edge": 56 * 56, "longest_edge": 4 * 112 * 168}, "patch_size": 14,
          "temporal_patch_size": 2, "merge_size": 2, "do_sample_frames": False}),
    ),
    config_class="Glm4vConfig",
    config={
        "text_config": {
            **TEXT_CONFIG,
            "model_type": "glm4v_text",
            "vocab_size": VOCAB,
            "pad_token_id": Tok("<|endoftext|>"),
            # head_dim 32 -> 16 rotary frequencies over (t, h, w); GLM rotates half of each head.
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                                "partial_rotary_factor": 0.5},
        },
        "vision_config": {
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "in_channels": 3,
            "image_size": 112,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": TEXT_CONFIG["hidden_size"],
        },
        "image_token_id": Tok("<|image|>"),
        "video_token_id": Tok("<|video|>"),
        "image_start_token_id": Tok("<|begin_of_image|>"),
        "image_end_token_id": Tok("<|end_of_image|>"),
        "video_start_token_id": Tok("<|begin_of_video|>"),
        "video_end_token_id": Tok("<|end_of_video|>"),
        "tie_word_embeddings": True,
    },
    architectures=("Glm4vForConditionalGeneration",),
)
