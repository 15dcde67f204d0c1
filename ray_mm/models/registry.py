"""Adapter registry: adapters register by name; ``load_adapter`` resolves and caches them per process."""

from __future__ import annotations

import importlib
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ray_mm.models.base import ModelAdapter
from ray_mm.models.make_model import MODEL_MARKER

A = TypeVar("A", bound=type[ModelAdapter])

_ADAPTERS: dict[str, type[ModelAdapter]] = {}
GENERIC = "generic"  # ray_mm.models.generic: the adapter of a family that has none of its own
_CACHE: dict[tuple[str, str], ModelAdapter] = {}
_LOCK = threading.RLock()


def register_adapter(name: str, *, override: bool = False) -> Callable[[A], A]:
    """Class decorator: register a :class:`ModelAdapter` subclass under ``name`` (sets ``cls.name``).

    Registering a different class under a taken name raises unless ``override=True``
    (tests use that to swap in fakes).
    """

    def deco(cls: A) -> A:
        if not (isinstance(cls, type) and issubclass(cls, ModelAdapter)):
            raise TypeError(f"@register_adapter({name!r}) needs a ModelAdapter subclass, got {cls!r}")
        with _LOCK:
            existing = _ADAPTERS.get(name)
            if existing is not None and existing is not cls and not override:
                raise ValueError(f"adapter name {name!r} is already registered to {existing.__qualname__}")
            cls.name = name
            _ADAPTERS[name] = cls
            # A replaced class must not be served from the cache.
            for key in [k for k in _CACHE if k[1] == name]:
                del _CACHE[key]
        return cls

    return deco


def unregister_adapter(name: str) -> None:
    with _LOCK:
        _ADAPTERS.pop(name, None)
        for key in [k for k in _CACHE if k[1] == name]:
            del _CACHE[key]


def get_adapter_class(name: str) -> type[ModelAdapter]:
    """The adapter registered as ``name``. ``"package.module:name"`` imports the module first, so an
    adapter defined outside ``ray_mm`` (a plugin, a test fake) registers itself in every process
    that loads it: Ray workers only import what the name tells them to."""
    module, colon, short = name.rpartition(":")
    if colon:
        importlib.import_module(module)
        name = short
    try:
        return _ADAPTERS[name]
    except KeyError:
        raise ValueError(f"no model adapter named {name!r}; available: {', '.join(available_adapters()) or '(none)'}") from None


def available_adapters() -> list[str]:
    return sorted(_ADAPTERS)


def resolve_adapter_name(model_dir: str | Path) -> str:
    """The adapter name of a model directory: ``ray_mm_model.json``'s family, else ``config.json``'s model_type."""
    d = Path(model_dir)
    marker = d / MODEL_MARKER
    if marker.is_file():
        family = json.loads(marker.read_text()).get("family")
        if family:
            return str(family)
    config = d / "config.json"
    if config.is_file():
        model_type = json.loads(config.read_text()).get("model_type")
        if model_type:
            return str(model_type)
    raise ValueError(f"{d}: cannot tell the model family (no {MODEL_MARKER} and no model_type in config.json)")


def load_adapter(model_dir: str | Path, name: str | None = None) -> ModelAdapter:
    """The adapter ``name`` (default: resolved from the directory) over ``model_dir``, cached per process."""
    d = Path(model_dir)
    if not d.is_dir():
        raise ValueError(f"model directory not found: {d}")
    resolved = str(d.resolve())
    adapter_name = name or resolve_adapter_name(d)
    if name is None and adapter_name not in _ADAPTERS:
        # No family adapter: the generic one serves any processor with transformers' replacement API.
        adapter_name = GENERIC
    key = (resolved, adapter_name)
    with _LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        cls = get_adapter_class(adapter_name)
        adapter = cls(d)
        _CACHE[key] = adapter
        return adapter


def clear_adapter_cache() -> None:
    with _LOCK:
        _CACHE.clear()
