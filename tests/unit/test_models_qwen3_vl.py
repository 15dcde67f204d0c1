"""Qwen3-VL adapter against the in-tree HF ``Qwen3VLProcessor``, on whole requests.

Every parity check goes through the shared helper (:mod:`tests.conformance`). Videos expand per
temporal group into ``<t seconds><|vision_start|><|video_pad|>*n<|vision_end|>``, nested inside the
prompt's own ``<|vision_start|>`` / ``<|vision_end|>``; t comes from the frames ray-mm sampled.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from transformers import AutoProcessor

import ray_mm.pipeline as pipeline_module
from ray_mm.align import align
from ray_mm.models import load_adapter
from ray_mm.models.qwen3_vl import Qwen3VLAdapter
from ray_mm.pipeline import group_items
from tests import conformance as cf

IMG, VID = cf.QWEN_IMAGE, cf.QWEN_VIDEO
FAMILY = cf.Family("qwen3_vl", image=IMG, video=VID)
# 3 s at 10 fps. nframes 4 -> source frames [0, 10, 19, 29]: groups at 0.5 s and 2.4 s.
# fps 2 -> 6 frames [0, 6, 12, 17, 23, 29]: groups at 0.3 s, 1.4 s (1.45 in binary) and 2.6 s.
VIDEO_NFRAMES = {"url": "v.mp4", "nframes": 4}
VIDEO_FPS = {"url": "v.mp4", "fps": 2.0}


model_dir, media = cf.family_fixtures("qwen3_vl", cf.USUAL_MEDIA, model_name="model_dir")


@pytest.fixture(scope="module")
def hf(model_dir: Path) -> Any:
    return AutoProcessor.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def mixed(model_dir: Path, media: Path) -> cf.Checked:
    """Image, video, image in that prompt order."""
    line = {"request_id": "mixed", "prompt": f"First {IMG}, then{VID}\nlast {IMG}",
            "images": ["a.jpg", "b.png"], "videos": [VIDEO_NFRAMES]}
    return cf.check_request(model_dir, FAMILY, line, media)


@pytest.fixture(scope="module")
def merging_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with one more BPE merge, ``:`` + ``<`` -> ``:<``. The tiny vocabulary merges
    nothing into ``<``, so it cannot show the boundary problem; real Qwen vocabularies have such
    tokens, and then ``"Look:" + "<0.5 seconds>"`` tokenizes differently from its two halves."""
    out = tmp_path_factory.mktemp("qwen3_vl_merging") / "model"
    shutil.copytree(model_dir, out)
    path = out / "tokenizer.json"
    spec = json.loads(path.read_text())
    vocab = spec["model"]["vocab"]
    vocab[":<"] = max(max(vocab.values()), *(t["id"] for t in spec["added_tokens"])) + 1
    spec["model"]["merges"].insert(0, [":", "<"])
    path.write_text(json.dumps(spec))
    return out


def _timestamps(checked: Any) -> list[str]:
    text = checked.pre.adapter.decode(checked.hf_ids)
    return [piece.split(" seconds>")[0] for piece in text.split("<")[1:] if " seconds>" in piece]


# --------------------------------------------------------------------------- registration and encoder


def test_registered_and_takes_video_metadata(model_dir: Path) -> None:
    adapter = load_adapter(model_dir)
    assert isinstance(adapter, Qwen3VLAdapter) and adapter.name == "qwen3_vl"
    assert adapter.takes_video_metadata
    assert adapter.placeholder_texts == {"image": IMG, "video": VID}
    assert adapter.placeholder_tokens == adapter.feature_tokens == {"image": "<|image_pad|>", "video": "<|video_pad|>"}
    image_path, video_path = adapter._pixel_paths["image"], adapter._pixel_paths["video"]
    assert image_path is not None and image_path.settings.patch_size == 16 and image_path.settings.image_mean == (0.5,) * 3
    assert video_path is not None and video_path.settings.video_budget == "video"


def test_encoder_yields_one_embedding_per_placeholder_token(model_dir: Path, hf: Any) -> None:
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel

    meta = {"fps": 10.0, "total_num_frames": 40, "frames_indices": [0, 13, 26, 39], "duration": 4.0}
    encoder = cf.check_vision_tower(Qwen3VLAdapter(model_dir), hf, Qwen3VLModel, {"video_metadata": meta})
    assert type(encoder).__name__ == "Qwen3VLVisionModel"


def test_video_expansion_is_the_processors_replacement(model_dir: Path, hf: Any) -> None:
    """Hand path and HF path give the expansion of ``replace_video_token``'s text: a timestamp and a run per group."""
    frames = np.random.default_rng(3).integers(0, 255, (4, 180, 320, 3), dtype=np.uint8)
    meta = {"fps": 30.0, "total_num_frames": 120, "frames_indices": [0, 30, 60, 90], "duration": 4.0}
    expected = ("<0.5 seconds><|vision_start|>" + "<|video_pad|>" * 60 + "<|vision_end|>"
                "<2.5 seconds><|vision_start|>" + "<|video_pad|>" * 60 + "<|vision_end|>")
    for adapter in (Qwen3VLAdapter(model_dir), Qwen3VLAdapter(model_dir, use_hand_path=False)):
        (item,) = adapter.process("video", frames, {"video_metadata": dict(meta)})
        exp = item.expansion
        assert exp is not None and exp.runs == [60, 60] and item.num_tokens == 120
        assert exp.text("<|video_pad|>") == expected
        assert exp.open_start and not exp.open_end
    assert meta["frames_indices"] == [0, 30, 60, 90]  # the caller's metadata is not written into


# --------------------------------------------------------------------------- parity on whole requests


def test_one_image(model_dir: Path, media: Path) -> None:
    checked = cf.check_request(model_dir, FAMILY, {"request_id": "one", "prompt": f"Describe {IMG}.", "images": ["a.jpg"]}, media)
    assert checked.record["path"] == "fast" and checked.record["items"][0]["num_tokens"] == 228


def test_several_images_of_odd_sizes(model_dir: Path, media: Path) -> None:
    checked = cf.check_several_images(model_dir, FAMILY, media, ["b.png", "c.jpg", "d.png", "a.jpg"])
    assert len(checked.record["items"]) == 4


def test_image_video_image_in_prompt_order(mixed: cf.Checked) -> None:
    assert [i["modality"] for i in mixed.record["items"]] == ["image", "video", "image"]
    assert len(mixed.record["items"][1]["offsets"]) == 2  # one run per temporal group
    cf.check_legacy_roundtrip(mixed)


@pytest.mark.parametrize(("entry", "stamps"), [(VIDEO_NFRAMES, ["0.5", "2.4"]), (VIDEO_FPS, ["0.3", "1.4", "2.6"])],
                         ids=["nframes", "fps"])
def test_video_alone(model_dir: Path, media: Path, entry: dict[str, Any], stamps: list[str]) -> None:
    line = {"request_id": "vid", "prompt": f"What happens in {VID}?", "videos": [entry]}
    checked = cf.check_request(model_dir, FAMILY, line, media)
    assert _timestamps(checked) == stamps  # the source fps and sampled indices, not the 24 fps fallback
    cf.check_legacy_roundtrip(checked)


def test_chat_messages(model_dir: Path, media: Path) -> None:
    messages = cf.chat(("system", "Be brief."), ("user", {"video": VIDEO_FPS}, "and", {"image": "c.jpg"}, "\ncompare"))
    checked, _ = cf.check_chat(model_dir, FAMILY, messages, media)
    assert [i["modality"] for i in checked.record["items"]] == ["video", "image"]
    cf.check_legacy_roundtrip(checked)


@pytest.mark.parametrize("prompt", [
    f"\n{VID}\n{IMG}\n",  # newlines right against the wrapped placeholders
    "x\n<|video_pad|>\ny <|image_pad|>\n",  # bare placeholders after newlines: text splice
    f"{IMG}\n\n<|video_pad|>\n\nend",
    "Look:<|video_pad|> now",  # bare video placeholder right after punctuation: text splice
], ids=["wrapped", "bare-newlines", "double-newlines", "punctuation"])
def test_placeholders_against_text(model_dir: Path, media: Path, prompt: str) -> None:
    line = {"request_id": "edge", "prompt": prompt, "videos": [VIDEO_NFRAMES],
            "images": ["d.png"] if "image_pad" in prompt else []}
    checked = cf.check_request(model_dir, FAMILY, line, media)
    assert checked.record["path"] == "fast"


def test_tokenization_boundary_needs_the_text_splice(merging_dir: Path, media: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``"Look:<|video_pad|>"``: HF tokenizes ``"Look:<0.5 seconds>..."`` with ``:<`` merged. Splicing the
    expansion's ids would give ``:`` and ``<``; ray-mm sees plain text before an open-ended expansion and
    splices the text instead, so the ids are HF's."""
    adapter = load_adapter(merging_dir)
    merged = adapter.tokenizer.convert_tokens_to_ids(":<")
    assert adapter.tokenize("Look:<0.5 seconds>") != adapter.tokenize("Look:") + adapter.tokenize("<0.5 seconds>")
    calls: list[str] = []
    real = pipeline_module.align_by_text

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("request_id", ""))
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline_module, "align_by_text", spy)
    line = {"request_id": "colon", "prompt": "Look:<|video_pad|> now", "videos": [VIDEO_NFRAMES]}
    checked = cf.check_request(merging_dir, FAMILY, line, media)
    assert calls == ["colon"] and merged in checked.hf_ids
    # Splicing ids there would have been wrong: ":" and "<" where HF has ":<".
    prepared = checked.pre.prepare(checked.line)
    metas = [[p.meta for p in checked.pre.process_item(spec)] for spec in prepared.request.items()]
    in_id_space = align(prepared.input_ids, adapter.placeholder_token_ids, group_items(prepared.request.items(), metas))
    assert in_id_space.input_ids != checked.hf_ids and merged not in in_id_space.input_ids
    # With the placeholder wrapped in <|vision_start|> (the chat template's form) ids are spliced directly.
    calls.clear()
    cf.check_request(merging_dir, FAMILY, {**line, "prompt": f"Look:{VID} now"}, media)
    assert calls == []


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("how", ["short_run", "text"])
def test_corrupted_expansion_is_a_400(model_dir: Path, media: Path, how: str) -> None:
    line = {"request_id": "bad", "prompt": f"{VID} then {IMG}", "images": ["b.png"], "videos": [VIDEO_NFRAMES]}
    checked = cf.check_request(model_dir, FAMILY, line, media)
    assert "video 0" in cf.check_corruptions(checked, (how,), ("expected", "video 0"))[how]


def test_corrupted_timestamp_is_a_400(model_dir: Path, media: Path) -> None:
    line = {"request_id": "stamp", "prompt": f"Clip: {VID}", "videos": [VIDEO_NFRAMES]}
    checked = cf.check_request(model_dir, FAMILY, line, media)
    (first, second) = checked.record["items"][0]["offsets"]
    tok = checked.pre.adapter.tokenizer
    ids = list(checked.hf_ids)
    # The second group's "<2.4 seconds>": change its first digit.
    digit = next(p for p in range(first[1] + 1, second[0]) if tok.convert_ids_to_tokens(ids[p]).isdigit())
    ids[digit] = tok.convert_tokens_to_ids("9" if tok.convert_ids_to_tokens(ids[digit]) != "9" else "8")
    cf.assert_alignment_error(cf.run_ids(checked, "stamp", ids), "expected token", f"differs at {digit}")


def test_count_mismatch_both_ways_is_a_400(mixed: cf.Checked) -> None:
    a, _ = mixed.line["images"]
    (video,) = mixed.line["videos"]
    # One video placeholder too many (for one video), and one too few (for two): the message names the videos.
    cf.assert_alignment_error(cf.rerun(mixed, "many", prompt=f"{VID} {IMG} {VID}", images=[a]), "video")
    cf.assert_alignment_error(cf.rerun(mixed, "few", prompt=f"{VID} only", images=[], videos=[video, video]), "video")
    # Bare placeholders after text take the text splice; it counts too.
    cf.assert_alignment_error(cf.rerun(mixed, "few-bare", prompt="a:<|video_pad|>", images=[], videos=[video, video]), "video")
    # The whole request (image, video, image) with one video placeholder more or less, as a prompt and as ids.
    prompt = mixed.line["prompt"]
    cf.check_count_mismatches(mixed, (prompt + VID, prompt.replace(VID, "")), modality="video", phrases=("video",))
