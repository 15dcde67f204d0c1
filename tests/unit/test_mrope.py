"""M-RoPE positions (:mod:`ray_mm.handoff.mrope`) against the Hugging Face model's own ``get_rope_index``.

Oracle, end to end in HF: the family's ``AutoProcessor`` on the whole request (ids,
``mm_token_type_ids``, grids, ``second_per_grid_ts`` as the model gets them) then
``<Family>Model.get_rope_index`` of the tiny model built from the directory's ``config.json``.
ray-mm's side: the in-process pipeline's record (``input_ids`` and ``items``) into
``mrope_positions``. Positions and delta must be exactly equal, for Qwen2-VL, Qwen2.5-VL and
Qwen3-VL, on images, videos, mixes in both orders, ``skip_tokenizer_init`` ids and text only;
then hand-made sequences pin the float32 time scaling of Qwen2.5-VL and transformers 5.24's
text advance after a long video, and broken items must be refused.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoProcessor

from ray_mm.handoff.mrope import MropeSpec, mrope_positions, mrope_spec_for
from ray_mm.models import load_adapter
from ray_mm.pipeline import Preprocessor
from tests import conformance as cf

IMG, VID = cf.QWEN_IMAGE, cf.QWEN_VIDEO
FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
MEDIA = {**cf.USUAL_MEDIA, "w.mp4": (200, 120, 7, 2.9, 1)}
# 3 s at 10 fps, 8 frames of 30: sampled_fps 8/3, so Qwen2.5-VL's second_per_grid_ts is 0.75 and
# its time interval 1.5 (temporal positions 0, 1, 3, 4: the truncation shows).
VIDEO_8 = {"url": "v.mp4", "nframes": 8}
VIDEO_FPS = {"url": "w.mp4", "fps": 3.0}

CASES: dict[str, dict[str, Any]] = {
    "one_image": {"prompt": f"Describe {IMG}.", "images": ["a.jpg"]},
    "several_images": {"prompt": f"{IMG}\n{IMG} and\n{IMG}{IMG}\nwhich?", "images": ["b.png", "c.jpg", "d.png", "a.jpg"]},
    "video": {"prompt": f"Watch{VID} now", "videos": [VIDEO_8]},
    "video_fps": {"prompt": f"{VID}", "videos": [VIDEO_FPS]},
    "image_then_video": {"prompt": f"First {IMG}, then{VID}\nlast {IMG} end", "images": ["a.jpg", "b.png"], "videos": [VIDEO_8]},
    "video_then_image": {"prompt": f"{VID} and {IMG}{VID}?", "images": ["c.jpg"], "videos": [VIDEO_FPS, VIDEO_8]},
    "text_only": {"prompt": "Nothing to see here, only words."},
}

_MODEL_CLASSES = {
    "qwen2_vl": ("transformers.models.qwen2_vl.modeling_qwen2_vl", "Qwen2VLModel"),
    "qwen2_5_vl": ("transformers.models.qwen2_5_vl.modeling_qwen2_5_vl", "Qwen2_5_VLModel"),
    "qwen3_vl": ("transformers.models.qwen3_vl.modeling_qwen3_vl", "Qwen3VLModel"),
}


class Side:
    """One family: ray-mm's preprocessor and spec, HF's processor and (tiny, random) model."""

    def __init__(self, family: str, model_dir: Path, media: Path) -> None:
        import importlib

        self.family, self.model_dir, self.media = family, model_dir, media
        self.pre = Preprocessor(model_dir, cf.config_for(media))
        spec = mrope_spec_for(self.pre.adapter)
        assert spec is not None
        self.spec = spec
        self.processor = AutoProcessor.from_pretrained(str(model_dir), local_files_only=True)
        module, name = _MODEL_CLASSES[family]
        cls = getattr(importlib.import_module(module), name)
        torch.manual_seed(0)
        self.model = cls._from_config(AutoConfig.from_pretrained(str(model_dir), local_files_only=True)).eval()

    def record(self, line: dict[str, Any]) -> dict[str, Any]:
        outcome = self.pre.run(cf._absolute(line, self.media))
        assert outcome.ok, outcome.record
        return outcome.record

    def hf_inputs(self, line: dict[str, Any]) -> dict[str, Any]:
        """The processor's output on the whole request, tensors as the model gets them (``return_tensors="pt"``:
        ``second_per_grid_ts`` float32)."""
        ref = cf.oracle(self.model_dir, cf.Family(self.family, image=IMG, video=VID), line["prompt"], line, self.media)
        out: dict[str, Any] = {"input_ids": torch.as_tensor(ref["input_ids"], dtype=torch.long),
                               "mm_token_type_ids": torch.as_tensor(ref["mm_token_type_ids"], dtype=torch.int32)}
        for key in ("image_grid_thw", "video_grid_thw"):
            if key in ref:
                out[key] = torch.as_tensor(ref[key], dtype=torch.long)
        if "second_per_grid_ts" in ref:
            out["second_per_grid_ts"] = torch.as_tensor(ref["second_per_grid_ts"], dtype=torch.float32)
        return out

    def hf_rope(self, inputs: dict[str, Any]) -> tuple[np.ndarray, int]:
        """The model's ``get_rope_index`` on one sequence, attention mask all ones."""
        kwargs = {k: v for k, v in inputs.items() if k not in ("input_ids", "mm_token_type_ids")}
        if self.family != "qwen2_5_vl":
            kwargs.pop("second_per_grid_ts", None)
        ids = inputs["input_ids"]
        with torch.no_grad():
            pos, delta = self.model.get_rope_index(ids, inputs["mm_token_type_ids"], attention_mask=torch.ones_like(ids), **kwargs)
        return pos[:, 0].numpy(), int(delta.reshape(-1)[0])

    def hf_rope_of_ids(self, ids: list[int], items: list[dict[str, Any]], seconds: list[float] | None = None) -> tuple[np.ndarray, int]:
        """HF's positions for hand-made ids: token types by the processor's own ``create_mm_token_type_ids``,
        grids of the items in order (what the processor would have returned with them)."""
        grids = {m: [it["grid_thw"] for it in items if it["modality"] == m] for m in ("image", "video")}
        inputs: dict[str, Any] = {"input_ids": torch.tensor([ids], dtype=torch.long),
                                  "mm_token_type_ids": torch.tensor(self.processor.create_mm_token_type_ids([ids]), dtype=torch.int32)}
        for m in ("image", "video"):
            if grids[m]:
                inputs[f"{m}_grid_thw"] = torch.tensor(grids[m], dtype=torch.long)
        if seconds is not None:
            inputs["second_per_grid_ts"] = torch.tensor(seconds, dtype=torch.float32)
        return self.hf_rope(inputs)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cf.write_media(tmp_path_factory.mktemp("mrope_media"), MEDIA)


