"""Qwen2-VL adapter: images and videos to the HF fast (torchvision) processors' features, item by item.

By default pixels go through the hand-tuned path of :mod:`ray_mm.models.qwen2_vl_fast`
(same values as the processor, less work, reused scratch); anything that path does not
reproduce, and any adapter built with ``use_hand_path=False``, calls the same
sub-processor the HF ``Qwen2VLProcessor`` calls for a whole request. Either way per-item
``pixel_values`` / ``pixel_values_videos`` are the matching row slices of the processor's
concatenated output and the grids are equal. Token count per item:
``prod(grid_thw) // merge_size**2``, as the processor's ``replace_image_token`` computes it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ray_mm.errors import MediaUnsupportedError
from ray_mm.models.base import ModelAdapter, as_numpy_features, encoder_pixels, process_image_or_video
from ray_mm.models.qwen2_vl_fast import (
    FastPathUnsupported,
    PixelResult,
    QwenPixelPath,
    _as_tensor,
    fused_mean_std,
    patchify_uint8,
)
from ray_mm.models.registry import register_adapter
from ray_mm.types import ItemFeatures, Modality

if TYPE_CHECKING:  # pragma: no cover
    import torch

# Per-item options forwarded to the image / video processor (other keys belong to the media layer).
_PIXEL_OPTIONS = ("min_pixels", "max_pixels")

#: The processors' ``smart_resize`` raises ``ValueError`` for an image or frame whose long side
#: is more than this many times its short side (``max(h, w) / min(h, w) > 200``).
MAX_ASPECT_RATIO = 200


def _pixel_dims(modality: str, data: Any) -> tuple[int, int] | None:
    """``(height, width)`` of an image or of a video's frames as the HF processor will read them;
    None where it is not known up front (the processor then has the last word).

    A PIL image is unambiguous. For arrays the processor infers the channel axis
    (``infer_channel_dimension_format``): it reads channels last only when the leading
    spatial axis is not itself a plausible channel count (1 or 3), so only that case is sized here.
    """
    from PIL import Image

    if isinstance(data, Image.Image):
        return int(data.height), int(data.width)
    if not isinstance(data, np.ndarray) or data.ndim != (3 if modality == "image" else 4):
        return None
    height, width, channels = (int(x) for x in data.shape[-3:])
    if channels not in (1, 3) or height in (1, 3):
        return None
    return height, width


def _size_from_options(default_size: Any, options: Mapping[str, Any] | None) -> dict[str, int] | None:
    """Translate ``min_pixels`` / ``max_pixels`` / ``size`` options into the processor's ``size`` dict."""
    if not options:
        return None
    size = options.get("size")
    if size is None and not any(k in options for k in _PIXEL_OPTIONS):
        return None
    base = dict(size) if isinstance(size, Mapping) else _size_dict(default_size)
    if options.get("min_pixels") is not None:
        base["shortest_edge"] = int(options["min_pixels"])
    if options.get("max_pixels") is not None:
        base["longest_edge"] = int(options["max_pixels"])
    return base


#: Processor call kwargs that :meth:`Qwen2VLAdapter.finish_features` reads from the processor's attributes:
#: where the processor's own default call kwargs set one, the HF path ships float32 (finishing would differ).
_UINT8_FIXED = ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std", "rescale_factor",
                "do_rescale", "do_normalize")


def _wants_uint8(options: Mapping[str, Any] | None) -> bool:
    """``transport="uint8"``: ship the resized uint8 pixels once; ``finish_features`` patchifies them."""
    return bool(options) and options.get("transport") == "uint8"  # type: ignore[union-attr]


