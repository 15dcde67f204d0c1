"""MiniCPM-V 4.6 adapter: images with slices and image ids, videos as per-frame blocks, through the HF processors.

Everything comes from the in-tree transformers 5.24 ``MiniCPMV4_6Processor`` and its
sub-processors (the torchvision image processor the model directory names, and the video
processor), run on ONE item at a time:

* **Images.** ``pixel_values`` is ``(1, 3, patch, W)``: the processor packs every unit of an
  image (the overview, then the slices row by row) along the last axis, and a whole request's
  images one after the other, so an item's array is exactly its slice of the request's array;
  ``target_sizes`` holds one ``(h, w)`` row (in patches) per unit. The expansion is the
  processor's own ``replace_image_token`` text: ``<image>`` n ``</image>`` then rows of
  ``<slice>`` n ``</slice>`` joined by ``"\\n"``.
* **Videos.** ``pixel_values_videos`` / ``target_sizes_videos`` likewise, frame after frame (each
  frame an overview plus its slices). The frames are the ones ray-mm already sampled, passed with
  ``do_sample_frames=False``; the expansion is ``replace_video_token``'s text, one
  ``<image>`` ... block per frame with video tokens inside.
* **Image ids.** ``MiniCPMV4_6Processor.__call__`` (and only it) puts ``<image_id>k</image_id>``
  before each replacement, k counting images from 0 in prompt order and videos separately from 0
  (``_prepend_local_ids``), when ``use_image_id`` is on (the image processor's default). That
  prefix depends on the item's place, not its pixels, so :meth:`item_expansion` adds it per
  request and the content-hash cache keeps the expansion without it.

Every replacement begins and ends with a special token and its inner text (the id digits,
``"\\n"`` between slice rows) sits between special tokens, so expanding in id space gives the
processor's ids whatever text touches the placeholder.

``transport="uint8"`` is not reproduced: features always travel as the processor's float32
(``finish_features`` is the identity).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ray_mm.errors import MediaUnsupportedError
from ray_mm.models.base import ModelAdapter, as_numpy_features, encoder_pixels, process_image_or_video
from ray_mm.models.registry import register_adapter
from ray_mm.types import Expansion, ItemFeatures

if TYPE_CHECKING:  # pragma: no cover
    import torch

# Keys of the merged processor kwargs that are not sub-processor arguments.
_CALL_ONLY = ("return_tensors", "use_image_id")


def _token_divisor(downsample_mode: str) -> int:
    """Feature tokens per unit are ``prod(target_size) // divisor``, as the processor computes it."""
    return 4 if downsample_mode == "4x" else 16


