"""Plain data records passed between stages: request specs, processed items, aligned requests.

They hold numpy arrays and builtins only, so they pickle cheaply and numpy
payloads travel through Ray's object store zero-copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Modality = Literal["image", "video", "audio"]
MODALITIES: tuple[Modality, ...] = ("image", "video", "audio")


@dataclass
class MediaSpec:
    """One media entry of a request, before fetching."""

    modality: Modality
    index: int  # position among the request's items of this modality
    source: Any  # str (URL, data: URI, path), bytes, PIL image, numpy array, or a precomputed-feature dict
    options: dict[str, Any] = field(default_factory=dict)
    request_id: str = ""
    # For one item split out of an engine's per-modality dict (``ray_mm.request.bundle``): what the
    # dict said of it (``expansion`` from its offsets, ``num_tokens``, ``hash``, ``runs``); None otherwise.
    given: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        return f"{self.modality} {self.index} of request {self.request_id}"


@dataclass
class Expansion:
    """What replaces one item's compact placeholder: text pieces around runs of the item's feature token.

    The ids are ``texts[0] + [token] * runs[0] + texts[1] + ... + texts[-1]``; the runs are the
    item's embedding positions (``len(texts) == len(runs) + 1``). Qwen2-VL's image is the
    trivial case, one run and no text; MiniCPM-V's slices and Qwen3-VL's timestamps are text
    between runs. ``strings`` are the text pieces as text (for splicing into a prompt when ids
    alone would tokenize differently). ``open_start`` / ``open_end``: the first / last piece
    begins / ends with plain text, so its tokenization can depend on the text next to it.
    """

    texts: list[list[int]]
    runs: list[int]
    token: int
    strings: list[str] = field(default_factory=list)
    open_start: bool = False
    open_end: bool = False
    lead: int = 0  # tokens of plain text before the first special token (they may merge with the prompt's text)
    trail: int = 0  # likewise after the last one

    def core(self) -> list[int]:
        """The ids from the first to the last special token: what tokenizes the same whatever surrounds it."""
        ids = self.ids()
        return ids[self.lead : len(ids) - self.trail]

    @classmethod
    def single_run(cls, token: int, n: int) -> Expansion:
        return cls([[], []], [n], token, ["", ""])

    @property
    def num_tokens(self) -> int:
        return sum(self.runs)

    @property
    def length(self) -> int:
        return sum(self.runs) + sum(len(t) for t in self.texts)

    def ids(self) -> list[int]:
        out: list[int] = list(self.texts[0])
        for n, text in zip(self.runs, self.texts[1:]):
            out.extend([self.token] * n)
            out.extend(text)
        return out

    def extend_into(self, out: list[int]) -> list[tuple[int, int]]:
        """Append :meth:`ids` to ``out`` in one pass; the inclusive ``(start, end)`` of each run in ``out``
        (the fast path's hot loop: no intermediate list, no second pass for the offsets)."""
        out.extend(self.texts[0])
        token, offsets = self.token, []
        for n, text in zip(self.runs, self.texts[1:]):
            start = len(out)
            out.extend([token] * n)
            offsets.append((start, start + n - 1))
            out.extend(text)
        return offsets

    def relative_runs(self) -> list[tuple[int, int]]:
        """Inclusive ``(start, end)`` of each run, relative to the start of the expansion."""
        out, pos = [], len(self.texts[0])
        for n, text in zip(self.runs, self.texts[1:]):
            out.append((pos, pos + n - 1))
            pos += n + len(text)
        return out

    def text(self, token_text: str) -> str:
        """The expansion as text (the processor's replacement string), given the feature token's text."""
        return self.strings[0] + "".join(token_text * n + s for n, s in zip(self.runs, self.strings[1:]))


@dataclass
class ItemMeta:
    """Small metadata of one processed item: all the coordinator needs to align."""

    modality: Modality  # modality of the placeholder it fills
    index: int  # index among items of that modality, in request order
    num_tokens: int
    grid_thw: list[int] | None
    hash: str
    feature_shape: list[int]
    feature_dtype: str
    expansion: Expansion | None = None  # None: one run of num_tokens feature tokens (the trivial expansion)
    extras: dict[str, Any] = field(default_factory=dict)  # small per-item facts for the record (second_per_grid_ts, ...)
    source_modality: Modality | None = None  # set when a video was expanded into image frames
    source_index: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    node_id: str | None = None

    @property
    def pad_value(self) -> int:
        return pad_value_of(self.hash)


@dataclass
class ProcessedItem:
    """Metadata plus the feature arrays exactly as the model consumes them.

    ``features`` maps processor output names (``pixel_values``, ``image_grid_thw``,
    ``input_features``, ...) to numpy arrays; ``primary`` names the main one.
    """

    meta: ItemMeta
    features: dict[str, np.ndarray]
    primary: str
    base_expansion: Expansion | None = None  # as processed, before call-level extras (``ModelAdapter.item_expansion``)

    @property
    def feature(self) -> np.ndarray:
        return self.features[self.primary]


@dataclass
class ParsedRequest:
    """A validated request line: text or ids, and media specs per modality."""

    request_id: str
    prompt: str | None = None
    input_ids: list[int] | None = None
    skip_tokenizer_init: bool = False
    media: dict[str, list[MediaSpec]] = field(default_factory=dict)

    def items(self) -> list[MediaSpec]:
        return [spec for m in MODALITIES for spec in self.media.get(m, [])]


@dataclass
class AlignedItem:
    meta: ItemMeta
    offsets: list[tuple[int, int]]  # inclusive (start, end) runs in input_ids

    def span(self) -> list[int]:
        """Inclusive ``[start, end]`` of the ids that replaced the item's compact placeholder (its whole
        expansion: runs and the text between and around them). Collapsing each span back into one
        placeholder token gives the compact ids an engine that expands prompts itself (vLLM) takes."""
        exp = self.meta.expansion
        lead = len(exp.texts[0]) if exp is not None else 0
        trail = len(exp.texts[-1]) if exp is not None else 0
        return [self.offsets[0][0] - lead, self.offsets[-1][1] + trail]

    def to_record(self) -> dict[str, Any]:
        m = self.meta
        rec: dict[str, Any] = {
            "modality": m.modality,
            "index": m.index,
            "offsets": [list(o) for o in self.offsets],
            "span": self.span(),
            "num_tokens": m.num_tokens,
            "grid_thw": m.grid_thw,
            "feature_shape": m.feature_shape,
            "feature_dtype": m.feature_dtype,
            "hash": m.hash,
            "pad_value": m.pad_value,
        }
        rec.update(m.extras)
        if m.source_modality is not None:
            rec["source"] = {"modality": m.source_modality, "index": m.source_index}
        return rec


@dataclass
class Alignment:
    """Output of token alignment: expanded ids and items in prompt order."""

    input_ids: list[int]
    items: list[AlignedItem]
    path: Literal["fast", "legacy"]


PAD_VALUE_BASE = 1_000_000


def pad_value_of(content_hash: str) -> int:
    """``1_000_000 + (hash mod 2**30)``, the pad id form engines' prefix caches use."""
    return PAD_VALUE_BASE + int(content_hash, 16) % (1 << 30)


@dataclass
class ItemFeatures:
    """What a model adapter returns for one placeholder's worth of media.

    ``features`` are the processor's outputs for this item alone, as numpy
    arrays (batch dimension as the processor gives it for one item);
    ``primary`` names the array the model consumes as the item's feature
    (``pixel_values``, ``pixel_values_videos``, ``input_features``).
    """

    modality: Modality  # the placeholder modality this fills
    features: dict[str, np.ndarray]
    primary: str
    num_tokens: int
    grid_thw: list[int] | None = None
    expansion: Expansion | None = None  # None: one run of num_tokens feature tokens
    extras: dict[str, Any] = field(default_factory=dict)  # small facts for the record (second_per_grid_ts, ...)
