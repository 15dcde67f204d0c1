"""GPU-side consumers that hand each finished request to an engine, in the engine's own form.

``PoolConfig.consumer`` names one as ``"<form>:<module>:<function>"``:

- ``sglang``: SGLang's ``processor_output`` form (the engine runs its own vision tower);
- ``sglang-embeds``: SGLang's ``precomputed_embedding`` form, embeddings from the model's encoder
  run here (the encoder role of encoder disaggregation);
- ``vllm``: vLLM's ``TokensPrompt`` with ``image_embeds`` (vLLM takes embeddings, not pixels).

The function gets the payload (:mod:`ray_mm.handoff`: engine keyword arguments plus ray-mm's own
``ray_mm`` key, with M-RoPE positions for the Qwen families) and the request's record; what it
returns is kept only if it is JSON-small (a dict or a number), as the consumer summary's ``engine``.
The tensors are on the worker's device; pixel arrays are read zero-copy from the object store.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import engines as handoff

FORMS = ("sglang", "sglang-embeds", "vllm")


def parse_consumer(name: str) -> tuple[str, str] | None:
    """``(form, "module:function")`` for an engine consumer name, else None."""
    form, sep, target = name.partition(":")
    if sep and form in FORMS and ":" in target:
        return form, target
    return None


def load_callable(target: str) -> Callable[..., Any]:
    module, _, fn = target.partition(":")
    return getattr(importlib.import_module(module), fn)


class EngineConsumer:
    """Builds the engine payload of each request and passes it to the user's function."""

    def __init__(self, form: str, target: str, adapter: Any, encoder: Any | None) -> None:
        if form not in FORMS:
            raise ValueError(f"unknown engine form {form!r}; expected one of {', '.join(FORMS)}")
        self.form = form
        self.fn = load_callable(target)
        self.adapter = adapter
        self.encoder = encoder  # a VisionTowerConsumer-like object with embed(items), for the embedding forms
        self.wants_embeddings = form in ("sglang-embeds", "vllm")
        if self.wants_embeddings and encoder is None:
            raise ValueError(f"the {form} form needs the model's encoder")
        from .mrope import mrope_spec_for

        self.mrope_spec = mrope_spec_for(adapter)

    def __call__(self, record: Mapping[str, Any], features: Sequence[Mapping[str, Any]]) -> tuple[int, Any]:
        """Hand one request over; returns ``(embedding rows produced or placeholder tokens, the function's answer)``."""
        embeddings = self.encoder.embed(features) if self.wants_embeddings else None
        mrope = self.mrope(record)
        if self.form == "vllm":
            payload = handoff.to_vllm(record, self.adapter.placeholder_token_ids, embeddings=embeddings, mrope=mrope)
        else:
            payload = handoff.to_sglang(record, features, embeddings=embeddings, mrope=mrope)
        answer = self.fn(payload, record)
        rows = sum(int(e.shape[0]) for e in embeddings) if embeddings is not None else sum(int(i["num_tokens"]) for i in record["items"])
        return rows, answer if isinstance(answer, (dict, int, float, str)) or answer is None else type(answer).__name__

    def mrope(self, record: Mapping[str, Any]) -> tuple[Any, int] | None:
        """The record's M-RoPE positions and delta (Qwen families), else None."""
        if self.mrope_spec is None:
            return None
        from .mrope import mrope_positions

        return mrope_positions(record["input_ids"], record["items"], self.mrope_spec)
