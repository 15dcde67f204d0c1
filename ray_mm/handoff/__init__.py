"""Engine hand-off: the engines' own input forms (SGLang, vLLM) built from ray-mm records, M-RoPE
positions, the GPU-side consumers that pass those payloads to an engine's function, and host staging.

Only the light parts load here (``engines``, ``mrope``: numpy); ``consumers`` and ``staging`` (torch)
are imported by their full names, on the GPU worker.
"""

from .engines import (
    GRID_KEYS,
    SGLANG_DATA_KEYS,
    SGLANG_FEATURE_NAMES,
    PendingEmbeddings,
    as_precomputed_request,
    compact_ids,
    describe,
    encode_arrays,
    engine_kwargs,
    to_sglang,
    to_vllm,
)
from .mrope import MropeSpec, mrope_positions, mrope_spec_for

__all__ = [
    "GRID_KEYS",
    "SGLANG_DATA_KEYS",
    "SGLANG_FEATURE_NAMES",
    "MropeSpec",
    "PendingEmbeddings",
    "as_precomputed_request",
    "compact_ids",
    "describe",
    "encode_arrays",
    "engine_kwargs",
    "mrope_positions",
    "mrope_spec_for",
    "to_sglang",
    "to_vllm",
]
