"""Qwen3-VL adapter: patch 16 (resize factor 32), mean / std 0.5, and videos as timestamped groups.

Images: ``Qwen2VLImageProcessor`` with Qwen3-VL's settings, through the hand-tuned pixel path
(:mod:`ray_mm.models.qwen2_vl_fast` reads patch size, mean and std from the processor); the
expansion is one run of ``<|image_pad|>``, as for Qwen2-VL.

Videos: ``Qwen3VLVideoProcessor``, whose ``size`` bounds the whole video (``t * h * w``) and whose
``cap_pixels_per_frame`` gives each frame a share of it (the hand path reproduces that sizing,
see ``PixelSettings.video_budget``). The processor's ``replace_video_token`` turns each temporal
group into ``<t seconds><|vision_start|><|video_pad|>*n<|vision_end|>``, t the mean time of the
group's frames from the sampled ``frames_indices`` and the source ``fps``: the adapter gets both
from the pipeline (``takes_video_metadata``) and builds the item's expansion from that very text
(:meth:`~ray_mm.models.base.ModelAdapter.expansion_from_text`). In the prompt only ``<|video_pad|>``
is replaced, so the compact placeholder's ``<|vision_start|>`` / ``<|vision_end|>`` stay around the
groups and nest with theirs, as in HF. The replacement begins with plain text, so where the
prompt has plain text right before the placeholder, alignment splices text and tokenizes once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ray_mm.models.qwen2_5_vl import QwenSampledVideoAdapter
from ray_mm.models.registry import register_adapter
from ray_mm.types import ItemFeatures

if TYPE_CHECKING:  # pragma: no cover
    import torch


@register_adapter("qwen3_vl")
class Qwen3VLAdapter(QwenSampledVideoAdapter):
    """Qwen3-VL: ``<|vision_start|><|image_pad|><|vision_end|>`` / ``<|vision_start|><|video_pad|><|vision_end|>``;
    a video's expansion holds a ``<t seconds>`` text and a run per temporal group."""

    # A precomputed video has no sampling metadata, so its timestamps cannot be written: images only.
    precomputed_modalities = frozenset({"image"})

    def process_video(self, frames: Any, options: Mapping[str, Any] | None = None) -> ItemFeatures:
        frames = self._check_frames(frames, options)
        metadata = self.video_metadata(frames, options)
        item, _, text = self._video_pixels(frames, options, metadata)
        if text is None:  # hand path: the processor's own replacement for this grid and metadata
            text = self.replacement_text("video", {"video_grid_thw": item.features["video_grid_thw"],
                                                   "video_metadata": [metadata]}, 0)
        item.expansion = self.expansion_from_text("video", text)
        if item.expansion.num_tokens != item.num_tokens:  # pragma: no cover - a processor change
            raise RuntimeError(f"{self.name}: the video replacement has {item.expansion.num_tokens} video tokens, "
                               f"the grid {item.grid_thw} gives {item.num_tokens}")
        return item

    # ------------------------------------------------------------------ encoder

    def build_encoder(self) -> torch.nn.Module:
        from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

        module = Qwen3VLVisionModel._from_config(self.config.vision_config)
        return module.eval()
