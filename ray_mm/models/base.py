"""The model adapter interface: one local Hugging Face model directory, seen item by item.

An adapter wraps ``AutoProcessor`` / ``AutoConfig`` of a local directory (no hub
access) and answers what the rest of ray-mm needs:

- which placeholder tokens and ids the model uses, read from its tokenizer;
- how to turn one media item into the processor's feature arrays, its grid and
  its number of placeholder tokens, exactly as the HF processor would for the
  same item inside a whole request;
- how to tokenize text and render a chat template the way the processor does;
- how to build the (tiny, randomly initialised) encoder from ``config.json`` and
  run it on one item's features.

Adapters declare capabilities as class attributes (modality set, dynamic frame
expansion) and register by name (:mod:`ray_mm.models.registry`).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ray_mm.types import Expansion, ItemFeatures

if TYPE_CHECKING:  # pragma: no cover
    import torch

# OpenAI-style content part types and the normalized type they stand for.
_PART_TYPES: dict[str, str] = {
    "text": "text",
    "input_text": "text",
    "image": "image",
    "image_url": "image",
    "input_image": "image",
    "video": "video",
    "video_url": "video",
    "audio": "audio",
    "audio_url": "audio",
    "input_audio": "audio",
}


def normalize_content_part(part: Any) -> dict[str, Any]:
    """Map one OpenAI-ish content part to ``{"type": "text", "text": ...}`` or ``{"type": <modality>}``.

    Media payloads (URLs, base64) are dropped: the chat template only needs to
    know where a placeholder goes.
    """
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if not isinstance(part, Mapping):
        raise ValueError(f"content part must be a string or an object, got {type(part).__name__}")
    ptype = part.get("type")
    if ptype is None:
        # Tolerate parts that only carry their payload key, e.g. {"image_url": {...}}.
        for key in _PART_TYPES:
            if key in part:
                ptype = key
                break
    norm = _PART_TYPES.get(str(ptype)) if ptype is not None else None
    if norm is None:
        raise ValueError(f"unsupported content part type {ptype!r}")
    if norm == "text":
        text = part.get("text", "")
        if not isinstance(text, str):
            raise ValueError("text content part must carry a string 'text'")
        return {"type": "text", "text": text}
    return {"type": norm}


def normalize_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Normalize OpenAI chat messages for a Qwen-style chat template."""
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping) or "role" not in msg:
            raise ValueError(f"message {i} must be an object with a 'role'")
        content = msg.get("content", "")
        if content is None:
            content = ""
        if isinstance(content, str):
            out.append({"role": str(msg["role"]), "content": content})
        elif isinstance(content, Sequence):
            out.append({"role": str(msg["role"]), "content": [normalize_content_part(p) for p in content]})
        else:
            raise ValueError(f"message {i} content must be a string or a list of parts")
    return out