def _transport_kwargs(options: Mapping[str, Any] | None, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The HF path under the uint8 transport: stop before rescale/normalise (uint8 patches, which
    :func:`pixels_from_patches` turns back into the resized pixels). Nothing where the call's own
    ``kwargs`` set what ``finish_features`` assumes: that item ships float32."""
    if _wants_uint8(options) and not any(k in kwargs for k in _UINT8_FIXED):
        return {"do_rescale": False, "do_normalize": False}
    return {}


def pixels_from_patches(proc: Any, patches: np.ndarray, grid: list[int], num_frames: int) -> np.ndarray:
    """The resized ``(F, H, W, C)`` uint8 pixels inside the processor's uint8 patches (``do_rescale=False,
    do_normalize=False``): patchify only moves values, so this is its inverse, keeping the first
    ``num_frames`` frames (the processor's temporal tiling / last-frame padding dropped)."""
    p, m, tp = int(proc.patch_size), int(proc.merge_size), int(proc.temporal_patch_size)
    grid_t, grid_h, grid_w = grid
    if grid_t != -(-num_frames // tp):  # pragma: no cover - a processor change
        raise RuntimeError(f"{num_frames} frames but a temporal grid of {grid_t} (temporal patch {tp})")
    channels = patches.shape[1] // (tp * p * p)
    # rows (t, h/m, w/m, m, m), columns (C, Tp, p, p) -> (t, Tp, h/m, m, p, w/m, m, p, C)
    blocks = patches.reshape(grid_t, grid_h // m, grid_w // m, m, m, channels, tp, p, p)
    frames = blocks.transpose(0, 6, 1, 3, 7, 2, 4, 8, 5).reshape(grid_t * tp, grid_h * p, grid_w * p, channels)
    return np.ascontiguousarray(frames[:num_frames])


def _size_dict(size: Any) -> dict[str, int]:
    if isinstance(size, Mapping):
        items = size.items()
    else:  # SizeDict (a dataclass with optional fields)
        items = ((k, getattr(size, k, None)) for k in ("shortest_edge", "longest_edge"))
    return {k: int(v) for k, v in items if v is not None}


@register_adapter("qwen2_vl")
class Qwen2VLAdapter(ModelAdapter):
    """Qwen2-VL: ``<|vision_start|><|image_pad|><|vision_end|>`` / ``<|vision_start|><|video_pad|><|vision_end|>``.

    ``use_hand_path`` (default True) sends pixels through the hand-tuned path
    (:class:`~ray_mm.models.qwen2_vl_fast.QwenPixelPath`); False always calls the HF
    processor, as SGLang does inline (the benchmark's baseline). The flag is per instance:
    a pickled adapter reloads with the default. :meth:`process_hf` is ``process`` through
    the HF processor for one call.
    """

    modalities = frozenset({"image", "video"})
    precomputed_modalities = frozenset({"image", "video"})

    def __init__(self, model_dir: str | Path, *, use_hand_path: bool = True) -> None:
        super().__init__(model_dir)
        self.use_hand_path = use_hand_path
        self._hf_only = threading.local()  # process_hf's per-thread override

    @property
    def placeholder_tokens(self) -> dict[str, str]:
        return {"image": self.processor.image_token, "video": self.processor.video_token}

    @property
    def placeholder_texts(self) -> dict[str, str]:
        start = self._vision_token("vision_start")
        end = self._vision_token("vision_end")
        return {m: f"{start}{tok}{end}" for m, tok in self.placeholder_tokens.items()}

    def _vision_token(self, which: str) -> str:
        tid = getattr(self.config, f"{which}_token_id", None)
        if tid is not None:
            tok = self.tokenizer.convert_ids_to_tokens(int(tid))
            if tok:
                return tok
        return f"<|{which}|>"

    @property
    def merge_size(self) -> int:
        return int(self.processor.image_processor.merge_size)

    # ------------------------------------------------------------------ processing

    def process(self, modality: str, data: Any, options: Mapping[str, Any] | None = None) -> list[ItemFeatures]:
        return process_image_or_video(self, modality, data, options)

    def check_input(self, modality: str, data: Any, options: Mapping[str, Any] | None = None) -> None:
        """Refuse an image / video whose aspect ratio is over :data:`MAX_ASPECT_RATIO`, as ``smart_resize`` would.

        Checked here, before either pixel path runs, so the hand path and the HF processor
        refuse it with the same :class:`~ray_mm.errors.MediaUnsupportedError`. Sizes under a
        patch need no check: ``smart_resize`` scales them up to ``min_pixels``, as the processor does.
        """
        dims = _pixel_dims(modality, data) if modality in ("image", "video") else None
        if dims is None or min(dims) <= 0:
            return
        height, width = dims
        ratio = max(height, width) / min(height, width)
        if ratio > MAX_ASPECT_RATIO:
            what = "video frames" if modality == "video" else "image"
            raise MediaUnsupportedError(
                f"{what} of {width}x{height} pixels has an aspect ratio of {ratio:.1f}, over the limit of "
                f"{MAX_ASPECT_RATIO} that {self.name} takes"
            )

    def process_hf(self, modality: str, data: Any, options: Mapping[str, Any] | None = None) -> list[ItemFeatures]:
        """``process`` through the HF processor only, whatever ``use_hand_path`` says (this call, this thread)."""
        before = getattr(self._hf_only, "on", False)
        self._hf_only.on = True
        try:
            return self.process(modality, data, options)
        finally:
            self._hf_only.on = before

    def _hand_path_on(self) -> bool:
        return self.use_hand_path and not getattr(self._hf_only, "on", False)

    @cached_property
    def _pixel_paths(self) -> dict[str, QwenPixelPath | None]:
        """Hand paths built from the image / video processors' attributes; None where a setting is not reproduced."""
        paths: dict[str, QwenPixelPath | None] = {}
        for modality, proc in (("image", self.processor.image_processor), ("video", self.processor.video_processor)):
            try:
                paths[modality] = QwenPixelPath.from_processor(proc)
            except FastPathUnsupported:
                paths[modality] = None
        return paths

    def _hand_pixels(self, modality: Modality, data: Any, options: Mapping[str, Any] | None) -> PixelResult | None:
        """The hand path's result, or None where only the HF processor gives the right answer.

        Falls back (None) when: the adapter is in HF mode; the processor's settings are not
        reproduced (``do_resize=False``, a resample other than bicubic / natively-uint8
        bilinear, mean / std not 3 channels, a size without shortest / longest edge); the
        processor carries default call kwargs of its own; the size options lack a shortest
        or longest edge; the input is not a PIL image / ``(H, W, 3)`` uint8 array (image)
        or ``(T, H, W, 3)`` uint8 frames (video), or its channel axis would be read as
        channels-first by the processor; or a non-RGB PIL image meets ``do_convert_rgb=False``.
        """
        path = self._pixel_paths.get(modality) if self._hand_path_on() else None
        if path is None or self._default_kwargs.get(f"{modality}s_kwargs"):
            return None
        proc = self.processor.image_processor if modality == "image" else self.processor.video_processor
        size = _size_from_options(proc.size, options) or _size_dict(proc.size)
        lo, hi = size.get("shortest_edge"), size.get("longest_edge")
        if not lo or not hi:
            return None
        normalize = not _wants_uint8(options)
        try:
            if modality == "image":
                return path.image(data, min_pixels=lo, max_pixels=hi, normalize=normalize)
            return path.video(data, min_pixels=lo, max_pixels=hi, normalize=normalize)
        except FastPathUnsupported:  # raised before any work: the input is one the path does not take
            return None

    def _item_from_pixels(self, modality: Modality, result: PixelResult) -> ItemFeatures:
        proc = self.processor.image_processor if modality == "image" else self.processor.video_processor
        key, grid_key = ("pixel_values", "image_grid_thw") if modality == "image" else ("pixel_values_videos", "video_grid_thw")
        grid = [int(x) for x in result.grid_thw]
        return ItemFeatures(
            modality=modality,
            features={key: result.values, grid_key: np.asarray([grid], dtype=np.int64)},
            primary=key,
            num_tokens=math.prod(grid) // int(proc.merge_size) ** 2,
            grid_thw=grid,
        )

    def process_image(self, image: Any, options: Mapping[str, Any] | None = None) -> ItemFeatures:
        self.check_input("image", image, options)
        hand = self._hand_pixels("image", image, options)
        if hand is not None:
            return self._item_from_pixels("image", hand)
        return self._hf_item("image", self.processor.image_processor, image, options)

    def process_video(self, frames: Any, options: Mapping[str, Any] | None = None) -> ItemFeatures:
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"video frames must be a (T, H, W, 3) array, got shape {tuple(frames.shape)}")
        self.check_input("video", frames, options)
        hand = self._hand_pixels("video", frames, options)
        if hand is not None:
            return self._item_from_pixels("video", hand)
        # Frames arrive already sampled by the media layer.
        return self._hf_item("video", self.processor.video_processor, frames, options, do_sample_frames=False)

    def _hf_item(self, modality: str, proc: Any, data: Any, options: Mapping[str, Any] | None, **extra: Any) -> ItemFeatures:
        """One item through the HF sub-processor ``proc``, with the processor's default call arguments,
        the client's size options and the transport."""
        pixels_key, grid_key = ("pixel_values", "image_grid_thw") if modality == "image" else ("pixel_values_videos", "video_grid_thw")
        kwargs = dict(self._default_kwargs.get(f"{modality}s_kwargs", {}))
        size = _size_from_options(proc.size, options)
        if size is not None:
            kwargs["size"] = size
        kwargs.update(extra)
        uint8 = _transport_kwargs(options, kwargs)
        kwargs.update(uint8)
        out = proc(**{f"{modality}s": [data]}, return_tensors="pt", **kwargs)
        feats = as_numpy_features(out, (pixels_key, grid_key))
        grid = [int(x) for x in feats[grid_key][0]]
        if uint8:
            feats[pixels_key] = pixels_from_patches(proc, feats[pixels_key], grid, 1 if modality == "image" else len(data))
        merge = int(kwargs.get("merge_size") or proc.merge_size)
        return ItemFeatures(
            modality=modality,
            features=feats,
            primary=pixels_key,
            num_tokens=math.prod(grid) // merge**2,
            grid_thw=grid,
        )

    def image_target_size(self, width: int, height: int, options: Mapping[str, Any] | None = None) -> tuple[int, int]:
        """The (width, height) the processor resizes an image of this size to (for draft JPEG decode).

        An image the processor refuses (aspect ratio over :data:`MAX_ASPECT_RATIO`) keeps its own
        size: no draft, and :meth:`check_input` refuses it after decoding with the item's label (422).
        """
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        if min(width, height) <= 0 or max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
            return int(width), int(height)
        ip = self.processor.image_processor
        size = _size_from_options(ip.size, options) or _size_dict(ip.size)
        h, w = smart_resize(height, width, factor=ip.patch_size * ip.merge_size,
                            min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"])
        return int(w), int(h)

    # ------------------------------------------------------------------ uint8 transport

    #: ``process`` ships resized uint8 pixels under the uint8 transport; ``finish_features`` patchifies them.
    uint8_transport: ClassVar[bool] = True

    def finish_features(self, features: Mapping[str, Any]) -> dict[str, Any]:
        """Turn the uint8 transport's resized pixels into the processor's float32 patches (GPU side).

        ``pixel_values`` / ``pixel_values_videos`` shipped as uint8 ``(F, H, W, 3)`` (each frame once)
        become exactly what the processor returns: temporal tiling / last-frame padding, rescale +
        normalise with the processor's fused constants, patchify (:func:`patchify_uint8`). Torch ops on
        the tensors' device (the GPU worker's); numpy in, numpy out. Float32 features pass unchanged.
        """
        out = dict(features)
        for key, proc in (("pixel_values", self.processor.image_processor),
                          ("pixel_values_videos", self.processor.video_processor)):
            value = out.get(key)
            if value is None or str(getattr(value, "dtype", "")).rsplit(".", 1)[-1] != "uint8":
                continue
            mean, std = self._finish_constants[key]
            is_numpy = isinstance(value, np.ndarray)
            tensor = _as_tensor(value) if is_numpy else value
            patches = patchify_uint8(tensor, patch_size=int(proc.patch_size), merge_size=int(proc.merge_size),
                                     temporal_patch_size=int(proc.temporal_patch_size), mean=mean, std=std)
            out[key] = patches.numpy() if is_numpy else patches
        return out

    @cached_property
    def _finish_constants(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {key: fused_mean_std(proc.image_mean, proc.image_std, float(proc.rescale_factor))
                for key, proc in (("pixel_values", self.processor.image_processor),
                                  ("pixel_values_videos", self.processor.video_processor))}

    # ------------------------------------------------------------------ encoder

    def build_encoder(self) -> torch.nn.Module:
        from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

        module = Qwen2VisionTransformerPretrainedModel._from_config(self.config.vision_config)
        return module.eval()

    def encode(self, module: torch.nn.Module, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        import torch

        pixels, grid = encoder_pixels(module, features, "image_grid_thw", "video_grid_thw")
        grid = torch.as_tensor(grid, dtype=torch.long).reshape(-1, 3).to(pixels.device)
        with torch.inference_mode():
            out = module(pixels, grid_thw=grid)
        return out.pooler_output
