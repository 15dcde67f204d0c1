"""Qwen2-Audio adapter: audio through the Whisper feature extractor, as ``Qwen2AudioProcessor`` runs it.

Per clip: log-mel ``input_features`` padded to the 30 s chunk (``(1, 128, 3000)``)
and ``feature_attention_mask`` (``(1, 3000)``). Token count from the valid mel
length ``L``: ``(((L - 1) // 2 + 1) - 2) // 2 + 1``, as ``processing_qwen2_audio.py``
computes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ray_mm.models.base import ModelAdapter, as_numpy_features
from ray_mm.models.registry import register_adapter
from ray_mm.types import ItemFeatures

if TYPE_CHECKING:  # pragma: no cover
    import torch


def audio_num_tokens(valid_mel_frames: int) -> int:
    """Placeholder tokens of a clip with ``valid_mel_frames`` unpadded mel frames (conv stride 2, pool 2)."""
    return (((valid_mel_frames - 1) // 2 + 1) - 2) // 2 + 1


@register_adapter("qwen2_audio")
class Qwen2AudioAdapter(ModelAdapter):
    """Qwen2-Audio: ``Audio N: <|audio_bos|><|AUDIO|><|audio_eos|>``."""

    modalities = frozenset({"audio"})
    precomputed_modalities = frozenset({"audio"})

    @property
    def placeholder_tokens(self) -> dict[str, str]:
        return {"audio": self.processor.audio_token}

    @property
    def placeholder_texts(self) -> dict[str, str]:
        p = self.processor
        return {"audio": f"{p.audio_bos_token}{p.audio_token}{p.audio_eos_token}"}

    @property
    def sampling_rate(self) -> int:
        return int(self.processor.feature_extractor.sampling_rate)

    def process(self, modality: str, data: Any, options: Mapping[str, Any] | None = None) -> list[ItemFeatures]:
        if modality != "audio":
            raise ValueError(f"{self.name} does not take {modality!r} items (modalities: audio)")
        audio = np.asarray(data, dtype=np.float32)
        if audio.ndim != 1:
            raise ValueError(f"audio must be a mono 1-D array, got shape {tuple(audio.shape)}")
        fe = self.processor.feature_extractor
        kwargs = dict(self._default_kwargs.get("audio_kwargs", {}))
        # What Qwen2AudioProcessor._process_audio forces, so the text can be expanded per clip.
        kwargs["return_attention_mask"] = True
        kwargs["padding"] = "max_length"
        out = fe([audio], sampling_rate=self.sampling_rate, return_tensors="np", **kwargs)
        out["feature_attention_mask"] = out.pop("attention_mask")
        feats = as_numpy_features(out, ("input_features", "feature_attention_mask"))
        valid = int(feats["feature_attention_mask"].sum())
        return [
            ItemFeatures(
                modality="audio",
                features=feats,
                primary="input_features",
                num_tokens=audio_num_tokens(valid),
                grid_thw=None,
            )
        ]

    def build_encoder(self) -> torch.nn.Module:
        from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

        module = Qwen2AudioEncoder._from_config(self.config.audio_config)
        return module.eval()

    def encode(self, module: torch.nn.Module, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Encoder output (after its avg-pool) for one clip, cut to its valid length like ``Qwen2AudioModel``."""
        import torch
        from transformers.masking_utils import create_bidirectional_mask

        param = next(module.parameters())
        input_features = torch.as_tensor(features["input_features"]).to(param.device, param.dtype)
        mask = torch.as_tensor(features["feature_attention_mask"]).to(param.device)
        if input_features.ndim == 2:
            input_features = input_features.unsqueeze(0)
        if mask.ndim == 1:
            mask = mask.unsqueeze(0)
        if input_features.shape[0] != 1:
            raise ValueError(f"encode takes one clip, got a batch of {input_features.shape[0]}")
        feat_lengths, out_lengths = module._get_feat_extract_output_lengths(mask.sum(-1))
        max_seq_len = (input_features.shape[-1] - 2) // 2 + 1
        seq_range = torch.arange(max_seq_len, device=feat_lengths.device).unsqueeze(0)
        attention_2d = (seq_range < feat_lengths.unsqueeze(1)).long()
        dummy = torch.zeros((1, max_seq_len, 1), dtype=param.dtype, device=param.device)
        attention = create_bidirectional_mask(config=module.config, inputs_embeds=dummy, attention_mask=attention_2d)
        with torch.inference_mode():
            hidden = module(input_features, attention_mask=attention).last_hidden_state
        return hidden[0, : int(out_lengths[0])]
