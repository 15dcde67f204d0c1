"""Gemma 3 against its HF processor (``Gemma3Processor``, transformers 5.24, in tree), through the
shared conformance helper and the GENERIC adapter (no Gemma 3 code in ray-mm).

``<start_of_image>`` in the prompt becomes ``"\\n\\n<start_of_image>"`` + 4 soft tokens +
``"<end_of_image>\\n\\n"`` (tiny model: ``image_seq_length`` 4); the embedding positions are the
soft tokens (``config.image_token_index``), not the placeholder. With pan-and-scan (a call kwarg
of the processor; per item in ray-mm) an image with crops becomes ``"Here is the original image
" + seq + " and here are some crops to help you see better " + " ".join([seq] * crops)``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoProcessor

import ray_mm.pipeline as pipeline_module
from tests import conformance as cf

IMG = "<start_of_image>"
GEMMA3 = cf.Family("gemma3", IMG)
PAS = cf.Family("gemma3", IMG, call_kwargs={"do_pan_and_scan": True})
SOFT, BOI, EOI = "<image_soft_token>", "<start_of_image>", "<end_of_image>"


model, media = cf.family_fixtures("gemma3", {
    "a.jpg": (600, 400),  # ratio 1.5: 2 crops of 300x400
    "b.png": (37, 91),  # too small for crops
    "c.jpg": (333, 517),  # portrait 1.55, crops under 256: none
    "wide.jpg": (800, 300),  # 3 crops of 267x300
    "tall.png": (300, 700),  # 2 crops of 300x350
    "square.jpg": (300, 300),  # ratio 1: none
})


@pytest.fixture(scope="module")
def mixed(model: Path, media: Path) -> cf.Checked:
    """Three odd-sized images, text and newlines right against each placeholder."""
    line = {"request_id": "mixed", "prompt": f"<|im_start|>user\n{IMG}\nwhat?\n{IMG}x\n\n{IMG}.<|im_end|>",
            "images": ["c.jpg", "b.png", "a.jpg"]}
    return cf.check_request(model, GEMMA3, line, media)


@pytest.fixture(scope="module")
def merging_dir(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with BPE merges for runs of 2, 3 and 4 newlines, as real Gemma vocabularies have
    (the tiny one has none, so ``"\\n" + "\\n\\n"`` could not show a boundary merge)."""
    out = tmp_path_factory.mktemp("gemma3_merging") / "model"
    shutil.copytree(model, out)
    path = out / "tokenizer.json"
    spec = json.loads(path.read_text())
    vocab = spec["model"]["vocab"]
    nxt = max(max(vocab.values()), *(t["id"] for t in spec["added_tokens"])) + 1
    merges = [["Ċ", "Ċ"], ["ĊĊ", "Ċ"], ["ĊĊ", "ĊĊ"]]
    for k, (a, b) in enumerate(merges):
        vocab[a + b] = nxt + k
    spec["model"]["merges"] = merges + [m for m in spec["model"]["merges"] if m not in merges]
    path.write_text(json.dumps(spec))
    return out


# --------------------------------------------------------------------------- parity


def test_one_image_through_the_generic_adapter(model: Path, media: Path) -> None:
    checked = cf.check_request(model, GEMMA3, {"request_id": "one", "prompt": f"Describe{IMG}please", "images": ["a.jpg"]}, media)
    adapter, rec = checked.pre.adapter, checked.record
    assert adapter.name == "generic" and rec["path"] == "fast"
    assert adapter.placeholder_tokens == {"image": BOI} and adapter.feature_tokens == {"image": SOFT}
    (item,) = rec["items"]
    assert cf.run_lengths(item) == [4] and item["num_tokens"] == 4 and item["feature_shape"] == [1, 3, 56, 56]
    assert adapter.decode(rec["input_ids"]) == f"Describe\n\n{BOI}{SOFT * 4}{EOI}\n\nplease"
    cf.check_legacy_roundtrip(checked)


def test_several_odd_images_with_newlines_against_placeholders(mixed: cf.Checked) -> None:
    rec = mixed.record
    assert rec["path"] == "fast" and [i["index"] for i in rec["items"]] == [0, 1, 2]
    assert all(cf.run_lengths(i) == [4] for i in rec["items"])
    cf.check_legacy_roundtrip(mixed)


