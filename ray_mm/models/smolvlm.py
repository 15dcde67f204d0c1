"""SmolVLM: the generic adapter, with video frames embedded at the image token.

``SmolVLMProcessor`` expands a ``<video>`` into one single-view image block per frame, whose
positions are ``<image>`` tokens: the model has one feature token (``config.image_token_id``) and
no ``video_token_id``, and its ``get_image_features`` embeds images and video frames alike. The
generic rule (the config's ``<modality>_token_id``, else the placeholder) would make ``<video>``
the video's feature token, and that token never occurs in the expansion; here every modality's
feature token is the image token.

``replace_video_token`` reads ``pixel_values.shape[1]`` (the frame count), which only a tensor has:
the processor's own ``__call__`` works only with a ``return_tensors``, so videos are processed with
``return_tensors="pt"`` (the generic adapter asks for none and converts what it gets to numpy).

Everything else (per-item ``_process_images`` / ``_process_videos`` with the sampling metadata,
outputs minus ``unused_input_names``, the model's own encoder) is the generic adapter's.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from ray_mm.models.generic import GenericAdapter
from ray_mm.models.registry import register_adapter


@register_adapter("smolvlm")
class SmolVLMAdapter(GenericAdapter):
    """SmolVLM: images (tiles) and videos (timestamped frames), both embedded at ``<image>``."""

    @cached_property
    def feature_tokens(self) -> dict[str, str]:  # type: ignore[override]
        image = self.tokenizer.convert_ids_to_tokens(self._config_token_id("image"))
        return dict.fromkeys(self.modalities, image)

    def family_kwargs(self, modality: str) -> dict[str, Any]:
        return {"return_tensors": "pt"} if modality == "video" else {}