@register_adapter("minicpmv4_6")
class MiniCPMV4_6Adapter(ModelAdapter):
    """MiniCPM-V 4.6: bare ``<|image_pad|>`` / ``<|video_pad|>`` compact placeholders (the processor's own).

    ``dynamic_frame_expansion`` is False. The seed sent MiniCPM-V-style videos down the legacy scan
    because a video's expansion (its number of frames) is known only after decoding. In ray-mm
    alignment runs only once every item's metadata is in, expansion included, and here one video
    is one item behind one compact ``<|video_pad|>`` (frames are blocks *inside* its expansion, not
    placeholders of their own), so the 1:1 fast path expands it like any other item. The legacy
    scan stays for what the dispatch rule sends there anyway (``skip_tokenizer_init``, count
    mismatches), where it recognises a compact placeholder or the full expansion, id prefix included.
    Bare placeholders may touch (the chat template renders consecutive image parts as
    ``<|image_pad|><|image_pad|>``); since every expansion here opens and closes with text, neither
    path reads such a pair as one expanded run (``ray_mm.align._bracketed``).
    """

    modalities = frozenset({"image", "video"})
    dynamic_frame_expansion = False
    takes_video_metadata = True

    def __init__(self, model_dir: str | Path) -> None:
        super().__init__(model_dir)
        # The processor's defaults ask for pt tensors (and left padding) from every call; ray-mm
        # tokenizes one prompt into a list and picks its own tensor type per sub-processor call.
        for kwargs in self._default_kwargs.values():
            for key in _CALL_ONLY:
                kwargs.pop(key, None)

    # ------------------------------------------------------------------ tokens

    @property
    def placeholder_tokens(self) -> dict[str, str]:
        return {"image": self.processor.image_token, "video": self.processor.video_token}

    @property
    def placeholder_texts(self) -> dict[str, str]:
        # The chat template renders the bare token, and the processor expands exactly that token.
        return dict(self.placeholder_tokens)

    @cached_property
    def use_image_id(self) -> bool:
        """Whether ``__call__`` prepends ``<image_id>k</image_id>``: its ``use_image_id`` default, which
        is the image processor's setting unless the processor's own defaults say otherwise."""
        merged = self.processor._merge_kwargs(tokenizer_init_kwargs=self.tokenizer.init_kwargs)
        value = merged.get("images_kwargs", {}).get("use_image_id", merged.get("use_image_id"))
        return bool(self.processor.default_use_image_id if value is None else value)

    def image_id_prefix(self, index: int) -> str:
        p = self.processor
        return f"{p.image_id_start_token}{int(index)}{p.image_id_end_token}"

    def item_expansion(self, modality: str, expansion: Expansion | None, index: int) -> Expansion | None:
        """``<image_id>{index}</image_id>`` before the item's expansion when ``use_image_id`` is on.

        ``index`` counts the item's modality alone, from 0, in prompt order: images and videos
        each restart at 0, as ``_prepend_local_ids`` counts them. The prefix is special tokens
        around a digit string, so it tokenizes alone as it does inside the processor's text.
        """
        if expansion is None or not self.use_image_id:
            return expansion
        prefix = self.image_id_prefix(index)
        strings = list(expansion.strings) or [""] * len(expansion.texts)
        return Expansion(
            texts=[self._piece_ids(prefix) + list(expansion.texts[0]), *expansion.texts[1:]],
            runs=list(expansion.runs),
            token=expansion.token,
            strings=[prefix + strings[0], *strings[1:]],
            open_start=False,  # begins with <image_id>, a special token
            open_end=expansion.open_end,
        )

    # ------------------------------------------------------------------ processing

    def process(self, modality: str, data: Any, options: Mapping[str, Any] | None = None) -> list[ItemFeatures]:
        return process_image_or_video(self, modality, data, options)

    def check_input(self, modality: str, data: Any, options: Mapping[str, Any] | None = None) -> None:
        """Refuse what the processor cannot take, before any pixel work.

        The MiniCPM-V processors have no aspect-ratio or size limit of their own (a long thin image
        is resized to a thin multiple of 56 pixels, or sliced); what they fail on is an empty video
        (``torch.cat`` of no frames) and an image or frame without pixels (``log(0)`` in the slice
        search). Anything else they refuse still becomes a 4xx through the pipeline's translation
        of ``ValueError``.
        """
        from PIL import Image

        if modality == "video":
            frames = np.asarray(data) if not isinstance(data, np.ndarray) else data
            if frames.ndim == 4 and frames.shape[0] == 0:
                raise MediaUnsupportedError("video has no frames")
            dims = tuple(int(x) for x in frames.shape[1:3]) if frames.ndim == 4 else None
        elif isinstance(data, Image.Image):
            dims = (int(data.height), int(data.width))
        elif isinstance(data, np.ndarray) and data.ndim == 3:
            dims = tuple(int(x) for x in data.shape[:2])
        else:
            dims = None
        if dims is not None and min(dims) <= 0:
            what = "video frames" if modality == "video" else "image"
            raise MediaUnsupportedError(f"{what} of {dims[1]}x{dims[0]} pixels has no pixels to process")

    def _kwargs(self, modality: str) -> dict[str, Any]:
        """The sub-processor kwargs ``__call__`` would pass: its merged defaults. Per-item client options
        are not forwarded: the family has no pixel-budget option ray-mm checks (``scale_resolution`` or
        ``max_slice_nums`` from a client would let one item upscale without bound)."""
        return dict(self._default_kwargs.get(f"{modality}s_kwargs", {}))

    def process_image(self, image: Any, options: Mapping[str, Any] | None = None) -> ItemFeatures:
        self.check_input("image", image, options)
        proc = self.processor.image_processor
        kwargs = self._kwargs("image")
        return self._item("image", proc, kwargs, proc([image], return_tensors="pt", **kwargs))

    def process_video(self, frames: Any, options: Mapping[str, Any] | None = None) -> ItemFeatures:
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"video frames must be a (T, H, W, 3) array, got shape {tuple(frames.shape)}")
        self.check_input("video", frames, options)
        proc = self.processor.video_processor
        kwargs = self._kwargs("video")
        # The frames were sampled by ray-mm: no re-sampling. The sampling metadata changes the
        # output only when sub-second frames are stacked (``stack_frames > 1`` reads ``duration``);
        # otherwise the processor ignores it.
        metadata = (options or {}).get("video_metadata")
        if metadata is not None and int(kwargs.get("stack_frames", proc.stack_frames) or 1) > 1:
            kwargs["video_metadata"] = [dict(metadata)]
        return self._item("video", proc, kwargs, proc(videos=[frames], do_sample_frames=False, return_tensors="pt", **kwargs))

    def _item(self, modality: str, proc: Any, kwargs: Mapping[str, Any], out: Mapping[str, Any]) -> ItemFeatures:
        """One item from its sub-processor output ``out`` (``kwargs`` the call's): its arrays, and the
        processor's own replacement text as its expansion."""
        divisor = _token_divisor(str(kwargs.get("downsample_mode", proc.downsample_mode)))
        expansion = self.expansion_from_text(
            modality, self.replacement_text(modality, out, 0, **{f"{modality}_token_divisor": divisor}))
        suffix = "" if modality == "image" else "_videos"
        return ItemFeatures(
            modality=modality,
            features=as_numpy_features(out, (f"pixel_values{suffix}", f"target_sizes{suffix}")),
            primary=f"pixel_values{suffix}",
            num_tokens=expansion.num_tokens,
            grid_thw=None,
            expansion=expansion,
        )

    # ------------------------------------------------------------------ encoder

    def build_encoder(self) -> torch.nn.Module:
        """The model's own vision path, built from ``config.json`` with random init: the SigLIP-style
        ``MiniCPMV4_6VisionModel`` (with its window-attention merger after ``insert_layer_id``) and
        the ``MiniCPMV4_6Merger`` MLP, without the language model. ``encode`` runs them as
        ``MiniCPMV4_6Model.get_image_features`` does (and ``get_video_features``, which for one
        packed ``(1, 3, patch, W)`` array is the same call)."""
        import torch
        from transformers.models.minicpmv4_6.modeling_minicpmv4_6 import MiniCPMV4_6Merger, MiniCPMV4_6VisionModel

        class MiniCPMV4_6Encoder(torch.nn.Module):
            def __init__(self, config: Any) -> None:
                super().__init__()
                self.config = config
                self.vision_tower = MiniCPMV4_6VisionModel._from_config(config.vision_config)
                self.merger = MiniCPMV4_6Merger(config)

        return MiniCPMV4_6Encoder(self.config).eval()

    def encode(self, module: torch.nn.Module, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """One item's embeddings, ``(num_tokens, text hidden size)``: one row per feature token, units in order."""
        import torch

        pixels, sizes = encoder_pixels(module, features, "target_sizes", "target_sizes_videos")
        sizes = torch.as_tensor(sizes).to(device=pixels.device, dtype=torch.int32).reshape(-1, 2)
        use_vit_merger = str(module.config.downsample_mode) != "4x"
        with torch.inference_mode():
            hidden = module.vision_tower(pixels, target_sizes=sizes, use_vit_merger=use_vit_merger).last_hidden_state
            if use_vit_merger:
                sizes = sizes // 2
            return torch.cat(module.merger(hidden, sizes), dim=0)
