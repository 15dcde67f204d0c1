"""Qwen2.5-Omni: the generic adapter, with the thinker as the encoder.

Processing and expansions are the generic adapter's (images ``<|IMAGE|>`` x n, videos
``<|VIDEO|>`` x n, audio ``<|AUDIO|>`` x n, each in one run). Only the encoder differs:
``config.json`` is the hub's composite (thinker, talker, token2wav), which ``AutoModel`` does not
map; the media towers and their ``get_<modality>_features`` live in the thinker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ray_mm.models.generic import GenericAdapter
from ray_mm.models.registry import register_adapter

if TYPE_CHECKING:  # pragma: no cover
    import torch


@register_adapter("qwen2_5_omni")
class Qwen2_5OmniAdapter(GenericAdapter):
    def build_encoder(self) -> torch.nn.Module:
        """The thinker (audio tower, vision tower, text model) from ``config.json``, random init."""
        from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniThinkerModel

        return Qwen2_5OmniThinkerModel._from_config(self.config.thinker_config).eval()
