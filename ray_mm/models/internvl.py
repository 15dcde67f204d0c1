"""InternVL: the generic adapter plus what ``InternVLProcessor.__call__`` does on top of its hooks.

Images and the expansions of both modalities are the generic adapter's (the processor's own
``_process_images`` / ``_process_videos`` and ``replace_image_token`` / ``replace_video_token``).
Two things differ, both from the whole-request ``__call__``:

* **One pixel array for both modalities.** ``__call__`` pops the image processor's ``num_patches``
  (it only sizes the replacement) and the video processor's ``pixel_values_videos``
  ``(videos, frames, 3, H, W)``, and returns a single ``pixel_values``: each image's tiles and each
  video's frames, in prompt order. So an image item keeps ``pixel_values`` (its tiles) without
  ``num_patches``, and a video item's frames become its ``pixel_values`` ``(frames, 3, H, W)``: the
  request's array is the items' arrays concatenated in prompt order, and the model reads video
  frames through ``get_image_features`` like image tiles.
* **One feature token for both modalities.** The model fills ``config.image_token_id``
  (``<IMG_CONTEXT>``) positions with both image tiles and video frames; a video's expansion is
  ``Frame{i}: <img><IMG_CONTEXT>...</img>`` lines, so its feature token is the image one, not its
  ``<video>`` placeholder (which the config has no id for).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Any

import numpy as np

from ray_mm.models.generic import GenericAdapter, _numpy
from ray_mm.models.registry import register_adapter
from ray_mm.types import ItemFeatures


@register_adapter("internvl")
class InternVLAdapter(GenericAdapter):
    @cached_property
    def feature_tokens(self) -> dict[str, str]:  # type: ignore[override]
        tid = self._config_token_id("image")
        token = self.tokenizer.convert_ids_to_tokens(tid) if tid is not None else self.placeholder_tokens["image"]
        return dict.fromkeys(self.modalities, token)

    def item_from_processed(self, modality: str, processed: Mapping[str, Any], replacement: str) -> ItemFeatures:
        if modality == "video":
            frames = _numpy(processed["pixel_values_videos"])  # (1, frames, 3, H, W): one video
            processed = {"pixel_values": np.ascontiguousarray(frames.reshape(-1, *frames.shape[-3:]))}
        else:
            processed = {k: v for k, v in processed.items() if k != "num_patches"}
        return super().item_from_processed(modality, processed, replacement)
