"""The generic adapter: any model whose processor implements transformers' replacement API.

transformers 5.24 gives every multimodal processor the same per-item hooks:
``_process_images`` / ``_process_videos`` / ``_process_audio`` run the sub-processor and
return, per item, the text that replaces the compact placeholder (``replace_image_token``
and friends). This adapter runs them on one item at a time and turns the replacement
into an :class:`~ray_mm.types.Expansion`, so a family needs no code of its own:

- the compact placeholder of a modality is the processor's ``image_token`` /
  ``video_token`` / ``audio_token`` (what its ``__call__`` looks for in the text);
- the feature token (whose positions take the item's embeddings) is the model config's
  ``image_token_id`` / ``image_token_index`` (what the model compares ids with), else the
  placeholder itself (Gemma 3 differs: ``<start_of_image>`` in, soft tokens out);
- the item's outputs are the sub-processor's, minus what ``__call__`` drops
  (``unused_input_names``), as numpy arrays.

Family adapters subclass it only where a family needs more (call-level extras, sampling
metadata, a hand-tuned pixel path). The encoder is the model's own, built from
``config.json`` with random init, run through its ``get_<modality>_features``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from ray_mm.errors import RequestError
from ray_mm.models.base import ModelAdapter
from ray_mm.models.registry import register_adapter
from ray_mm.types import ItemFeatures

if TYPE_CHECKING:  # pragma: no cover
    import torch

_MODALITIES = ("image", "video", "audio")
_PRIMARY = {"image": ("pixel_values",), "video": ("pixel_values_videos", "pixel_values"),
            "audio": ("input_features", "input_values", "audio_values")}
_GRIDS = {"image": "image_grid_thw", "video": "video_grid_thw"}


def implements_replacement_api(processor: Any, modality: str) -> bool:
    """Whether ``processor`` overrides ``replace_<modality>_token`` (the base raises NotImplementedError)."""
    from transformers.processing_utils import ProcessorMixin

    method = getattr(type(processor), f"replace_{modality}_token", None)
    return method is not None and method is not getattr(ProcessorMixin, f"replace_{modality}_token")


@register_adapter("generic")
class GenericAdapter(ModelAdapter):
    """Any processor with the replacement API; modalities are those it has a token and a hook for."""

    takes_video_metadata = True

    def __init__(self, model_dir: Any) -> None:
        super().__init__(model_dir)
        p = self.processor
        self.modalities = frozenset(
            m for m in _MODALITIES if getattr(p, f"{m}_token", None) and implements_replacement_api(p, m)
        )
        if not self.modalities:
            raise ValueError(f"{self.model_dir}: processor {type(p).__name__} has no media token with a replacement hook")
        # What __call__ passes down, with numpy out (fast processors that only make torch are converted below).
        for key in ("images_kwargs", "videos_kwargs", "audio_kwargs", "text_kwargs"):
            self._default_kwargs.setdefault(key, {})
            self._default_kwargs[key].pop("return_tensors", None)

    # ------------------------------------------------------------------ tokens

    @property
    def placeholder_tokens(self) -> dict[str, str]:
        return {m: str(getattr(self.processor, f"{m}_token")) for m in self.modalities}

    @property
    def placeholder_texts(self) -> dict[str, str]:
        return self.placeholder_tokens

    @cached_property
    def placeholder_token_ids(self) -> dict[str, int]:  # type: ignore[override]
        """The tokenizer's id of each placeholder text: a processor's ``<m>_token_id`` may be the feature
        token's instead (Aya Vision: ``image_token`` ``<image>``, ``image_token_id`` ``<|IMG_PATCH|>``)."""
        ids = ModelAdapter.placeholder_token_ids.func(self)  # type: ignore[attr-defined]
        for m, token in self.placeholder_tokens.items():
            tid = self.tokenizer.convert_tokens_to_ids(token)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id:
                ids[m] = tid
        return ids

    @cached_property
    def feature_tokens(self) -> dict[str, str]:  # type: ignore[override]
        out = {}
        for m in self.modalities:
            tid = self._config_token_id(m)
            out[m] = self.tokenizer.convert_ids_to_tokens(tid) if tid is not None else self.placeholder_tokens[m]
        return out

    def _config_token_id(self, modality: str) -> int | None:
        for config in (self.config, getattr(self.config, "text_config", None)):
            for attr in (f"{modality}_token_id", f"{modality}_token_index"):
                value = getattr(config, attr, None) if config is not None else None
                if isinstance(value, int) and 0 <= value < len(self.tokenizer):
                    return value
        return None

    # ------------------------------------------------------------------ processing

    def process(self, modality: str, data: Any, options: Mapping[str, Any] | None = None) -> list[ItemFeatures]:
        if modality not in self.modalities:
            raise ValueError(f"{self.name} does not take {modality!r} items (modalities: {sorted(self.modalities)})")
        self.check_input(modality, data, options)
        processed, replacement = self.run_subprocessor(modality, data, dict(options or {}))
        return [self.item_from_processed(modality, processed, replacement)]

    def run_subprocessor(self, modality: str, data: Any, options: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """The processor's own per-item step: its outputs for this one item and its replacement text."""
        from transformers.processing_utils import OmniModalProcessorMixin

        p = self.processor
        options.pop("transport", None)  # uint8 transport is a hand-path option
        metadata = options.pop("video_metadata", None)
        self._check_client_options(modality, options)
        options = {**options, **self.family_kwargs(modality)}
        if modality == "image":
            kwargs = {**self._default_kwargs.get("images_kwargs", {}), **options}
            processed, replacements = p._process_images([data], **kwargs)
        elif modality == "video":
            kwargs = {**self._default_kwargs.get("videos_kwargs", {}), **options, "do_sample_frames": False}
            if metadata is not None:
                kwargs["video_metadata"] = [dict(metadata)]
            if isinstance(p, OmniModalProcessorMixin):
                # Omni processors take __call__'s whole merged kwargs (videos_kwargs inside, and the flags its
                # replace_video_token reads); a video's own audio track is not loaded (frames only).
                merged = p._merge_kwargs(tokenizer_init_kwargs=self.tokenizer.init_kwargs)
                kwargs = {**merged, "videos_kwargs": kwargs, "load_audio_from_video": False}
            processed, replacements = p._process_videos([np.asarray(data)], **kwargs)
        else:
            kwargs = {**self._default_kwargs.get("audio_kwargs", {}), **options}
            kwargs.setdefault("sampling_rate", self.sampling_rate)
            processed, replacements = p._process_audio([np.asarray(data, dtype=np.float32)], **kwargs)
        if len(replacements) != 1:
            raise ValueError(f"the processor made {len(replacements)} replacements for one {modality}")
        return dict(processed), str(replacements[0])

    def family_kwargs(self, modality: str) -> dict[str, Any]:
        """Kwargs a family adapter adds to every per-item sub-processor call (after the client's options
        are checked); none by default."""
        return {}

    def _check_client_options(self, modality: str, options: Mapping[str, Any]) -> None:
        """Per-item client options reach the processor only as on/off switches (``do_pan_and_scan``).
        A number or a size could make a processor upscale or tile without bound (Idefics3 took
        ``{"size": {"longest_edge": 4096}}`` to 2,753 tiles), and each family names them differently."""
        for key, value in options.items():
            if not isinstance(value, bool):
                raise RequestError(f"option {key!r} is not accepted for {modality} items of {self.name}: only on/off "
                                   "switches of the processor (true / false) are passed on per item")

    def item_from_processed(self, modality: str, processed: Mapping[str, Any], replacement: str) -> ItemFeatures:
        unused = set(getattr(self.processor, "unused_input_names", ()) or ())
        features = {k: _numpy(v) for k, v in processed.items() if k not in unused and _is_array(v)}
        primary = next((k for k in _PRIMARY[modality] if k in features), next(iter(features), None))
        if primary is None:
            raise ValueError(f"the processor returned no arrays for the {modality}")
        expansion = self.expansion_from_text(modality, replacement)
        grid_key = _GRIDS.get(modality)
        grid = [int(x) for x in features[grid_key].reshape(-1)[:3]] if grid_key in features else None
        return ItemFeatures(modality=modality, features=features, primary=primary,  # type: ignore[arg-type]
                            num_tokens=expansion.num_tokens, grid_thw=grid, expansion=expansion)

    @property
    def sampling_rate(self) -> int:
        extractor = getattr(self.processor, "feature_extractor", None) or getattr(self.processor, "audio_processor", None)
        return int(getattr(extractor, "sampling_rate", 16000))

    # ------------------------------------------------------------------ encoder

    def build_encoder(self) -> torch.nn.Module:
        """The whole tiny model from ``config.json`` (random init); ``encode`` runs its media path."""
        from transformers import AutoModel

        return AutoModel.from_config(self.config).eval()

    def encode(self, module: torch.nn.Module, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """One item's embeddings through the model's ``get_<modality>_features``: one row per feature token."""
        import torch

        modality = "video" if "pixel_values_videos" in features else "audio" if "input_features" in features else "image"
        fn = getattr(module, f"get_{modality}_features")
        accepted = inspect.signature(fn).parameters
        param = next(module.parameters())
        kwargs = {k: (v.to(param.dtype) if torch.is_tensor(v) and v.is_floating_point() else v)
                  for k, v in features.items() if k in accepted or "kwargs" in accepted}
        with torch.inference_mode():
            out = fn(**kwargs)
        out = getattr(out, "pooler_output", out)
        tensors = list(out) if isinstance(out, (list, tuple)) else [out]
        return torch.cat([t.reshape(-1, t.shape[-1]) for t in tensors], dim=0)


def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) or hasattr(value, "numpy") or (
        isinstance(value, list) and bool(value)  # tuple: per-image (h, w) sizes, e.g. torch.Size (Pixtral, LLaVA-NeXT)
        and all(isinstance(v, (np.ndarray, int, float, tuple)) or hasattr(v, "numpy") for v in value))


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    if isinstance(value, list):
        return np.asarray([_numpy(v) for v in value]) if value and not isinstance(value[0], (int, float)) else np.asarray(value)
    return np.asarray(value)