@pytest.fixture(scope="module")
def sides(family_dir: Any, media: Path) -> dict[str, Side]:
    built: dict[str, Side] = {}

    def get(family: str) -> Side:
        if family not in built:
            built[family] = Side(family, family_dir(family), media)
        return built[family]

    return get  # type: ignore[return-value]


def _assert_same(ours: tuple[np.ndarray, int], theirs: tuple[np.ndarray, int]) -> None:
    pos, delta = ours
    ref, ref_delta = theirs
    assert pos.dtype == np.int64 and pos.shape == ref.shape, (pos.shape, ref.shape)
    if not np.array_equal(pos, ref):
        bad = np.flatnonzero((pos != ref).any(axis=0))
        raise AssertionError(f"positions differ at {bad.size} tokens, first {bad[0]}: ours {pos[:, bad[0]]} vs HF {ref[:, bad[0]]}")
    assert delta == ref_delta


# --------------------------------------------------------------------------- spec


def test_spec_read_from_the_adapter(family_dir: Any) -> None:
    specs = {f: mrope_spec_for(load_adapter(family_dir(f))) for f in FAMILIES}
    for family, spec in specs.items():
        assert spec is not None and spec.kind == family
        cfg = AutoConfig.from_pretrained(str(family_dir(family)), local_files_only=True)
        assert (spec.image_token_id, spec.video_token_id, spec.vision_start_token_id) == (
            cfg.image_token_id, cfg.video_token_id, cfg.vision_start_token_id)
        assert spec.spatial_merge_size == cfg.vision_config.spatial_merge_size == 2
    assert specs["qwen2_5_vl"].tokens_per_second == 2.0  # type: ignore[union-attr]
    assert specs["qwen2_vl"].tokens_per_second is None and specs["qwen3_vl"].tokens_per_second is None  # type: ignore[union-attr]
    assert mrope_spec_for(load_adapter(family_dir("qwen2_audio"))) is None


