"""Adapter registry: registration by name, name resolution from a model dir, per-process cache."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ray_mm.models import (
    ModelAdapter,
    Qwen2AudioAdapter,
    Qwen2VLAdapter,
    Qwen2VLFramesAdapter,
    available_adapters,
    get_adapter_class,
    load_adapter,
    register_adapter,
    resolve_adapter_name,
    unregister_adapter,
)
from ray_mm.types import ItemFeatures


def test_builtin_adapters_are_registered() -> None:
    assert {"qwen2_vl", "qwen2_audio", "qwen2_vl_frames"} <= set(available_adapters())
    assert get_adapter_class("qwen2_vl") is Qwen2VLAdapter
    assert get_adapter_class("qwen2_audio") is Qwen2AudioAdapter
    assert get_adapter_class("qwen2_vl_frames") is Qwen2VLFramesAdapter
    assert Qwen2VLAdapter.modalities == frozenset({"image", "video"})
    assert Qwen2AudioAdapter.modalities == frozenset({"audio"})
    assert Qwen2VLFramesAdapter.modalities == frozenset({"image"})
    assert not Qwen2VLAdapter.dynamic_frame_expansion and not Qwen2AudioAdapter.dynamic_frame_expansion
    assert Qwen2VLFramesAdapter.dynamic_frame_expansion and Qwen2VLFramesAdapter.expand_video_as_frames


def test_unknown_adapter_name_lists_available() -> None:
    with pytest.raises(ValueError, match="qwen2_vl"):
        get_adapter_class("no_such_model")


def test_register_fake_adapter_and_load(qwen2_vl_dir: Path) -> None:
    @register_adapter("fake_for_test")
    class Fake(Qwen2VLAdapter):
        modalities = frozenset({"image"})

        def process(self, modality, data, options=None):  # type: ignore[override]
            return [ItemFeatures("image", {}, "pixel_values", 1, None)]

    try:
        assert Fake.name == "fake_for_test"
        assert "fake_for_test" in available_adapters()
        a = load_adapter(qwen2_vl_dir, "fake_for_test")
        assert isinstance(a, Fake) and a.process("image", None)[0].num_tokens == 1
        # A different class under a taken name needs override=True.
        with pytest.raises(ValueError, match="already registered"):

            @register_adapter("fake_for_test")
            class Other(Fake):
                pass

        @register_adapter("fake_for_test", override=True)
        class Replacement(Fake):
            pass

        assert isinstance(load_adapter(qwen2_vl_dir, "fake_for_test"), Replacement)  # cache dropped on replace
    finally:
        unregister_adapter("fake_for_test")
    assert "fake_for_test" not in available_adapters()


def test_register_rejects_non_adapters() -> None:
    with pytest.raises(TypeError):
        register_adapter("bad")(object)  # type: ignore[arg-type]


def test_model_adapter_is_abstract(qwen2_vl_dir: Path) -> None:
    with pytest.raises(TypeError):
        ModelAdapter(qwen2_vl_dir)  # type: ignore[abstract]


def test_load_adapter_resolves_family_and_caches(qwen2_vl_dir: Path, qwen2_audio_dir: Path) -> None:
    assert resolve_adapter_name(qwen2_vl_dir) == "qwen2_vl"
    assert resolve_adapter_name(qwen2_audio_dir) == "qwen2_audio"
    a = load_adapter(qwen2_vl_dir)
    assert type(a) is Qwen2VLAdapter
    assert load_adapter(str(qwen2_vl_dir)) is a  # cached per (dir, name)
    assert load_adapter(qwen2_vl_dir, "qwen2_vl") is a
    f = load_adapter(qwen2_vl_dir, "qwen2_vl_frames")
    assert type(f) is Qwen2VLFramesAdapter and f is not a
    assert type(load_adapter(qwen2_audio_dir)) is Qwen2AudioAdapter


def test_resolve_falls_back_to_config_model_type(tmp_path: Path, qwen2_audio_dir: Path) -> None:
    d = tmp_path / "copy"
    shutil.copytree(qwen2_audio_dir, d)
    (d / "ray_mm_model.json").unlink()
    assert json.loads((d / "config.json").read_text())["model_type"] == "qwen2_audio"
    assert resolve_adapter_name(d) == "qwen2_audio"
    (d / "config.json").unlink()
    with pytest.raises(ValueError, match="cannot tell"):
        resolve_adapter_name(d)


def test_load_adapter_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        load_adapter(tmp_path / "nope")


def test_models_package_does_not_import_ray() -> None:
    code = "import sys, ray_mm.models; assert 'ray' not in sys.modules, 'ray imported'; print('ok')"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


def test_adapter_pickles_as_a_reload_of_its_dir(qwen2_vl_dir: Path) -> None:
    import pickle

    a = load_adapter(qwen2_vl_dir, "qwen2_vl_frames")
    assert pickle.loads(pickle.dumps(a)) is a  # same process: served from the cache
    fn, args = a.__reduce__()
    assert fn is load_adapter and args == (str(qwen2_vl_dir), "qwen2_vl_frames")
