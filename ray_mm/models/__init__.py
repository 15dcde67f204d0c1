"""Model adapters over local Hugging Face processors, their registry, and the tiny offline model builder.

Importing this package registers the built-in adapters: ``generic`` (any processor with
transformers' replacement API; the adapter of every family without one of its own),
``qwen2_vl``, ``qwen2_5_vl``, ``qwen3_vl``, ``minicpmv4_6``, ``qwen2_audio`` and the
synthetic ``qwen2_vl_frames`` (dynamic frame expansion).
"""

from ray_mm.models import frames as _frames  # noqa: F401  (registers qwen2_vl_frames)
from ray_mm.models import generic as _generic  # noqa: F401  (registers generic: any family without an adapter)
from ray_mm.models import glm4v as _glm4v  # noqa: F401  (registers glm4v)
from ray_mm.models import internvl as _internvl  # noqa: F401  (registers internvl)
from ray_mm.models import minicpmv4_6 as _minicpmv4_6  # noqa: F401  (registers minicpmv4_6)
from ray_mm.models import paligemma as _paligemma  # noqa: F401  (registers paligemma)
from ray_mm.models import qwen2_5_omni as _qwen2_5_omni  # noqa: F401  (registers qwen2_5_omni)
from ray_mm.models import qwen2_5_vl as _qwen2_5_vl  # noqa: F401  (registers qwen2_5_vl)
from ray_mm.models import qwen2_audio as _qwen2_audio  # noqa: F401  (registers qwen2_audio)
from ray_mm.models import qwen2_vl as _qwen2_vl  # noqa: F401  (registers qwen2_vl)
from ray_mm.models import qwen3_vl as _qwen3_vl  # noqa: F401  (registers qwen3_vl)
from ray_mm.models import smolvlm as _smolvlm  # noqa: F401  (registers smolvlm)
from ray_mm.models.base import ModelAdapter, normalize_content_part, normalize_messages
from ray_mm.models.families import FAMILY_SPECS, FamilySpec, MediaPart
from ray_mm.models.frames import Qwen2VLFramesAdapter
from ray_mm.models.make_model import FAMILIES, MODEL_MARKER, make_model
from ray_mm.models.qwen2_audio import Qwen2AudioAdapter, audio_num_tokens
from ray_mm.models.qwen2_vl import Qwen2VLAdapter
from ray_mm.models.registry import (
    available_adapters,
    clear_adapter_cache,
    get_adapter_class,
    load_adapter,
    register_adapter,
    resolve_adapter_name,
    unregister_adapter,
)

__all__ = [
    "FAMILIES",
    "FAMILY_SPECS",
    "MODEL_MARKER",
    "FamilySpec",
    "MediaPart",
    "ModelAdapter",
    "Qwen2AudioAdapter",
    "Qwen2VLAdapter",
    "Qwen2VLFramesAdapter",
    "audio_num_tokens",
    "available_adapters",
    "clear_adapter_cache",
    "get_adapter_class",
    "load_adapter",
    "make_model",
    "normalize_content_part",
    "normalize_messages",
    "register_adapter",
    "resolve_adapter_name",
    "unregister_adapter",
]
