"""The per-call output arena: bump allocation, reuse after reset, growth, and the hand path and cache on top of it.

Feature values are checked against the real HF processor (called on the whole request)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from ray_mm.buffers import CallArena, active_arena, new_output, output_arena
from ray_mm.config import MediaPolicy, RayMMConfig
from ray_mm.media.synth import make_image
from ray_mm.models import load_adapter
from ray_mm.pipeline import Preprocessor

IMG = "<|vision_start|><|image_pad|><|vision_end|>"


def test_outputs_of_one_call_do_not_overlap_and_reset_reuses_the_buffer() -> None:
    arena = CallArena()
    a = arena.take((100, 7), torch.float32)
    b = arena.take((3,), torch.uint8)
    c = arena.take((10, 10), torch.int64)
    a.fill_(1.5)
    b.fill_(7)
    c.fill_(-3)
    assert float(a.sum()) == 1.5 * 700 and int(b.sum()) == 21 and int(c.sum()) == -300
    assert c.data_ptr() % 64 == 0 and b.data_ptr() % 64 == 0
    arena.reset()  # the first call sized the buffer; from now on it is reused
    ptr, allocations = arena.buffer_ptr(), arena.allocations
    for _ in range(5):
        arena.reset()
        outs = [arena.take((100, 7), torch.float32), arena.take((3,), torch.uint8), arena.take((10, 10), torch.int64)]
        assert outs[0].data_ptr() == ptr and all(arena.holds(o.numpy()) for o in outs)
    assert arena.buffer_ptr() == ptr and arena.allocations == allocations


def test_growth_keeps_earlier_outputs_valid() -> None:
    arena = CallArena()
    first = arena.take((1000,), torch.float32)
    first.fill_(2.0)
    big = arena.take((1 << 20,), torch.float32)  # does not fit: a larger buffer replaces it
    big.fill_(3.0)
    assert arena.allocations == 2
    assert float(first.sum()) == 2000.0 and float(big[:10].sum()) == 30.0
    arena.reset()
    again = arena.take((1 << 20,), torch.float32)
    assert arena.allocations == 2 and again.data_ptr() == arena.buffer_ptr()


def test_an_outsized_buffer_is_let_go_at_reset() -> None:
    arena = CallArena(max_retained_bytes=1 << 20)
    arena.take((1 << 16,), torch.float32)  # 256 KiB: kept
    arena.reset()
    assert arena.capacity == 1 << 18
    arena.take((1 << 19,), torch.float32)  # 2 MiB: over the bound
    assert arena.capacity >= 1 << 21
    arena.reset()
    assert arena.capacity == 0 and arena.buffer_ptr() == 0


def test_new_output_is_fresh_without_an_arena() -> None:
    assert active_arena() is None
    x, y = new_output((64,), torch.float32), new_output((64,), torch.float32)
    assert x.data_ptr() != y.data_ptr()
    arena = CallArena()
    with output_arena(arena):
        inside = new_output((64,), torch.float32)
        assert arena.holds(inside.numpy())
    assert active_arena() is None


def _hf_pixel_values(model_dir: Path, images: list[Image.Image]) -> np.ndarray:
    processor = AutoProcessor.from_pretrained(str(model_dir), local_files_only=True)
    return processor(text=[" ".join([IMG] * len(images))], images=images, return_tensors="np")["pixel_values"]


def test_hand_path_in_an_arena_matches_hf_and_reuses_the_buffer(qwen2_vl_dir: Path) -> None:
    adapter = load_adapter(qwen2_vl_dir)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)) for h, w in ((480, 640), (333, 517))]
    expected = _hf_pixel_values(qwen2_vl_dir, images)
    arena = CallArena()
    ptrs = []
    allocations_after_first = 0
    for call in range(4):  # four "calls"; the first sizes the buffer
        arena.reset()
        with output_arena(arena):
            outs = [adapter.process("image", image)[0].features["pixel_values"] for image in images]
        np.testing.assert_allclose(np.concatenate(outs), expected, atol=1e-5, rtol=0)  # both items intact
        ptrs.append(outs[0].__array_interface__["data"][0])
        if call == 0:
            allocations_after_first = arena.allocations
    assert all(arena.holds(o) for o in outs)
    assert len(set(ptrs[1:])) == 1 and arena.allocations == allocations_after_first  # no buffer after the first call


def test_cache_keeps_its_own_copy_of_arena_outputs(qwen2_vl_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(make_image(640, 480, seed=1))
    (tmp_path / "b.jpg").write_bytes(make_image(640, 480, seed=2))
    pre = Preprocessor(qwen2_vl_dir, RayMMConfig(media=MediaPolicy(allowed_local_media_path=str(tmp_path))))

    def spec(name: str):  # noqa: ANN202
        return pre.prepare({"request_id": name, "prompt": IMG, "images": [f"{tmp_path}/{name}"]}).request.items()[0]

    if pre.loader.is_in_process(pre.resolve_spec(spec("a.jpg"))[0]):
        pytest.skip("local files bypass the cache in this configuration")
    arena = CallArena()
    with output_arena(arena):
        first = pre.process_item(spec("a.jpg"))[0].features["pixel_values"].copy()
    arena.reset()
    with output_arena(arena):
        pre.process_item(spec("b.jpg"))  # overwrites the arena where a.jpg's output was
    with output_arena(arena):
        hit = pre.process_item(spec("a.jpg"))[0]
    assert hit.meta.timings.get("cache_hit") == 1.0
    np.testing.assert_array_equal(hit.features["pixel_values"], first)


def test_arena_pool_reuses_an_arena_only_once_its_outputs_are_garbage() -> None:
    import gc
    import pickle

    from ray_mm.buffers import ArenaPool

    pool = ArenaPool()
    first = pool.acquire()
    out = pool.outputs(first)
    out.append({"x": first.take((4,), torch.float32).numpy()})
    second = pool.acquire()  # the first call's outputs are alive: a new arena
    assert second is not first and pool.created == 2
    restored = pickle.loads(pickle.dumps(out))
    assert type(restored) is list and restored[0]["x"].shape == (4,)  # readers never see CallOutputs
    del out
    gc.collect()
    assert pool.acquire() is first  # released when its outputs went away
    assert pool.created == 2