class ModelAdapter(ABC):
    """Base class of model adapters (vLLM-style: one subclass per model family, registered by name).

    Subclasses set ``name`` (done by :func:`~ray_mm.models.registry.register_adapter`),
    ``modalities`` (the placeholder modalities the model has) and may set
    ``dynamic_frame_expansion`` / ``expand_video_as_frames`` /
    ``frames_from_videos_in_prompt_order``.
    """

    name: ClassVar[str] = ""
    #: Placeholder modalities of the model: the ``modality`` of the items ``process`` returns.
    modalities: ClassVar[frozenset[str]] = frozenset()
    #: True when one input item can expand into a number of placeholders known only after
    #: decoding (MiniCPM-V style frames); alignment then takes the legacy scan.
    dynamic_frame_expansion: ClassVar[bool] = False
    #: True when a video input is processed as a sequence of image items (one per frame).
    expand_video_as_frames: ClassVar[bool] = False
    #: With ``expand_video_as_frames``: True when the frames of an entry in the request's
    #: ``videos`` list land on the right image placeholders. Alignment orders items per
    #: modality (all images, then all videos), so a video's frames would follow every image,
    #: whatever the prompt order; an adapter that does not place them itself leaves this False,
    #: and such requests are refused (400): the video goes among ``images`` with ``"kind": "video"``.
    frames_from_videos_in_prompt_order: ClassVar[bool] = False
    #: True when ``process`` wants to know how a video's frames were sampled: the pipeline then
    #: passes ``options["video_metadata"]`` (``fps``, ``total_num_frames``, ``frames_indices``,
    #: ``duration`` of the source), the form HF video processors take.
    takes_video_metadata: ClassVar[bool] = False
    #: True when the adapter takes the uint8 transport (``options["transport"] == "uint8"``: ``process``
    #: returns resized uint8 pixels, ``finish_features`` turns them into what the model consumes). The
    #: pipeline passes the option only to such adapters; the others always ship their float32 output.
    uint8_transport: ClassVar[bool] = False
    #: Modalities whose precomputed features (``processor_output`` / ``precomputed_embedding``) the adapter
    #: accepts: those whose expansion is one run of ``num_tokens`` feature tokens, counted from the grid.
    precomputed_modalities: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, model_dir: str | Path) -> None:
        from transformers import AutoConfig, AutoProcessor

        self.model_dir = Path(model_dir)
        self.processor = AutoProcessor.from_pretrained(str(self.model_dir), local_files_only=True)
        self.config = AutoConfig.from_pretrained(str(self.model_dir), local_files_only=True)
        self.tokenizer = self.processor.tokenizer
        self._default_kwargs = self._processor_default_kwargs()

    # ------------------------------------------------------------------ capabilities

    @property
    def input_modalities(self) -> frozenset[str]:
        """Media modalities ``process`` accepts (adds ``video`` when videos expand into frames)."""
        if self.expand_video_as_frames:
            return self.modalities | {"video"}
        return self.modalities

    # ------------------------------------------------------------------ tokens

    @property
    @abstractmethod
    def placeholder_tokens(self) -> dict[str, str]:
        """Per modality, the single media token that is repeated ``num_tokens`` times (e.g. ``<|image_pad|>``)."""

    @property
    @abstractmethod
    def placeholder_texts(self) -> dict[str, str]:
        """Per modality, what a user writes in a prompt for one item."""

    @cached_property
    def placeholder_token_ids(self) -> dict[str, int]:
        """Per modality, the id of the media token, read from the processor / tokenizer."""
        ids: dict[str, int] = {}
        for modality, token in self.placeholder_tokens.items():
            tid = getattr(self.processor, f"{modality}_token_id", None)
            if tid is None:
                tid = self.tokenizer.convert_tokens_to_ids(token)
            if tid is None or tid == self.tokenizer.unk_token_id:
                raise ValueError(f"{self.model_dir}: tokenizer has no id for {modality} token {token!r}")
            ids[modality] = int(tid)
        return ids

    @cached_property
    def media_token_ids(self) -> frozenset[int]:
        return frozenset(self.placeholder_token_ids.values())

    @property
    def feature_tokens(self) -> dict[str, str]:
        """Per modality, the token whose runs carry an item's embeddings (default: the placeholder token)."""
        return self.placeholder_tokens

    @cached_property
    def feature_token_ids(self) -> dict[str, int]:
        return {m: int(self.tokenizer.convert_tokens_to_ids(t)) for m, t in self.feature_tokens.items()}

    @cached_property
    def special_token_ids(self) -> frozenset[int]:
        """Ids of the tokenizer's added special tokens: text never merges across them."""
        return frozenset(int(i) for i in self.tokenizer.all_special_ids) | frozenset(
            int(i) for i, tok in self.tokenizer.added_tokens_decoder.items() if tok.special)

    @cached_property
    def _special_texts(self) -> tuple[str, ...]:
        return tuple(self.tokenizer.convert_ids_to_tokens(sorted(self.special_token_ids)))

    # ------------------------------------------------------------------ expansions

    def expansion_from_text(self, modality: str, replacement: str) -> Expansion:
        """The :class:`Expansion` of a processor's replacement text: split at runs of the feature
        token, text pieces tokenized alone. A piece between two runs is bounded by special tokens,
        so it tokenizes alone as it does in the whole text; the first and last pieces are marked
        open where they meet the prompt with plain text (see ``ray_mm.align``)."""
        token = self.feature_tokens[modality]
        parts = re.split(f"((?:{re.escape(token)})+)", replacement)
        strings, runs = parts[0::2], [len(run) // len(token) for run in parts[1::2]]
        texts = [self._piece_ids(piece) for piece in strings]
        special = self.special_token_ids
        lead = next((k for k, t in enumerate(texts[0]) if t in special), len(texts[0]))
        trail = next((k for k, t in enumerate(reversed(texts[-1])) if t in special), len(texts[-1]))
        return Expansion(
            texts=texts,
            runs=runs,
            token=self.feature_token_ids[modality],
            strings=strings,
            open_start=bool(strings[0]) and not strings[0].startswith(self._special_texts),
            open_end=bool(strings[-1]) and not strings[-1].endswith(self._special_texts),
            lead=lead,
            trail=trail,
        )

    def _piece_ids(self, piece: str) -> list[int]:
        if not piece:
            return []
        cache = self.__dict__.setdefault("_piece_cache", {})
        ids = cache.get(piece)
        if ids is None:
            ids = list(self.tokenizer(piece, add_special_tokens=False)["input_ids"])
            if len(cache) < 4096:  # pieces repeat (timestamps, slice rows); the bound keeps odd inputs from growing it
                cache[piece] = ids
        return list(ids)

    def item_expansion(self, modality: str, expansion: Expansion | None, index: int) -> Expansion | None:
        """The expansion of an item that is number ``index`` among its modality's items in the request,
        from the one ``process`` built. Default: unchanged. Adapters override it for call-level
        extras that depend on the item's place (MiniCPM-V's ``<image_id>k</image_id>``); the item's
        processed features never depend on it, so the content-hash cache stays valid."""
        return expansion

    def replacement_text(self, modality: str, processed: Mapping[str, Any], index: int = 0, **kwargs: Any) -> str:
        """The processor's own replacement text for item ``index`` of ``processed`` (its sub-processor's
        output), from transformers' shared API (``replace_image_token`` and friends)."""
        return str(getattr(self.processor, f"replace_{modality}_token")(processed, index, **kwargs))

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text``, by the same tokenizer call the HF processor makes."""
        return list(self.tokenizer(text, **self._default_kwargs.get("text_kwargs", {}))["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        """Render chat messages (OpenAI-ish content parts accepted) to the prompt text."""
        return self.processor.apply_chat_template(
            normalize_messages(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )

    # ------------------------------------------------------------------ processing

    @abstractmethod
    def process(self, modality: str, data: Any, options: Mapping[str, Any] | None = None) -> list[ItemFeatures]:
        """Process one decoded media item into the features of the placeholder(s) it fills.

        ``data``: a PIL image (image), a uint8 ``(T, H, W, 3)`` frames array, already
        sampled (video), a float32 16 kHz mono array (audio). ``options`` may carry
        per-item processor kwargs (e.g. ``min_pixels`` / ``max_pixels``); unknown keys
        are ignored. Returns one :class:`ItemFeatures` per placeholder (several when a
        video expands into frames), with numpy arrays.

        Input the model cannot take raises :class:`~ray_mm.errors.MediaUnsupportedError`
        (see :meth:`check_input`) or ``ValueError`` (the HF processors' own refusals; a
        ``TypeError`` raised inside a library counts too): the pipeline reports it as a 4xx
        naming the item. Any other exception, and a ``TypeError`` raised in ray-mm's own
        code, is taken for a fault of ray-mm (500).
        """

    def check_input(self, modality: str, data: Any, options: Mapping[str, Any] | None = None) -> None:
        """Refuse, before any pixel work, media the model's processor would refuse.

        Raises :class:`~ray_mm.errors.MediaUnsupportedError` with the reason (the caller adds
        the item's label). ``process`` calls it first, so every path through the adapter (a
        hand-tuned one, the HF processor) refuses the same input with the same error. The
        default accepts everything; adapters override it with the limits they know.
        """
        return None

    def finish_features(self, features: Mapping[str, Any]) -> dict[str, Any]:
        """Turn transported features into what the model consumes (identity unless ``uint8_transport``)."""
        return dict(features)

    # ------------------------------------------------------------------ encoder

    @abstractmethod
    def build_encoder(self) -> torch.nn.Module:
        """The model's media encoder built from ``config.json`` with random init, in eval mode."""

    @abstractmethod
    def encode(self, module: torch.nn.Module, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Run ``module`` on one item's features; returns ``(num_tokens, hidden)`` embeddings."""

    # ------------------------------------------------------------------ helpers

    def _processor_default_kwargs(self) -> dict[str, Any]:
        """The processor's merged default kwargs per modality (what its ``__call__`` passes down)."""
        try:
            merged = self.processor._merge_kwargs(tokenizer_init_kwargs=self.tokenizer.init_kwargs)
        except Exception:  # pragma: no cover - private API changed; fall back to sub-processor defaults
            return {}
        return {k: dict(v) for k, v in merged.items() if isinstance(v, dict)}

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickles as "load this adapter over this dir" (e.g. shipped to a Ray actor): the receiving
        # process loads the processor from the local directory and caches it.
        from ray_mm.models.registry import load_adapter

        return (load_adapter, (str(self.model_dir), self.name))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, model_dir={str(self.model_dir)!r})"


def process_image_or_video(adapter: Any, modality: str, data: Any, options: Mapping[str, Any] | None) -> list[ItemFeatures]:
    """``process`` of an adapter with ``process_image`` and ``process_video``: one item, one placeholder."""
    if modality == "image":
        return [adapter.process_image(data, options)]
    if modality == "video":
        return [adapter.process_video(data, options)]
    raise ValueError(f"{adapter.name} does not take {modality!r} items (modalities: {sorted(adapter.modalities)})")


def encoder_pixels(module: torch.nn.Module, features: Mapping[str, Any], image_key: str, video_key: str) -> tuple[torch.Tensor, Any]:
    """One item's pixels for a vision encoder: ``pixel_values`` (an image) or ``pixel_values_videos``
    (a video) on ``module``'s device and in its dtype, with the feature that lays them out
    (``features[image_key]`` or ``features[video_key]``, as it is)."""
    import torch

    if "pixel_values" in features:
        pixels, layout = features["pixel_values"], features[image_key]
    elif "pixel_values_videos" in features:
        pixels, layout = features["pixel_values_videos"], features[video_key]
    else:
        raise ValueError(f"no pixel values among features {sorted(features)}")
    param = next(module.parameters())
    return torch.as_tensor(pixels).to(device=param.device, dtype=param.dtype, non_blocking=True), layout


def as_numpy_features(batch: Mapping[str, Any], keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Pick ``keys`` from a processor output as numpy arrays (torch tensors converted without copy)."""
    out: dict[str, np.ndarray] = {}
    for key in keys:
        value = batch[key]
        if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
            value = value.detach().cpu().numpy()
        out[key] = np.asarray(value)
    return out
