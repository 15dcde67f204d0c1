"""Families as data: one :class:`Recipe` row per module of this package, for ``make_model``.

A row names the family's in-tree processor class, its sub-processors with small settings,
its special tokens (and the tokenizer attributes its processor reads), the compact placeholder
each chat-template media part renders to, and its ``config.json`` as a plain dict in which
``Tok("<x>")`` stands for that token's id and ``VOCAB`` for the vocabulary size. The builders
here turn a row into a :class:`~ray_mm.models.families.FamilySpec`; no family needs a function
of its own unless its processor cannot be built from keyword arguments. The pieces many rows
share live here too: the tiny text model with the chat ids (:func:`text_config`) and the tiny
ViT-style vision towers (:func:`vision_tower`, :func:`siglip_tower`); what related families share
stays in the module of the one the others build on (Qwen2-VL, Qwen2.5-VL, Qwen2-Audio, Idefics3,
LLaVA).

Adding a family: a module here named after it with ``RECIPE = Recipe(...)`` (modules are found
by listing the package), and a conformance test (see the README's "Adding a model family").
"""

from __future__ import annotations

import copy
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any

from ray_mm.models.families import TEXT_CONFIG, FamilySpec, MediaPart


@dataclass(frozen=True)
class Tok:
    """A token's id in ``config.json``, resolved against the tiny tokenizer."""

    text: str


VOCAB = object()  # the tokenizer's size, in ``config.json``


@dataclass(frozen=True)
class Recipe:
    name: str
    processor_class: str  # in-tree class AutoProcessor must give, e.g. "Gemma3Processor"
    special_tokens: tuple[str, ...]  # trained as special tokens, ids 0..n-1
    media_parts: tuple[MediaPart, ...]
    sub_processors: tuple[tuple[str, str, dict[str, Any]], ...]  # (processor kwarg, class name, settings)
    config_class: str
    config: dict[str, Any]
    processor_kwargs: dict[str, Any] = field(default_factory=dict)
    named_tokens: tuple[tuple[str, str], ...] = ()  # tokenizer attributes the processor reads
    unk_token: str | None = None
    architectures: tuple[str, ...] = ()
    chat_template: str | None = None  # None: the shared Qwen-style skeleton over ``media_parts``

    def build_processor(self, tokenizer: Any, chat_template: str) -> Any:
        import transformers

        # Copies: a processor may keep (and change) what it is given; rows are shared module data.
        subs = {kw: getattr(transformers, cls)(**copy.deepcopy(settings)) for kw, cls, settings in self.sub_processors}
        processor_cls = getattr(transformers, self.processor_class)
        return processor_cls(tokenizer=tokenizer, chat_template=self.chat_template or chat_template,
                             **subs, **copy.deepcopy(self.processor_kwargs))

    def build_config(self, tokenizer: Any) -> Any:
        import transformers

        config = getattr(transformers, self.config_class)(**_resolve(self.config, tokenizer))
        if self.architectures:
            config.architectures = list(self.architectures)
        return config

    def spec(self) -> FamilySpec:
        return FamilySpec(
            name=self.name, processor_class=self.processor_class, special_tokens=self.special_tokens,
            media_parts=self.media_parts, build_processor=self.build_processor, build_config=self.build_config,
            named_tokens=self.named_tokens, unk_token=self.unk_token,
        )


def text_config(**extra: Any) -> dict[str, Any]:
    """The tiny text model (``TEXT_CONFIG``) over the tiny vocabulary, ``<|endoftext|>`` its BOS and
    padding and ``<|im_end|>`` its EOS; ``extra`` adds keys or overrides these."""
    return {
        **TEXT_CONFIG,
        "vocab_size": VOCAB,
        "bos_token_id": Tok("<|endoftext|>"),
        "eos_token_id": Tok("<|im_end|>"),
        "pad_token_id": Tok("<|endoftext|>"),
        **extra,
    }


def vision_tower(image_size: Any, patch_size: Any, **extra: Any) -> dict[str, Any]:
    """A tiny ViT-style vision tower (width 32, MLP 64, one layer, two heads, RGB) over ``image_size``
    pixels in ``patch_size`` patches; ``extra`` adds keys or overrides these."""
    return {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_channels": 3,
        "image_size": image_size,
        "patch_size": patch_size,
        **extra,
    }


def siglip_tower(image_size: int, patch_size: int, **extra: Any) -> dict[str, Any]:
    """:func:`vision_tower` as a SigLIP vision model without its pooling head."""
    return vision_tower(image_size, patch_size, model_type="siglip_vision_model", vision_use_head=False, **extra)


def _resolve(value: Any, tokenizer: Any) -> Any:
    if isinstance(value, Tok):
        tid = tokenizer.convert_tokens_to_ids(value.text)
        if tid is None or tid == tokenizer.unk_token_id:
            raise ValueError(f"the tiny tokenizer has no token {value.text!r}")
        return int(tid)
    if value is VOCAB:
        return len(tokenizer)
    if isinstance(value, dict):
        return {k: _resolve(v, tokenizer) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_resolve(v, tokenizer) for v in value)
    return value


def recipes() -> list[Recipe]:
    """Every row, from the package's modules in name order."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    return [importlib.import_module(f"{__name__}.{name}").RECIPE for name in names]