def test_placeholders_side_by_side_and_a_repeat(model: Path, media: Path) -> None:
    line = {"request_id": "adj", "prompt": f"{IMG}{IMG}then{IMG}{IMG}", "images": ["b.png", "a.jpg", "b.png", "c.jpg"]}
    checked = cf.check_request(model, GEMMA3, line, media)
    assert checked.pre.cache.hits >= 1
    cf.check_legacy_roundtrip(checked)
    # Compact ids from the client, side by side: the legacy scan expands each (bracketed expansions).
    cf.check_legacy_ids(checked, checked.pre.adapter.tokenize(line["prompt"]), "adj-ids")


def test_chat_messages(model: Path, media: Path) -> None:
    messages = cf.chat(
        ("user", "Compare\n", {"image": "a.jpg"}, {"image": "c.jpg"}, "\nwith"),
        ("assistant", "Sure."),
        ("user", {"image": "b.png"}, "and this?"),
    )
    checked, hf_text = cf.check_chat(model, GEMMA3, messages, media)
    assert f"Compare\n{IMG}{IMG}\nwith" in hf_text and f"user\n{IMG}and this?" in hf_text
    assert checked.record["path"] == "fast" and len(checked.record["items"]) == 3


# --------------------------------------------------------------------------- pan-and-scan


def test_pan_and_scan_on_with_parity(model: Path, media: Path) -> None:
    """Per item ``do_pan_and_scan`` (the processor takes it per call): thumbnails and crops of each
    image in ``pixel_values`` in prompt order, the crops' soft-token runs inside the image's expansion.
    The two wide images share a shape, so the processor groups them in one batch; ray-mm does not."""
    names = ["wide.jpg", "tall.png", "square.jpg", "wide.jpg", "b.png", "a.jpg"]
    line = {"request_id": "pas", "prompt": f"\n{IMG}\n1 {IMG}\n\n2:{IMG}{IMG}\n{IMG}\n{IMG}",
            "images": [{"url": n, "do_pan_and_scan": True} for n in names]}
    checked = cf.check_request(model, PAS, line, media)
    runs = [cf.run_lengths(i) for i in checked.record["items"]]
    assert runs == [[4] * 4, [4] * 3, [4], [4] * 4, [4], [4] * 3]
    assert [i["feature_shape"][0] for i in checked.record["items"]] == [4, 3, 1, 4, 1, 3]
    text = checked.pre.adapter.decode(checked.record["input_ids"])
    assert text.count("Here is the original image \n\n") == 4 and text.count(" and here are some crops to help you see better ") == 4
    cf.check_legacy_roundtrip(checked)


