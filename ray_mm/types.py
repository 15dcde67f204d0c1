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

    @property
    def label(self) -> str:
        return f"{self.modality} {self.index} of request {self.request_id}"


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

    def to_record(self) -> dict[str, Any]:
        m = self.meta
        rec: dict[str, Any] = {
            "modality": m.modality,
            "index": m.index,
            "offsets": [list(o) for o in self.offsets],
            "num_tokens": m.num_tokens,
            "grid_thw": m.grid_thw,
            "feature_shape": m.feature_shape,
            "feature_dtype": m.feature_dtype,
            "hash": m.hash,
            "pad_value": m.pad_value,
        }
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
