"""Qwen2-VL adapter: item-by-item processing equals the HF processor run on the whole request.

Every expected value comes from ``AutoProcessor(...)(text=..., images=..., videos=...)``
or the tokenizer / HF model code, never from the adapter under test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ray_mm.models import Qwen2VLAdapter, load_adapter
from tests.unit.media_factory import noisy_rgb, noisy_video

IMAGE_SIZES = [(20, 30), (333, 517), (1920, 1080), (64, 48)]  # (width, height)


def _image(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(noisy_rgb(width, height, seed), "RGB")


_video = noisy_video


def _expand(ids: list[int], token_ids: dict[str, int], counts: dict[str, list[int]]) -> list[int]:
    """Expand each single placeholder id into its item's token count, items in order per modality."""
    by_id = {tid: m for m, tid in token_ids.items()}
    nxt = {m: iter(c) for m, c in counts.items()}
    out: list[int] = []
    for i in ids:
        m = by_id.get(i)
        out.extend([i] * next(nxt[m]) if m is not None else [i])
    return out


@pytest.fixture(scope="module")
def adapter(qwen2_vl_dir: Path) -> Qwen2VLAdapter:
    a = load_adapter(qwen2_vl_dir)
    assert isinstance(a, Qwen2VLAdapter)
    return a


@pytest.fixture(scope="module")
def hf(qwen2_vl_dir: Path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(qwen2_vl_dir)


def test_placeholders_come_from_the_tokenizer(adapter: Qwen2VLAdapter, hf) -> None:
    tok = hf.tokenizer
    assert adapter.placeholder_token_ids == {
        "image": tok.convert_tokens_to_ids("<|image_pad|>"),
        "video": tok.convert_tokens_to_ids("<|video_pad|>"),
    }
    assert adapter.placeholder_token_ids == {"image": hf.image_token_id, "video": hf.video_token_id}
    assert adapter.placeholder_texts == {
        "image": "<|vision_start|><|image_pad|><|vision_end|>",
        "video": "<|vision_start|><|video_pad|><|vision_end|>",
    }
    assert adapter.vocab_size == len(tok)
    assert adapter.modalities == frozenset({"image", "video"})
    assert adapter.input_modalities == frozenset({"image", "video"})


def test_tokenize_matches_processor_text_only(adapter: Qwen2VLAdapter, hf) -> None:
    text = "<|im_start|>user\nHello there, describe the scene.<|im_end|>\n"
    assert adapter.tokenize(text) == hf(text=[text], return_tensors="np")["input_ids"][0].tolist()


def test_images_one_by_one_equal_processor_on_whole_request(adapter: Qwen2VLAdapter, hf) -> None:
    images = [_image(w, h, seed=i) for i, (w, h) in enumerate(IMAGE_SIZES)]
    ph = adapter.placeholder_texts["image"]
    prompt = "<|im_start|>user\n" + " and ".join(f"Picture {i}: {ph}" for i in range(len(images))) + " Compare."
    ref = hf(text=[prompt], images=images, return_tensors="np")

    items = [adapter.process("image", img, {}) for img in images]
    assert all(len(x) == 1 for x in items)
    items = [x[0] for x in items]

    offset = 0
    for i, item in enumerate(items):
        assert item.modality == "image" and item.primary == "pixel_values"
        grid = ref["image_grid_thw"][i]
        assert item.grid_thw == grid.tolist()
        np.testing.assert_array_equal(item.features["image_grid_thw"], grid[None])
        n_patches = int(np.prod(grid))
        pv = item.features["pixel_values"]
        assert pv.dtype == np.float32 and pv.shape == (n_patches, ref["pixel_values"].shape[1])
        np.testing.assert_allclose(pv, ref["pixel_values"][offset : offset + n_patches], atol=1e-5, rtol=0)
        offset += n_patches
        assert item.num_tokens == n_patches // hf.image_processor.merge_size**2
    assert offset == ref["pixel_values"].shape[0]

    input_ids = ref["input_ids"][0].tolist()
    assert sum(it.num_tokens for it in items) == input_ids.count(hf.image_token_id)
    # The large image was shrunk by max_pixels; the tiny one grown to min_pixels.
    assert items[2].grid_thw[1] * items[2].grid_thw[2] * 14 * 14 <= hf.image_processor.size["longest_edge"]
    assert items[0].grid_thw[1] * items[0].grid_thw[2] * 14 * 14 >= hf.image_processor.size["shortest_edge"]
    # Tokenize with one placeholder per item, expand: exactly the processor's input_ids.
    expanded = _expand(adapter.tokenize(prompt), adapter.placeholder_token_ids, {"image": [i.num_tokens for i in items]})
    assert expanded == input_ids


def test_video_frames_equal_processor_videos(adapter: Qwen2VLAdapter, hf) -> None:
    video = _video(8)
    prompt = f"What happens? {adapter.placeholder_texts['video']} Tell me."
    ref = hf(text=[prompt], videos=[video], return_tensors="np")
    (item,) = adapter.process("video", video, {})
    assert item.modality == "video" and item.primary == "pixel_values_videos"
    assert item.grid_thw == ref["video_grid_thw"][0].tolist()
    assert item.grid_thw[0] == 4  # 8 frames / temporal_patch_size 2
    np.testing.assert_allclose(item.features["pixel_values_videos"], ref["pixel_values_videos"], atol=1e-5, rtol=0)
    assert item.num_tokens == ref["input_ids"][0].tolist().count(hf.video_token_id)
    expanded = _expand(adapter.tokenize(prompt), adapter.placeholder_token_ids, {"video": [item.num_tokens]})
    assert expanded == ref["input_ids"][0].tolist()


def test_mixed_request_in_prompt_order(adapter: Qwen2VLAdapter, hf) -> None:
    images = [_image(333, 517, 1), _image(200, 120, 2)]
    videos = [_video(4, 120, 160, seed=3), _video(6, 90, 200, seed=4)]
    ph = adapter.placeholder_texts
    prompt = f"A {ph['video']} B {ph['image']} C {ph['video']} D {ph['image']} E"
    ref = hf(text=[prompt], images=images, videos=videos, return_tensors="np")
    img_items = [adapter.process("image", im)[0] for im in images]
    vid_items = [adapter.process("video", v)[0] for v in videos]
    np.testing.assert_allclose(
        np.concatenate([i.features["pixel_values"] for i in img_items]), ref["pixel_values"], atol=1e-5, rtol=0
    )
    np.testing.assert_allclose(
        np.concatenate([v.features["pixel_values_videos"] for v in vid_items]),
        ref["pixel_values_videos"],
        atol=1e-5,
        rtol=0,
    )
    assert [v.grid_thw for v in vid_items] == ref["video_grid_thw"].tolist()
    counts = {"image": [i.num_tokens for i in img_items], "video": [v.num_tokens for v in vid_items]}
    assert _expand(adapter.tokenize(prompt), adapter.placeholder_token_ids, counts) == ref["input_ids"][0].tolist()


def test_per_item_pixel_options_match_processor_kwargs(adapter: Qwen2VLAdapter, hf) -> None:
    img = _image(1920, 1080, 5)
    opts = {"min_pixels": 8 * 28 * 28, "max_pixels": 32 * 28 * 28, "fps": 2.0}  # fps: media-layer key, ignored
    ref = hf(
        text=[adapter.placeholder_texts["image"]],
        images=[img],
        size={"shortest_edge": opts["min_pixels"], "longest_edge": opts["max_pixels"]},
        return_tensors="np",
    )
    (item,) = adapter.process("image", img, opts)
    assert item.grid_thw == ref["image_grid_thw"][0].tolist()
    np.testing.assert_allclose(item.features["pixel_values"], ref["pixel_values"], atol=1e-5, rtol=0)
    assert item.num_tokens == ref["input_ids"][0].tolist().count(hf.image_token_id)
    default = adapter.process("image", img)[0]
    assert default.num_tokens > item.num_tokens  # the options really applied, and did not stick
    assert adapter.process("image", img)[0].grid_thw == default.grid_thw


def test_chat_template_matches_processor(adapter: Qwen2VLAdapter, hf) -> None:
    openai = [
        {"role": "system", "content": "You are terse."},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                {"type": "text", "text": "versus"},
                {"type": "video_url", "video_url": {"url": "https://example.com/v.mp4"}},
            ],
        },
    ]
    plain = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "versus"}, {"type": "video"}]},
    ]
    expected = hf.apply_chat_template(plain, tokenize=False, add_generation_prompt=True)
    assert adapter.apply_chat_template(openai) == expected
    assert "https://" not in expected


