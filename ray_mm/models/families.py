"""The table of per-family facts that ``make_model`` builds tiny offline model directories from.

One :class:`FamilySpec` per family: its special tokens (and the tokenizer attributes a processor
reads, such as MiniCPM-V's ``tokenizer.image_token``), the compact placeholder each chat-template
media part renders to, a processor builder (the real in-tree Hugging Face processor class with
small pixel budgets) and a ``config.json`` builder (tiny vision tower / audio encoder and tiny text
model, token ids taken from the tokenizer). Every row is a data row of :mod:`ray_mm.models.recipes`,
one module per family; this module holds :class:`FamilySpec` and :class:`MediaPart`, the constants
rows are written with (chat specials, pixel budgets and slice settings, the tiny text model) and
:data:`FAMILY_SPECS`. The shared tokenizer training and chat-template skeleton live in
:mod:`ray_mm.models.make_model`.

Nothing here imports transformers at module import time: builders import it when called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

QWEN_CHAT_SPECIALS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN_VL_SPECIALS: tuple[str, ...] = QWEN_CHAT_SPECIALS + (
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Pixel budgets of the tiny Qwen2-VL / Qwen2.5-VL processors (factor = patch 14 * merge 2 = 28).
IMAGE_MIN_PIXELS = 4 * 28 * 28  # 3136: 4 merged tokens at least
IMAGE_MAX_PIXELS = 256 * 28 * 28  # 200704: 1920x1080 -> 588x336, 252 tokens
VIDEO_MIN_PIXELS = 4 * 28 * 28  # per frame
VIDEO_MAX_PIXELS = 64 * 28 * 28  # 50176 per frame: 640x360 -> 280x168, 60 tokens per 2 frames

# Qwen3-VL (factor = patch 16 * merge 2 = 32). Its video budget is per *video* (t * h * w), so the
# per-frame bound is the qwen-vl-utils cap: `max_video_tokens` merged tokens' worth of pixels a frame.
QWEN3_IMAGE_MIN_PIXELS = 4 * 32 * 32  # 4096
QWEN3_IMAGE_MAX_PIXELS = 256 * 32 * 32  # 262144: 1920x1080 -> 672x352, 231 tokens
QWEN3_VIDEO_MIN_PIXELS = 4 * 32 * 32  # whole video
QWEN3_VIDEO_FRAME_TOKENS = 64  # per frame: 640x360 -> 320x192, 60 tokens per 2 frames
QWEN3_VIDEO_MAX_PIXELS = QWEN3_VIDEO_FRAME_TOKENS * 32 * 32 * 256  # the cap binds up to 256 frames

# MiniCPM-V 4.6: a slice is ~scale_resolution^2 pixels; 600x400 -> 2x3 slices, 200x200 -> none.
MINICPM_SCALE_RESOLUTION = 224
MINICPM_MAX_SLICES = 9
MINICPM_VIDEO_MAX_SLICES = 2  # 640x360 frame -> 1x2 slices
# ... and its tokenizer attributes (the processor reads its tokens from them).
MINICPM_NAMED_TOKENS: tuple[tuple[str, str], ...] = (
    ("image_token", "<|image_pad|>"),
    ("video_token", "<|video_pad|>"),
    ("image_start_token", "<image>"),
    ("image_end_token", "</image>"),
    ("slice_start_token", "<slice>"),
    ("slice_end_token", "</slice>"),
    ("image_id_start_token", "<image_id>"),
    ("image_id_end_token", "</image_id>"),
)

TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}


@dataclass(frozen=True)
class MediaPart:
    """How the chat template renders one kind of media content part.

    ``placeholder`` is the compact placeholder text (what the processor expands).
    ``label`` adds ``"<label> <k>: "`` before it: always if ``label_always``,
    otherwise only with ``add_vision_id``.
    """

    modality: str
    placeholder: str
    label: str | None = None
    label_always: bool = False
    suffix: str = ""


@dataclass(frozen=True)
class FamilySpec:
    """Everything ``make_model`` needs to know about one family."""

    name: str
    processor_class: str  # the in-tree transformers processor class AutoProcessor must give
    special_tokens: tuple[str, ...]  # trained as special tokens, in this order (ids 0..n-1)
    media_parts: tuple[MediaPart, ...]
    build_processor: Callable[[Any, str], Any]  # (tokenizer, chat_template) -> processor
    build_config: Callable[[Any], Any]  # tokenizer -> PreTrainedConfig
    named_tokens: tuple[tuple[str, str], ...] = ()  # tokenizer attributes, e.g. ("image_token", "<|image_pad|>")
    unk_token: str | None = None

    @property
    def placeholders(self) -> dict[str, str]:
        """Compact placeholder text per modality, as the chat template renders it."""
        return {part.modality: part.placeholder for part in self.media_parts}


# make-model's first five families keep the order it has always listed them in (CLI choices, benchmark
# defaults); the other rows follow by name.
FIRST_FAMILIES: tuple[str, ...] = ("qwen2_vl", "qwen2_audio", "qwen2_5_vl", "qwen3_vl", "minicpmv4_6")


def _table() -> dict[str, FamilySpec]:
    """The rows of :mod:`ray_mm.models.recipes`, :data:`FIRST_FAMILIES` first."""
    from ray_mm.models.recipes import recipes  # imports this module's classes, defined by now

    rows = recipes()
    names = [r.name for r in rows]
    twice = {name for name in names if names.count(name) > 1}
    if twice:
        raise ValueError(f"families defined twice: {sorted(twice)}")
    specs = {r.name: r.spec() for r in rows}
    return {**{name: specs[name] for name in FIRST_FAMILIES}, **specs}


FAMILY_SPECS: dict[str, FamilySpec] = _table()
