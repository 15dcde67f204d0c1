"""PaliGemma: the generic adapter plus the processor's call-level prompt layout.

``PaliGemmaProcessor.prepare_inputs_layout`` rewrites the whole prompt before any placeholder is
replaced: the tokenizer's BOS goes right after the last ``<image>`` and a newline at the end
(PaliGemma is a prefix LM: images, BOS, prefix, ``"\\n"``). That depends on the whole prompt, not
on any one item, so it is a tokenizer-side override: ``tokenize`` runs the processor's own layout
step on the prompt first. Items, expansions (``<image>`` x ``image_seq_length``, the placeholder
being its own feature token) and alignment are the generic adapter's.

Ids sent with ``skip_tokenizer_init`` are taken as laid out by the client (HF's ids already are).
A prompt with images but no ``<image>`` at all, which the processor fills in by guessing (it
prepends one ``<image>`` per image), is a count mismatch here (400), not a guess.
"""

from __future__ import annotations

from ray_mm.models.generic import GenericAdapter
from ray_mm.models.registry import register_adapter


@register_adapter("paligemma")
class PaliGemmaAdapter(GenericAdapter):
    """Generic, with the processor's prompt layout (BOS after the last image token, newline at the end)."""

    def tokenize(self, text: str) -> list[int]:
        from transformers.models.paligemma.processing_paligemma import IMAGE_TOKEN

        if IMAGE_TOKEN in text:  # the processor's own layout step (it looks for the literal "<image>")
            _, laid_out, *_ = self.processor.prepare_inputs_layout(images=[], text=[text])
            text = laid_out[0]
        return super().tokenize(text)
