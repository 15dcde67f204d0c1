"""``qwen2_vl_frames``: a Qwen2-VL model dir seen through MiniCPM-V style dynamic frame expansion.

A video given among the images is decoded into K frames, and each frame is
processed as its own IMAGE: ``process("video", frames)`` returns K
:class:`ItemFeatures` of modality ``"image"``, each filling one image
placeholder (``<|vision_start|><|image_pad|><|vision_end|>``). The number of
placeholders a video takes is therefore known only after decoding, so the
adapter declares ``dynamic_frame_expansion`` and alignment takes the legacy scan.

Videos go among the images (``{"url": ..., "kind": "video"}`` in ``images``), so their
frames keep their place in prompt order. An entry in ``videos`` would be aligned after
every image whatever the prompt says, so the adapter leaves
``frames_from_videos_in_prompt_order`` False and the pipeline refuses such requests (400).

HF parity for this adapter means: the HF ``Qwen2VLProcessor`` called with
``images=[frame_0, ..., frame_{K-1}]`` (the K frames as separate images, plus any
other images of the request in prompt order) and a prompt holding one image
placeholder per frame. The per-frame ``pixel_values`` / ``image_grid_thw`` here
equal the matching slices of that call's output.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ray_mm.models.qwen2_vl import Qwen2VLAdapter
from ray_mm.models.registry import register_adapter
from ray_mm.types import ItemFeatures


@register_adapter("qwen2_vl_frames")
class Qwen2VLFramesAdapter(Qwen2VLAdapter):
    """Images as Qwen2-VL; videos expand into one image item per frame."""

    modalities = frozenset({"image"})
    dynamic_frame_expansion = True
    expand_video_as_frames = True

    @property
    def placeholder_tokens(self) -> dict[str, str]:
        return {"image": self.processor.image_token}

    def process(self, modality: str, data: Any, options: Mapping[str, Any] | None = None) -> list[ItemFeatures]:
        if modality == "image":
            return [self.process_image(data, options)]
        if modality == "video":
            frames = np.asarray(data)
            if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
                raise ValueError(f"video frames must be a non-empty (T, H, W, 3) array, got {tuple(frames.shape)}")
            self.check_input("video", frames, options)  # once for the whole video, before any frame is processed
            return [self.process_image(frame, options) for frame in frames]
        raise ValueError(f"{self.name} does not take {modality!r} items (accepts image, and video as frames)")