# --------------------------------------------------------------------------- parity on pipeline records


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("family", FAMILIES)
def test_parity_with_hf_get_rope_index(sides: Any, family: str, case: str) -> None:
    side: Side = sides(family)
    line = {"request_id": case, **copy.deepcopy(CASES[case])}
    rec = side.record(line)
    inputs = side.hf_inputs(line)
    assert rec["input_ids"] == inputs["input_ids"][0].tolist()
    ours = mrope_positions(rec["input_ids"], rec["items"], side.spec)
    _assert_same(ours, side.hf_rope(inputs))
    # The token check only reads; without it the result is the same.
    _assert_same(mrope_positions(rec["input_ids"], rec["items"], side.spec, check_tokens=False), ours)
    if case == "text_only":
        assert ours[1] == 0 and np.array_equal(ours[0], np.tile(np.arange(len(rec["input_ids"])), (3, 1)))
    if family == "qwen3_vl" and "video" in case:
        video = next(i for i in rec["items"] if i["modality"] == "video")
        assert len(video["offsets"]) == video["grid_thw"][0] > 1  # one run per temporal group, timestamps between
    if family == "qwen2_5_vl" and case == "video":
        assert rec["items"][0]["second_per_grid_ts"] == 0.75  # interval 1.5: the float path is exercised


@pytest.mark.parametrize("family", FAMILIES)
def test_parity_with_skip_tokenizer_init_ids(sides: Any, family: str) -> None:
    """HF's own expanded ids given with ``skip_tokenizer_init`` (the legacy scan): same record layout, same positions."""
    side: Side = sides(family)
    line = {"request_id": "mix", **copy.deepcopy(CASES["image_then_video"])}
    inputs = side.hf_inputs(line)
    ids = inputs["input_ids"][0].tolist()
    rec = side.record({"request_id": "ids", "input_ids": ids, "skip_tokenizer_init": True,
                       "images": line["images"], "videos": line["videos"]})
    assert rec["path"] == "legacy" and rec["input_ids"] == ids
    _assert_same(mrope_positions(np.asarray(ids), rec["items"], side.spec), side.hf_rope(inputs))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_wrong_grid_gives_other_positions(sides: Any, family: str) -> None:
    """The comparison has teeth: the record with one image's grid transposed (same token count) no longer
    matches HF, and a grid with another token count is refused."""
    side: Side = sides(family)
    line = {"request_id": "odd", **copy.deepcopy(CASES["several_images"])}
    rec, inputs = side.record(line), side.hf_inputs(line)
    items = copy.deepcopy(rec["items"])
    k = next(n for n, it in enumerate(items) if it["grid_thw"][1] != it["grid_thw"][2])
    t, h, w = items[k]["grid_thw"]
    items[k]["grid_thw"] = [t, w, h]
    theirs = side.hf_rope(inputs)
    assert not np.array_equal(mrope_positions(rec["input_ids"], items, side.spec)[0], theirs[0])
    items[k]["grid_thw"] = [t, h + 2 * side.spec.spatial_merge_size, w]
    with pytest.raises(ValueError, match="grid gives"):
        mrope_positions(rec["input_ids"], items, side.spec)


# --------------------------------------------------------------------------- hand-made sequences


def _sequence(spec: MropeSpec, layout: list[Any]) -> tuple[list[int], list[dict[str, Any]]]:
    """Ids and record items from ``layout``: ints are that many text tokens, ``(modality, grid, extras)``
    an item wrapped in vision start / end (Qwen3-VL videos: a start / end and a text token per group)."""
    ids: list[int] = []
    items: list[dict[str, Any]] = []
    m2 = spec.spatial_merge_size**2
    for part in layout:
        if isinstance(part, int):
            ids.extend([100 + (k % 50) for k in range(part)])
            continue
        modality, grid, extras = part
        token = spec.image_token_id if modality == "image" else spec.video_token_id
        t, h, w = grid
        groups = t if (modality == "video" and spec.frames_per_video_run) else 1
        offsets = []
        for _ in range(groups):
            if groups > 1:
                ids.append(120)  # stands for the "<t seconds>" text
            ids.append(spec.vision_start_token_id)
            n = t * h * w // m2 // groups
            offsets.append([len(ids), len(ids) + n - 1])
            ids.extend([token] * n)
            ids.append(spec.vision_start_token_id + 1)
        items.append({"modality": modality, "grid_thw": list(grid), "offsets": offsets, **extras})
    return ids, items


@pytest.mark.parametrize("family", FAMILIES)
def test_long_video_advances_text_by_max_h_w(sides: Any, family: str) -> None:
    """A video with many temporal groups and a small frame: transformers 5.24 moves the text after it by
    ``max(h, w)`` (not past its largest temporal position), and the delta still counts that temporal maximum."""
    side: Side = sides(family)
    grid = [12, 4, 6]
    seconds = {"second_per_grid_ts": 2.5} if family == "qwen2_5_vl" else {}
    ids, items = _sequence(side.spec, [5, ("image", [1, 8, 4], {}), 3, ("video", grid, seconds), 2])
    ours = mrope_positions(ids, items, side.spec)
    _assert_same(ours, side.hf_rope_of_ids(ids, items, [2.5] if seconds else None))
    if family != "qwen3_vl":
        # The temporal extent (12 groups; 55 for 2.5 s at 2 tokens/s) outruns the text after the video.
        assert ours[0].max() > ours[0][:, -1].max()


def test_qwen2_5_vl_time_interval_is_float32(sides: Any) -> None:
    """``second_per_grid_ts`` values whose scaled temporal positions sit on truncation edges, and an odd
    ``tokens_per_second``: the float32 product HF takes, not float64 (which differs on at least one)."""
    side: Side = sides("qwen2_5_vl")
    values = [0.7, 1 / 3, 0.1, 2 / 3, 1.1, 0.35, 1.45, 0.9]
    layout: list[Any] = [4]
    for s in values:
        layout += [("video", [40, 2, 2], {"second_per_grid_ts": s}), 1]
    ids, items = _sequence(side.spec, layout)
    vision = side.model.config.vision_config
    differs_from_float64 = False
    for tps in (2, 25, 3):
        spec = replace(side.spec, tokens_per_second=float(tps))
        saved = vision.tokens_per_second
        vision.tokens_per_second = tps
        try:
            theirs = side.hf_rope_of_ids(ids, items, values)
        finally:
            vision.tokens_per_second = saved
        _assert_same(mrope_positions(ids, items, spec), theirs)
        for s in values:
            s32 = float(np.float32(s))
            t64 = (np.arange(40) * (tps * s32)).astype(np.int64)
            t32 = (np.arange(40, dtype=np.float32) * np.float32(tps * np.float32(s))).astype(np.int64)
            differs_from_float64 |= not np.array_equal(t64, t32)
    assert differs_from_float64


def test_qwen2_5_vl_video_without_second_per_grid_ts_takes_hf_default(sides: Any) -> None:
    side: Side = sides("qwen2_5_vl")
    ids, items = _sequence(side.spec, [2, ("video", [3, 4, 4], {}), 2])
    _assert_same(mrope_positions(ids, items, side.spec), side.hf_rope_of_ids(ids, items, None))


@pytest.mark.parametrize("family", FAMILIES)
def test_items_that_do_not_fit_the_ids_are_refused(sides: Any, family: str) -> None:
    spec = sides(family).spec
    ids, items = _sequence(spec, [3, ("image", [1, 4, 4], {}), 1, ("image", [1, 2, 4], {}), 2])
    mrope_positions(ids, items, spec)
    shifted = copy.deepcopy(items)
    shifted[1]["offsets"] = [[s - 1, e - 1] for s, e in shifted[1]["offsets"]]
    with pytest.raises(ValueError, match="not all the image token"):
        mrope_positions(ids, shifted, spec)
    with pytest.raises(ValueError, match="runs cover"):
        mrope_positions(ids, items[:1], spec)
    touching = [100] * 6 + [spec.image_token_id] * 4 + [spec.image_token_id] * 2 + [100] * 3
    pair = [{"modality": "image", "grid_thw": [1, 4, 4], "offsets": [[6, 9]]},
            {"modality": "image", "grid_thw": [1, 2, 4], "offsets": [[10, 11]]}]
    with pytest.raises(ValueError, match="HF groups them as one"):
        mrope_positions(touching, pair, spec)
    with pytest.raises(ValueError, match="overlap or fall outside"):
        mrope_positions(ids[:-4], items, spec)
    with pytest.raises(ValueError, match="no M-RoPE grid"):
        mrope_positions(ids, [{"modality": "audio", "grid_thw": [1, 2, 2], "offsets": [[0, 0]]}], spec)
