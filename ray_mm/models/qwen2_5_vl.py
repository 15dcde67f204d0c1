"""Qwen2.5-VL adapter: Qwen2-VL's images and videos, plus ``second_per_grid_ts`` per video.

Qwen2.5-VL has no image or video processor of its own: ``Qwen2_5_VLProcessor`` runs Qwen2-VL's,
so pixels, grids and the (trivial, one-run) expansions are Qwen2-VL's and the hand-tuned pixel path
applies to both modalities. What it adds is ``second_per_grid_ts`` per video,
``temporal_patch_size / sampled_fps`` with ``sampled_fps = len(frames_indices) / total_num_frames * fps``
(``VideoMetadata.sampled_fps``), which the engine needs for M-RoPE positions. The frames reach
the adapter already sampled by ray-mm, so the processor must be told how (``video_metadata``):
without it the value silently becomes ``2 / 24``, and nothing else in the output changes.

:class:`QwenSampledVideoAdapter` holds what Qwen2.5-VL and Qwen3-VL share: the sampling metadata,
and the HF video path with ``do_sample_frames=False``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ray_mm.models.base import as_numpy_features
from ray_mm.models.qwen2_vl import Qwen2VLAdapter, _size_from_options, _transport_kwargs, pixels_from_patches
from ray_mm.models.registry import register_adapter
from ray_mm.types import ItemFeatures

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers.video_utils import VideoMetadata


class QwenSampledVideoAdapter(Qwen2VLAdapter):
    """Qwen-VL adapters whose video outputs depend on how ray-mm sampled the frames (not registered).

    The pipeline passes ``options["video_metadata"]`` (``fps``, ``total_num_frames``,
    ``frames_indices``, ``duration`` of the source); the HF processor gets it with
    ``do_sample_frames=False``, so it neither re-samples nor assumes 24 fps.
    """

    takes_video_metadata = True

    def _processor_default_kwargs(self) -> dict[str, Any]:
        # Both processors ask their video processor for ``return_metadata=True`` by default. It only
        # hands back the metadata it was given and changes no pixel; the adapter builds the metadata
        # itself, so dropping it here lets the hand path take videos (it yields to any other default).
        merged = super()._processor_default_kwargs()
        videos = merged.get("videos_kwargs")
        if videos:
            videos.pop("return_metadata", None)
        return merged

    @staticmethod
    def video_metadata(frames: np.ndarray, options: Mapping[str, Any] | None) -> VideoMetadata:
        """The ``VideoMetadata`` the HF processor builds for these frames from ``options["video_metadata"]``
        (its own ``make_batched_metadata``; its defaults when there is none). A fresh object: the
        processors write into it (Qwen3-VL pads ``frames_indices`` and sets a missing ``fps``)."""
        from transformers.video_utils import make_batched_metadata

        meta = (options or {}).get("video_metadata")
        if meta is not None:
            meta = {k: (list(v) if k == "frames_indices" and v is not None else v) for k, v in dict(meta).items()}
        return make_batched_metadata([frames], video_metadata=None if meta is None else [meta])[0]

    def _check_frames(self, frames: Any, options: Mapping[str, Any] | None) -> np.ndarray:
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"video frames must be a (T, H, W, 3) array, got shape {tuple(frames.shape)}")
        self.check_input("video", frames, options)
        return frames

    def _hf_video(self, frames: np.ndarray, options: Mapping[str, Any] | None,
                  metadata: VideoMetadata) -> tuple[ItemFeatures, dict[str, Any], str]:
        """One video through the processor's own ``_process_videos`` (its video processor, then its
        ``replace_video_token``), frames as sampled (``do_sample_frames=False``) with their metadata.
        Returns the item, the processor's whole output for it, and its replacement text."""
        proc = self.processor.video_processor
        kwargs = dict(self._default_kwargs.get("videos_kwargs", {}))
        size = _size_from_options(proc.size, options)
        if size is not None:
            kwargs["size"] = size
        kwargs.update(do_sample_frames=False, video_metadata=[metadata], return_metadata=True, return_tensors="pt")
        uint8 = _transport_kwargs(options, kwargs)
        kwargs.update(uint8)
        processed, replacements = self.processor._process_videos([frames], **kwargs)
        feats = as_numpy_features(processed, ("pixel_values_videos", "video_grid_thw"))
        grid = [int(x) for x in feats["video_grid_thw"][0]]
        if uint8:  # the resized pixels, each frame once (finish_features patchifies them)
            feats["pixel_values_videos"] = pixels_from_patches(proc, feats["pixel_values_videos"], grid, len(frames))
        item = ItemFeatures(
            modality="video",
            features=feats,
            primary="pixel_values_videos",
            num_tokens=int(np.prod(grid)) // int(kwargs.get("merge_size") or proc.merge_size) ** 2,
            grid_thw=grid,
        )
        return item, processed, str(replacements[0])

    def _video_pixels(self, frames: np.ndarray, options: Mapping[str, Any] | None,
                      metadata: VideoMetadata) -> tuple[ItemFeatures, dict[str, Any] | None, str | None]:
        """The hand path's item where it applies (no processor output, no replacement text), else the HF path's."""
        hand = self._hand_pixels("video", frames, options)
        if hand is not None:
            return self._item_from_pixels("video", hand), None, None
        return self._hf_video(frames, options, metadata)


def second_per_grid_ts(temporal_patch_size: int, metadata: VideoMetadata) -> float:
    """``Qwen2_5_VLProcessor._process_videos``' value: the same float ops on the same metadata."""
    return temporal_patch_size / metadata.sampled_fps


@register_adapter("qwen2_5_vl")
class Qwen2_5_VLAdapter(QwenSampledVideoAdapter):
    """Qwen2.5-VL: Qwen2-VL's placeholders, pixels and expansions; each video item also carries
    ``second_per_grid_ts`` (shape ``(1,)``, as the processor names it, so it is dumped as
    ``item<n>.second_per_grid_ts``) and the record carries it as a number."""

    # A precomputed video carries no sampling metadata, so its second_per_grid_ts is unknown: images only.
    precomputed_modalities = frozenset({"image"})

    def process_video(self, frames: Any, options: Mapping[str, Any] | None = None) -> ItemFeatures:
        frames = self._check_frames(frames, options)
        metadata = self.video_metadata(frames, options)
        item, processed, _ = self._video_pixels(frames, options, metadata)
        if processed is not None:
            seconds = float(processed["second_per_grid_ts"][0])
        else:
            seconds = second_per_grid_ts(int(self.processor.video_processor.temporal_patch_size), metadata)
        # float32, as the processor's return_tensors="pt" gives it; the record keeps the exact number.
        item.features["second_per_grid_ts"] = np.asarray([seconds], dtype=np.float32)
        item.extras["second_per_grid_ts"] = seconds
        return item

    # ------------------------------------------------------------------ encoder

    def build_encoder(self) -> torch.nn.Module:
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

        module = Qwen2_5_VisionTransformerPretrainedModel._from_config(self.config.vision_config)
        return module.eval()
