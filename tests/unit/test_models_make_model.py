"""make_model: tiny offline model directories that Auto* classes load with the hub switched off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ray_mm.models.make_model import SPECIAL_TOKENS, make_model

VL_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
AUDIO_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|audio_eos|>", "<|AUDIO|>"]


def test_hub_is_offline_in_tests() -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_qwen2_vl_dir_loads_with_auto_classes(qwen2_vl_dir: Path) -> None:
    from transformers import AutoConfig, AutoProcessor, AutoTokenizer

    processor = AutoProcessor.from_pretrained(qwen2_vl_dir)
    config = AutoConfig.from_pretrained(qwen2_vl_dir)
    tokenizer = AutoTokenizer.from_pretrained(qwen2_vl_dir)
    assert type(processor).__name__ == "Qwen2VLProcessor"
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessor"  # the torchvision ("fast") backend
    assert type(processor.video_processor).__name__ == "Qwen2VLVideoProcessor"
    assert config.model_type == "qwen2_vl"
    assert 1000 <= len(tokenizer) <= 2000
    assert config.text_config.vocab_size == len(tokenizer)
    # Config token ids agree with the tokenizer.
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert config.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    # Tiny vision tower.
    assert config.vision_config.depth <= 2 and config.vision_config.embed_dim <= 64
    assert config.vision_config.hidden_size == config.text_config.hidden_size
    ip = processor.image_processor
    assert (ip.patch_size, ip.merge_size, ip.temporal_patch_size) == (14, 2, 2)
    assert ip.size["longest_edge"] < 1920 * 1080
    assert json.loads((qwen2_vl_dir / "ray_mm_model.json").read_text()) == {"family": "qwen2_vl"}


def test_qwen2_audio_dir_loads_with_auto_classes(qwen2_audio_dir: Path) -> None:
    from transformers import AutoConfig, AutoProcessor

    processor = AutoProcessor.from_pretrained(qwen2_audio_dir)
    config = AutoConfig.from_pretrained(qwen2_audio_dir)
    assert type(processor).__name__ == "Qwen2AudioProcessor"
    fe = processor.feature_extractor
    assert type(fe).__name__ == "WhisperFeatureExtractor"
    assert (fe.feature_size, fe.sampling_rate, fe.chunk_length) == (128, 16000, 30)
    assert config.model_type == "qwen2_audio"
    assert config.audio_token_id == processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    assert config.audio_config.num_mel_bins == 128
    assert config.audio_config.encoder_layers <= 2 and config.audio_config.d_model <= 64
    assert json.loads((qwen2_audio_dir / "ray_mm_model.json").read_text()) == {"family": "qwen2_audio"}


@pytest.mark.parametrize(("fixture", "specials"), [("qwen2_vl_dir", VL_SPECIALS), ("qwen2_audio_dir", AUDIO_SPECIALS)])
def test_special_tokens_are_single_special_tokens(fixture: str, specials: list[str], request: pytest.FixtureRequest) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(request.getfixturevalue(fixture))
    assert SPECIAL_TOKENS[fixture.removesuffix("_dir")] == specials
    for tok in specials:
        tid = tokenizer.convert_tokens_to_ids(tok)
        assert isinstance(tid, int) and tid != tokenizer.unk_token_id
        assert tok in tokenizer.all_special_tokens
        # Glued to text on both sides, a special token stays one token.
        ids = tokenizer(f"word{tok}word")["input_ids"]
        assert ids.count(tid) == 1, (tok, tokenizer.convert_ids_to_tokens(ids))
        assert tokenizer.decode([tid]) == tok
    # Ordinary text round-trips through the byte-level BPE.
    text = "The quick brown fox, 1080p! Ünïcödé ok?"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_qwen2_vl_chat_template_renders_placeholders(qwen2_vl_dir: Path) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(qwen2_vl_dir)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "text", "text": "and"},
                {"type": "video"},
                {"type": "text", "text": "What is this?"},
            ],
        }
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>and"
        "<|vision_start|><|video_pad|><|vision_end|>What is this?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_qwen2_audio_chat_template_renders_placeholders(qwen2_audio_dir: Path) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(qwen2_audio_dir)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "audio"}, {"type": "audio"}, {"type": "text", "text": "Same?"}]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
        "Audio 2: <|audio_bos|><|AUDIO|><|audio_eos|>\nSame?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_make_model_is_deterministic_and_fast(tmp_path: Path, qwen2_vl_dir: Path) -> None:
    t0 = time.perf_counter()
    out = make_model(tmp_path / "again", "qwen2_vl")
    elapsed = time.perf_counter() - t0
    assert elapsed < 5.0  # transformers is already imported; training itself takes well under 1 s
    for name in ("tokenizer.json", "config.json", "processor_config.json"):
        assert (out / name).read_bytes() == (qwen2_vl_dir / name).read_bytes(), name


def test_make_model_rejects_unknown_family(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown family"):
        make_model(tmp_path, "no_such_family")  # type: ignore[arg-type]


def test_make_model_loads_in_a_fresh_offline_process(qwen2_audio_dir: Path, tmp_path: Path) -> None:
    """A separate interpreter with the hub off loads the directory (no cached state from this process)."""
    code = (
        "import sys\n"
        "from transformers import AutoProcessor, AutoConfig\n"
        "p = AutoProcessor.from_pretrained(sys.argv[1]); c = AutoConfig.from_pretrained(sys.argv[1])\n"
        "print(type(p).__name__, c.model_type)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    res = subprocess.run([sys.executable, "-c", code, str(qwen2_audio_dir)], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["Qwen2AudioProcessor", "qwen2_audio"]


# --- Qwen2.5-VL, Qwen3-VL, MiniCPM-V 4.6: the families of issue 10 --------------------------------

NEW_FAMILIES = ("qwen2_5_vl", "qwen3_vl", "minicpmv4_6")
NEW_CLASSES = {
    # family: (processor, image processor, video processor, vision patch size)
    "qwen2_5_vl": ("Qwen2_5_VLProcessor", "Qwen2VLImageProcessor", "Qwen2VLVideoProcessor", 14),
    "qwen3_vl": ("Qwen3VLProcessor", "Qwen2VLImageProcessor", "Qwen3VLVideoProcessor", 16),
    "minicpmv4_6": ("MiniCPMV4_6Processor", "MiniCPMV4_6ImageProcessor", "MiniCPMV4_6VideoProcessor", 14),
}
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
QWEN_VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
COMPACT = {  # family: (image placeholder, video placeholder) the chat template renders
    "qwen2_5_vl": (QWEN_IMAGE, QWEN_VIDEO),
    "qwen3_vl": (QWEN_IMAGE, QWEN_VIDEO),
    "minicpmv4_6": ("<|image_pad|>", "<|video_pad|>"),
}
MINICPM_NAMED = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "image_start_token": "<image>",
    "image_end_token": "</image>",
    "slice_start_token": "<slice>",
    "slice_end_token": "</slice>",
    "image_id_start_token": "<image_id>",
    "image_id_end_token": "</image_id>",
}
# Four frames the caller already sampled from a 4 s, 30 fps clip (source frames 0, 30, 60, 90).
VIDEO_METADATA = {"fps": 30.0, "total_num_frames": 120, "frames_indices": [0, 30, 60, 90], "duration": 4.0}


@pytest.fixture(scope="module")
def family_dir(tmp_path_factory: pytest.TempPathFactory):
    """``family_dir(name)``: the tiny directory of a new family, built once per module."""
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = make_model(tmp_path_factory.mktemp(f"{family}_model"), family)  # type: ignore[arg-type]
        return built[family]

    return get


def _rgb(height: int, width: int, seed: int = 0):
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _frames():
    import numpy as np

    return np.random.default_rng(1).integers(0, 256, (4, 180, 320, 3), dtype=np.uint8)  # (T, H, W, 3)


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_new_family_dir_loads_offline(family: str, family_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig, AutoProcessor

    path = family_dir(family)
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    tokenizer = processor.tokenizer
    proc_cls, image_cls, video_cls, patch = NEW_CLASSES[family]
    assert type(processor).__name__ == proc_cls
    assert type(processor.image_processor).__name__ == image_cls
    assert type(processor.video_processor).__name__ == video_cls
    assert config.model_type == family
    assert config.architectures and config.architectures[0].endswith("ForConditionalGeneration")
    assert 1000 <= len(tokenizer) <= 2000
    assert config.text_config.vocab_size == len(tokenizer)
    tid = tokenizer.convert_tokens_to_ids
    assert config.image_token_id == tid(processor.image_token) == processor.image_token_id
    assert config.video_token_id == tid(processor.video_token) == processor.video_token_id
    vision = config.vision_config
    assert vision.patch_size == patch == processor.image_processor.patch_size == processor.video_processor.patch_size
    assert vision.hidden_size <= 64 and config.text_config.hidden_size <= 64
    if family == "minicpmv4_6":
        assert vision.num_hidden_layers <= 2 and config.insert_layer_id < vision.num_hidden_layers
        assert processor.image_processor.scale_resolution <= 256
    else:
        assert vision.depth <= 2 and vision.out_hidden_size == config.text_config.hidden_size
        assert config.vision_start_token_id == tid("<|vision_start|>")
        assert config.vision_end_token_id == tid("<|vision_end|>")
        assert processor.image_processor.size["longest_edge"] <= 256 * (2 * patch) ** 2  # a few hundred tokens
    assert json.loads((path / "ray_mm_model.json").read_text()) == {"family": family}


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_new_family_special_tokens_are_single_special_tokens(family: str, family_dir) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(family_dir(family), local_files_only=True)
    specials = SPECIAL_TOKENS[family]
    assert set(VL_SPECIALS[:3]) <= set(specials)
    for tok in specials:
        tid = tokenizer.convert_tokens_to_ids(tok)
        assert isinstance(tid, int) and tok in tokenizer.all_special_tokens
        ids = tokenizer(f"word{tok}word")["input_ids"]
        assert ids.count(tid) == 1, (tok, tokenizer.convert_ids_to_tokens(ids))
        assert tokenizer.decode([tid]) == tok
    if family == "minicpmv4_6":
        # The processor reads these attributes from the tokenizer.
        for attr, tok in MINICPM_NAMED.items():
            assert getattr(tokenizer, attr) == tok and getattr(tokenizer, attr + "_id") == tokenizer.convert_tokens_to_ids(tok)
        assert tokenizer.unk_token == "<unk>"
    else:
        assert specials == VL_SPECIALS


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_new_family_chat_template_renders_compact_placeholders(family: str, family_dir) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(family_dir(family), local_files_only=True)
    image, video = COMPACT[family]
    one_image = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    assert processor.apply_chat_template(one_image, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{image}What is this?<|im_end|>\n<|im_start|>assistant\n"
    )
    # OpenAI-style parts: image_url / video_url, mixed with text, in prompt order.
    parts = [
        {"type": "image_url", "image_url": {"url": "http://x/a.jpg"}},
        {"type": "text", "text": "and"},
        {"type": "video_url", "video_url": {"url": "http://x/b.mp4"}},
        {"type": "video", "video": "b.mp4"},
        {"type": "text", "text": "?"},
    ]
    text = processor.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": parts}], tokenize=False)
    assert text == f"<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n{image}and{video}{video}?<|im_end|>\n"


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_new_family_processor_expands_image_and_video(family: str, family_dir) -> None:
    """``__call__`` on text + one image + one pre-sampled video (with its metadata, no re-sampling)."""
    import numpy as np
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(family_dir(family), local_files_only=True)
    tok = processor.tokenizer
    tid = tok.convert_tokens_to_ids
    image, video = COMPACT[family]
    images = [_rgb(400, 600)] + ([_rgb(200, 200, seed=2)] if family == "minicpmv4_6" else [])
    prompt = "Look:" + image + "and" + "".join(image for _ in images[1:]) + video + "?"
    out = processor(
        text=prompt,
        images=images,
        videos=[_frames()],
        do_sample_frames=False,
        video_metadata=[VIDEO_METADATA],
        return_tensors="np",
    )
    ids = out["input_ids"][0].tolist()
    text = tok.decode(ids)
    n_image, n_video = ids.count(processor.image_token_id), ids.count(processor.video_token_id)
    if family == "minicpmv4_6":
        ts, ts_v = out["target_sizes"], out["target_sizes_videos"]
        assert out["pixel_values"].shape == (1, 3, 14, int(ts.prod(-1).sum()) * 14)
        assert out["pixel_values_videos"].shape == (1, 3, 14, int(ts_v.prod(-1).sum()) * 14)
        assert n_image == int((ts.prod(-1) // 16).sum()) and n_video == int((ts_v.prod(-1) // 16).sum())
        # 600x400 -> overview + 2x3 slices; 200x200 -> overview only; each 320x180 frame -> overview + 1x2.
        assert len(ts) == 1 + 6 + 1 and len(ts_v) == 4 * (1 + 2)
        assert ids.count(tid("<slice>")) == 6 + 4 * 2 and ids.count(tid("<image>")) == 2 + 4
        # Per-request image ids; videos count from 0 again.
        assert "<image_id>0</image_id><image><|image_pad|>" in text
        assert "<image_id>1</image_id><image><|image_pad|>" in text
        assert "<image_id>0</image_id><image><|video_pad|>" in text
        assert text.count("</slice>\n<slice>") == 1  # two rows of slices for the first image
        return
    grid, grid_v = out["image_grid_thw"], out["video_grid_thw"]
    patch = NEW_CLASSES[family][3]
    assert out["pixel_values"].shape == (int(grid.prod()), 3 * 2 * patch * patch)
    assert out["pixel_values_videos"].shape == (int(grid_v.prod()), 3 * 2 * patch * patch)
    assert grid_v.tolist() == [[2, 12, 20]]  # the 4 frames kept (no re-sampling): 2 temporal groups of 60 tokens
    assert n_image == int(grid.prod()) // 4 <= 300 and n_video == int(grid_v.prod()) // 4
    assert n_video // int(grid_v[0, 0]) <= 64  # per frame pair
    if family == "qwen2_5_vl":
        # temporal_patch_size / sampled fps, sampled fps = 4 frames / 120 * 30 fps = 1.
        np.testing.assert_allclose(out["second_per_grid_ts"], [2.0])
        assert ids.count(tid("<|vision_start|>")) == 2
    else:
        # One "<t seconds><|vision_start|> n pads <|vision_end|>" per temporal group, t = mean source time.
        assert "<|vision_start|><0.5 seconds><|vision_start|><|video_pad|>" in text
        assert "<|vision_end|><2.5 seconds><|vision_start|><|video_pad|>" in text
        assert ids.count(tid("<|vision_start|>")) == 2 + 2


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_new_family_reloads_identically(family: str, family_dir, tmp_path: Path) -> None:
    """Loading and saving again gives the same files; building again gives the same bytes."""
    from transformers import AutoProcessor

    path = family_dir(family)
    AutoProcessor.from_pretrained(path, local_files_only=True).save_pretrained(tmp_path / "resaved")
    for name in ("processor_config.json", "tokenizer.json", "chat_template.jinja"):
        assert (tmp_path / "resaved" / name).read_bytes() == (path / name).read_bytes(), name
    again = make_model(tmp_path / "again", family)  # type: ignore[arg-type]
    for name in sorted(p.name for p in path.iterdir()):
        assert (again / name).read_bytes() == (path / name).read_bytes(), name


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_new_family_tiny_model_runs_on_processor_output(family: str, family_dir) -> None:
    """Random-init model from config.json consumes the processor's output: token ids and feature counts agree."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    path = family_dir(family)
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    image, video = COMPACT[family]
    inputs = processor(
        text=f"{image} and {video}",
        images=[_rgb(400, 600)],
        videos=[_frames()],
        do_sample_frames=False,
        video_metadata=[VIDEO_METADATA],
        return_tensors="pt",
    )
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(path, local_files_only=True)).eval()
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape
