"""M-RoPE positions per request: ray-mm's numpy ``mrope_positions`` vs HF's ``get_rope_index`` (torch, CPU, one thread).

Requests are built by hand at realistic sizes (a record's ``input_ids`` as a Python list and its ``items``):
a ~1000-token request with 4 images, and a 16-frame video (8 temporal groups). HF gets its tensors
ready-made (ids, ``mm_token_type_ids``, grids, ``second_per_grid_ts``): its best case. ray-mm is timed
as a caller would use it on a record: list ids in, with the token check (default) and without, and
with its per-grid pattern cache cleared before every call ("cold") as well as warm. Not a timed test.

    .venv/bin/python benchmarks/mrope_bench.py [--repeats 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ray_mm.handoff.mrope import MropeSpec, _pattern, mrope_positions, mrope_spec_for  # noqa: E402
from ray_mm.models import load_adapter  # noqa: E402
from ray_mm.models.make_model import make_model  # noqa: E402

TARGET_US = 500.0  # the coordinator's CPU budget for M-RoPE per 4-image request


def build_request(spec: MropeSpec, layout: list[Any]) -> tuple[list[int], list[dict[str, Any]], list[float]]:
    """Ids and record items: ints are text tokens, ``(modality, grid, seconds)`` an item in vision start / end
    (a Qwen3-VL video gets a timestamp token, start and end around each temporal group)."""
    ids: list[int] = []
    items: list[dict[str, Any]] = []
    seconds: list[float] = []
    m2 = spec.spatial_merge_size**2
    for part in layout:
        if isinstance(part, int):
            ids.extend(100 + k % 200 for k in range(part))
            continue
        modality, grid, sec = part
        token = spec.image_token_id if modality == "image" else spec.video_token_id
        groups = grid[0] if modality == "video" and spec.frames_per_video_run else 1
        offsets = []
        for _ in range(groups):
            if groups > 1:
                ids.append(120)
            ids.append(spec.vision_start_token_id)
            n = grid[0] * grid[1] * grid[2] // m2 // groups
            offsets.append([len(ids), len(ids) + n - 1])
            ids.extend([token] * n)
            ids.append(spec.vision_start_token_id + 1)
        item: dict[str, Any] = {"modality": modality, "grid_thw": list(grid), "offsets": offsets}
        if sec is not None:
            item["second_per_grid_ts"] = sec
            seconds.append(sec)
        items.append(item)
    return ids, items, seconds


def per_call_us(fn: Callable[[], Any], repeats: int) -> float:
    """Median over 5 batches of ``repeats`` calls, in µs per call."""
    fn()
    batches = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        batches.append((time.perf_counter() - t0) / repeats * 1e6)
    return statistics.median(batches)


def hf_model(model_dir: str, family: str) -> Any:
    from transformers import AutoConfig

    if family == "qwen2_5_vl":
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel as cls
    else:
        from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel as cls
    return cls._from_config(AutoConfig.from_pretrained(model_dir, local_files_only=True)).eval()


def measure(model: Any, processor: Any, spec: MropeSpec, layout: list[Any], repeats: int) -> tuple[int, float, float, float, float]:
    """``(tokens, HF µs, ray-mm warm µs, ray-mm cold µs, ray-mm without token check µs)`` of one request,
    after checking that both give the same positions and delta."""
    ids, items, seconds = build_request(spec, layout)
    ids_t = torch.tensor([ids], dtype=torch.long)
    types = torch.tensor(processor.create_mm_token_type_ids([ids]), dtype=torch.int32)
    kwargs: dict[str, Any] = {"attention_mask": torch.ones_like(ids_t)}
    for m in ("image", "video"):
        grids = [it["grid_thw"] for it in items if it["modality"] == m]
        if grids:
            kwargs[f"{m}_grid_thw"] = torch.tensor(grids, dtype=torch.long)
    if seconds:
        kwargs["second_per_grid_ts"] = torch.tensor(seconds, dtype=torch.float32)

    def hf() -> Any:
        with torch.no_grad():
            return model.get_rope_index(ids_t, types, **kwargs)

    def cold() -> Any:
        _pattern.cache_clear()
        return mrope_positions(ids, items, spec)

    ref_pos, ref_delta = hf()
    ours_pos, ours_delta = mrope_positions(ids, items, spec)
    assert np.array_equal(ours_pos, ref_pos[:, 0].numpy()) and ours_delta == int(ref_delta.reshape(-1)[0])
    hf_us = per_call_us(hf, max(repeats // 10, 20))
    warm_us = per_call_us(partial(mrope_positions, ids, items, spec), repeats)
    cold_us = per_call_us(cold, repeats)
    nocheck_us = per_call_us(partial(mrope_positions, ids, items, spec, check_tokens=False), repeats)
    return len(ids), hf_us, warm_us, cold_us, nocheck_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in ("qwen2_5_vl", "qwen3_vl"):
            model_dir = str(make_model(os.path.join(tmp, family), family))
            adapter = load_adapter(model_dir)
            spec = mrope_spec_for(adapter)
            assert spec is not None
            model = hf_model(model_dir, family)
            processor = adapter.processor
            sec = 1.0 if family == "qwen2_5_vl" else None
            cases = {
                # 4 images of 392x392 .. 504x280 px (patch 14, merge 2): 140 .. 196 tokens each, ~1000 tokens in all.
                "4 images": [120, ("image", [1, 28, 28], None), 80, ("image", [1, 28, 20], None), 60,
                             ("image", [1, 20, 36], None), 40, ("image", [1, 24, 24], None), 40],
                # 16 frames of 336x588 px: 8 temporal groups of 12x21 merged tokens (2016 video tokens).
                "video 16 frames": [30, ("video", [8, 24, 42], sec), 40],
            }
            for name, layout in cases.items():
                rows.append((family, name, *measure(model, processor, spec, layout, args.repeats)))

    print(f"{'family':<11} {'request':<16} {'tokens':>6} {'HF µs':>9} {'ray-mm µs':>10} {'cold µs':>8} "
          f"{'no check':>9} {'HF/ray-mm':>9} {'of 0.5 ms':>9}")
    for family, name, n, hf_us, warm_us, cold_us, nocheck_us in rows:
        print(f"{family:<11} {name:<16} {n:>6} {hf_us:>9.1f} {warm_us:>10.1f} {cold_us:>8.1f} {nocheck_us:>9.1f} "
              f"{hf_us / warm_us:>8.1f}x {cold_us / TARGET_US:>8.1%}")
    print("ray-mm µs: list ids in, token check on, pattern cache warm; cold: cache cleared every call; "
          "'of 0.5 ms': the cold time against the coordinator's per-request budget. One thread, CPU.")


if __name__ == "__main__":
    main()