def test_rejects_other_modalities_and_bad_frames(adapter: Qwen2VLAdapter) -> None:
    with pytest.raises(ValueError, match="audio"):
        adapter.process("audio", np.zeros(16000, np.float32))
    with pytest.raises(ValueError, match="T, H, W, 3"):
        adapter.process("video", np.zeros((4, 32, 32), np.uint8))


def test_encoder_gives_num_tokens_rows_and_matches_hf_model(adapter: Qwen2VLAdapter, hf) -> None:
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel

    torch.manual_seed(0)
    encoder = adapter.build_encoder()
    assert type(encoder).__name__ == "Qwen2VisionTransformerPretrainedModel"
    assert sum(p.numel() for p in encoder.parameters()) < 1_000_000

    images = [_image(333, 517, 11), _image(20, 30, 12)]
    video = _video(4, 100, 140, seed=13)
    img_items = [adapter.process("image", im)[0] for im in images]
    (vid_item,) = adapter.process("video", video)
    for item in [*img_items, vid_item]:
        emb = adapter.encode(encoder, {k: torch.from_numpy(v) for k, v in item.features.items()})
        assert emb.shape == (item.num_tokens, adapter.config.vision_config.hidden_size)
        assert torch.isfinite(emb).all()

    # Reference: the HF model's get_image_features on the processor's batched output, same vision weights.
    model = Qwen2VLModel(adapter.config).eval()
    model.visual.load_state_dict(encoder.state_dict())
    ph = adapter.placeholder_texts["image"]
    ref = hf(text=[ph + ph], images=images, return_tensors="pt")
    with torch.inference_mode():
        expected = model.get_image_features(ref["pixel_values"], ref["image_grid_thw"]).pooler_output
    for item, exp in zip(img_items, expected, strict=True):
        got = adapter.encode(encoder, {k: torch.from_numpy(v) for k, v in item.features.items()})
        torch.testing.assert_close(got, exp, atol=1e-4, rtol=1e-4)
