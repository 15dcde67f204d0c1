"""Shared test fixtures: tiny offline model directories, built once per session.

The Hugging Face hub is switched off for the whole test session before
transformers is imported, so anything that would reach the network fails.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import logging  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def qwen2_vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny offline Qwen2-VL model directory (tokenizer, processor configs, config.json)."""
    from ray_mm.models.make_model import make_model

    return make_model(tmp_path_factory.mktemp("qwen2_vl_model"), "qwen2_vl")


@pytest.fixture(scope="session")
def qwen2_audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny offline Qwen2-Audio model directory."""
    from ray_mm.models.make_model import make_model

    return make_model(tmp_path_factory.mktemp("qwen2_audio_model"), "qwen2_audio")


@pytest.fixture(scope="session")
def family_dir(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """``family_dir("qwen3_vl")``: a tiny offline model directory of that family, built once per session."""
    from ray_mm.models.make_model import make_model

    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = make_model(tmp_path_factory.mktemp(f"{family}_model"), family)
        return built[family]

    return get


@pytest.fixture(autouse=True)
def keep_ray_mm_logger() -> Iterator[None]:
    """``cli.main`` configures the ``ray_mm`` logger (``--log-level``); give later tests it back as it was."""
    logger = logging.getLogger("ray_mm")
    level, handlers = logger.level, list(logger.handlers)
    yield
    logger.setLevel(level)
    logger.handlers[:] = handlers
