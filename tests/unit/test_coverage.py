"""Coverage of the replacement API: what transformers has, what ray-mm proves, and the README's count."""

from __future__ import annotations

from pathlib import Path

from ray_mm.models.coverage import README_END, README_START, coverage_markdown, proven, replacement_api_processors

ROOT = Path(__file__).resolve().parents[2]


def test_in_tree_processors_with_the_replacement_api_are_listed() -> None:
    found = {p.class_name: p.modalities for p in replacement_api_processors()}
    assert len(found) >= 76  # transformers 5.24: the issue counts 76 at least
    assert found["Qwen3VLProcessor"] == ("image", "video")
    assert found["Qwen2AudioProcessor"] == ("audio",)
    assert "image" in found["Gemma3Processor"]


def test_every_proven_family_has_conformance_tests() -> None:
    sources = [p.read_text() for p in (ROOT / "tests").rglob("test_*.py")]
    missing = [f for f in proven() if not any(f'"{f}"' in s and "check_request(" in s for s in sources)]
    assert not missing, f"families with a make-model row but no conformance test: {missing}"


def test_readme_coverage_block_is_current() -> None:
    readme = (ROOT / "README.md").read_text()
    assert README_START in readme and README_END in readme, "README has no coverage block"
    block = readme[readme.index(README_START) : readme.index(README_END) + len(README_END)]
    assert block == coverage_markdown(), "README coverage is stale: paste `python -m ray_mm.models.coverage`"
