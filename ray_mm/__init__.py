"""ray-mm: multimodal preprocessing for VLM serving on a Ray cluster.

The public API is this module's ``__all__``. Light names are imported eagerly;
the pipeline, model adapters (transformers) and the pool (Ray) load on first use,
so ``import ray_mm`` stays cheap and Ray-free.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .config import AudioSampling, MediaPolicy, RayMMConfig, VideoSampling, load_config
from .errors import (
    AlignmentError,
    InternalError,
    MediaDecodeError,
    MediaFetchError,
    MediaLimitError,
    MediaPolicyError,
    MediaUnsupportedError,
    MMError,
    PoolSaturatedError,
    RequestError,
    RequestTimeoutError,
)
from .pool.config import PoolConfig, load_pool_config
from .types import Alignment, ItemMeta, MediaSpec, ParsedRequest, ProcessedItem

_LAZY = {
    "Preprocessor": ("ray_mm.pipeline", "Preprocessor"),
    "align": ("ray_mm.align", "align"),
    "ModelAdapter": ("ray_mm.models", "ModelAdapter"),
    "load_adapter": ("ray_mm.models", "load_adapter"),
    "make_model": ("ray_mm.models", "make_model"),
    "register_adapter": ("ray_mm.models", "register_adapter"),
    "Pool": ("actors.pool", "Pool"),
    "start_local_cluster": ("actors.local_cluster", "start_local_cluster"),
}

__all__ = [
    "AlignmentError",
    "Alignment",
    "AudioSampling",
    "InternalError",
    "ItemMeta",
    "MMError",
    "MediaDecodeError",
    "MediaFetchError",
    "MediaLimitError",
    "MediaPolicy",
    "MediaPolicyError",
    "MediaSpec",
    "MediaUnsupportedError",
    "ModelAdapter",
    "ParsedRequest",
    "Pool",
    "PoolConfig",
    "PoolSaturatedError",
    "Preprocessor",
    "ProcessedItem",
    "RayMMConfig",
    "RequestError",
    "RequestTimeoutError",
    "VideoSampling",
    "align",
    "load_adapter",
    "load_config",
    "load_pool_config",
    "make_model",
    "register_adapter",
    "start_local_cluster",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ray_mm' has no attribute {name!r}")