def test_pan_and_scan_with_text_against_the_expansion(model: Path, media: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``"x" + "Here is..."`` is one word to the pre-tokenizer: where plain prompt text meets the
    expansion's plain lead text ray-mm splices text, as the processor does; HF's ids then go back
    through the legacy scan (the expansion's lead text is matched by its core, between specials)."""
    calls: list[str] = []
    real = pipeline_module.align_by_text
    monkeypatch.setattr(pipeline_module, "align_by_text", lambda *a, **k: calls.append(k.get("request_id", "")) or real(*a, **k))
    line = {"request_id": "pas-x", "prompt": f"x{IMG}y", "images": [{"url": "wide.jpg", "do_pan_and_scan": True}]}
    checked = cf.check_request(model, PAS, line, media)
    assert calls == ["pas-x"]
    cf.check_legacy_ids(checked, checked.hf_ids)  # HF's own ids back (a compact first item is not well defined here)


def test_pan_and_scan_follows_the_processor_not_the_image_processor_config(model: Path, media: Path,
                                                                            tmp_path: Path) -> None:
    """``do_pan_and_scan: true`` in the image processor's saved config: ``Gemma3Processor`` still passes
    its own class default (off) to the image processor on every call, and ray-mm does as it does."""
    d = tmp_path / "model"
    shutil.copytree(model, d)
    path = d / "processor_config.json"
    cfg = json.loads(path.read_text())
    cfg["image_processor"]["do_pan_and_scan"] = True
    path.write_text(json.dumps(cfg))
    assert AutoProcessor.from_pretrained(str(d), local_files_only=True).image_processor.do_pan_and_scan is True
    checked = cf.check_request(d, GEMMA3, {"request_id": "cfg", "prompt": f"A{IMG}B", "images": ["wide.jpg"]}, media)
    assert cf.run_lengths(checked.record["items"][0]) == [4]


def test_token_type_ids_are_the_items_offsets(model: Path, media: Path) -> None:
    """The processor's ``token_type_ids`` (1 on soft tokens) are not in ray-mm's record, but follow
    from it exactly: 1 on every position the items' offsets cover, 0 elsewhere."""
    line = {"request_id": "tti", "prompt": f"a{IMG}\nb{IMG}", "images": [{"url": "wide.jpg", "do_pan_and_scan": True},
                                                                         {"url": "b.png", "do_pan_and_scan": True}]}
    checked = cf.check_request(model, PAS, line, media)
    ref = cf.oracle(model, PAS, line["prompt"], line, media)
    ours = np.zeros(len(checked.record["input_ids"]), dtype=np.int64)
    for item in checked.record["items"]:
        for s, e in item["offsets"]:
            ours[s : e + 1] = 1
    np.testing.assert_array_equal(ours, ref["token_type_ids"][0])
    assert ours.sum() == 16 + 4


# --------------------------------------------------------------------------- tokenization boundaries


def test_newlines_that_merge_take_the_text_splice(merging_dir: Path, media: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With newline-run tokens, ``"Look\\n" + "\\n\\n<start_of_image>"`` tokenizes as ``\\n\\n\\n``:
    ray-mm sees plain text next to an open-ended expansion and splices text, as the processor does."""
    calls: list[str] = []
    real = pipeline_module.align_by_text
    monkeypatch.setattr(pipeline_module, "align_by_text", lambda *a, **k: calls.append(k.get("request_id", "")) or real(*a, **k))
    line = {"request_id": "nl", "prompt": f"Look\n{IMG}\nnow {IMG}x", "images": ["a.jpg", "b.png"]}
    checked = cf.check_request(merging_dir, GEMMA3, line, media)
    tok = checked.pre.adapter.tokenizer
    assert calls == ["nl"] and tok.convert_tokens_to_ids("ĊĊĊ") in checked.hf_ids
    cf.check_legacy_ids(checked, checked.hf_ids)


def test_side_by_side_with_merging_newlines(merging_dir: Path, media: Path) -> None:
    """Two placeholders side by side, each expansion opening and closing with plain "\n\n": under a
    vocabulary with newline runs HF's "\n\n" + "\n\n" is one token, so the fast path must splice text."""
    line = {"request_id": "adj-nl", "prompt": f"<|im_start|>{IMG}{IMG}<|im_end|>", "images": ["a.jpg", "b.png"]}
    checked = cf.check_request(merging_dir, GEMMA3, line, media)
    assert len(checked.record["items"]) == 2 and checked.record["path"] == "fast"


# --------------------------------------------------------------------------- refusals


def test_corrupted_expansions_are_400s_that_say_what_was_expected(mixed: cf.Checked) -> None:
    cf.check_corruptions(mixed, ("short_run", "text"))
    # The first image's <end_of_image> missing altogether.
    ids = list(mixed.hf_ids)
    (s, e) = mixed.record["items"][0]["offsets"][0]
    del ids[e + 1]
    cf.assert_alignment_error(cf.run_ids(mixed, "no-eoi", ids), "expected")


def test_count_mismatches_both_ways_are_400s(mixed: cf.Checked) -> None:
    messages = cf.check_count_mismatches(mixed, (mixed.line["prompt"] + IMG, f"A{IMG}\nB{IMG}."))
    assert len(messages) == 4  # each prompt, one placeholder too many as ids, one item too few


# --------------------------------------------------------------------------- encoder


def test_encoder_gives_one_row_per_soft_token(model: Path, media: Path) -> None:
    line = {"request_id": "enc", "prompt": f"{IMG} and {IMG}", "images": [{"url": "wide.jpg", "do_pan_and_scan": True}, "b.png"]}
    checked = cf.check_request(model, PAS, line, media)
    encoded = cf.check_encoder_rows(checked.pre, checked.line)
    # The model's own image path over the whole request's pixel_values, same weights.
    rows = cf.check_whole_request_rows(encoded, cf.pack(encoded.outcome.item_features, ["pixel_values"]))
    assert rows == sum(i["num_tokens"] for i in encoded.outcome.record["items"])


def test_client_options_other_than_switches_are_refused(model: Path, media: Path) -> None:
    """A number or size per item could make a processor tile or upscale without bound: the generic adapter
    passes only on/off switches on, and refuses the rest with a 400 naming the item."""
    from ray_mm.pipeline import Preprocessor

    pre = Preprocessor(model, cf.config_for(media))
    line = {"request_id": "opt", "prompt": f"Look {IMG}", "images": [{"url": str(media / "a.jpg"), "size": {"height": 4096}}]}
    rec = pre.run(line).record
    assert not rec["ok"] and rec["error"]["status"] == 400 and rec["error"]["type"] == "RequestError"
    assert "image 0 of request opt" in rec["error"]["message"] and "'size'" in rec["error"]["message"]
