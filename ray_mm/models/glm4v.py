"""GLM-4.1V: the generic adapter, with a video's embedding positions on the *image* token.

``Glm4vProcessor.replace_video_token`` writes each frame pair as ``<|begin_of_image|>`` +
``<|image|>`` x n + ``<|end_of_image|>`` + its second, and the model scatters video embeddings
into the ``<|image|>`` positions between ``<|begin_of_video|>`` and ``<|end_of_video|>``
(``Glm4vModel.get_placeholder_mask``); the config's ``video_token_id`` is only the compact
placeholder. Everything else is the generic adapter's.
"""

from __future__ import annotations

from functools import cached_property

from ray_mm.models.generic import GenericAdapter
from ray_mm.models.registry import register_adapter


@register_adapter("glm4v")
class Glm4vAdapter(GenericAdapter):
    @cached_property
    def feature_tokens(self) -> dict[str, str]:  # type: ignore[override]
        out = dict(GenericAdapter.feature_tokens.func(self))  # the generic choice, then the video's
        if "video" in out:
            out["video"] = str(self.processor.image_token)
        return out
