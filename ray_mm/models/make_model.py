"""Build a tiny, fully offline Hugging Face model directory for tests and demos.

``make_model(out_dir, family)`` writes everything ``AutoProcessor``,
``AutoTokenizer`` and ``AutoConfig`` need, with no network access, from one
table of per-family facts (:data:`ray_mm.models.families.FAMILY_SPECS`):

- a byte-level BPE tokenizer trained with ``tokenizers`` on the built-in corpus
  (:mod:`ray_mm.models.corpus`), with the same normalizer / pre-tokenizer /
  decoder as Qwen2's tokenizer, and the family's special tokens as real special
  tokens (plus the named token attributes a processor reads, e.g. MiniCPM-V's
  ``tokenizer.image_token``);
- a Qwen-style chat template rendering OpenAI-ish content parts into the
  family's compact placeholder text;
- the family's real in-tree processor (``save_pretrained``: image / video
  processor settings nested in ``processor_config.json``) with small pixel
  budgets, or the Whisper feature extractor for Qwen2-Audio;
- ``config.json`` with a tiny vision tower / audio encoder and a tiny text model,
  so building the encoder from config with random init takes milliseconds;
- ``ray_mm_model.json`` with ``{"family": ...}``.

No weights are written: encoders are built from config with random init.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from ray_mm.models.corpus import corpus_lines
from ray_mm.models.families import (
    FAMILY_SPECS,
    IMAGE_MAX_PIXELS,
    IMAGE_MIN_PIXELS,
    VIDEO_MAX_PIXELS,
    VIDEO_MIN_PIXELS,
    FamilySpec,
    MediaPart,
)

Family = Literal["qwen2_vl", "qwen2_audio", "qwen2_5_vl", "qwen3_vl", "minicpmv4_6"]
FAMILIES: tuple[str, ...] = tuple(FAMILY_SPECS)

MODEL_MARKER = "ray_mm_model.json"

# Same split regex as transformers' Qwen2Tokenizer, so the saved vocab/merges
# tokenize identically once Qwen2Tokenizer rebuilds its backend from them.
_QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

VOCAB_TARGET = 1536

SPECIAL_TOKENS: dict[str, list[str]] = {name: list(spec.special_tokens) for name, spec in FAMILY_SPECS.items()}

__all__ = [
    "FAMILIES",
    "FAMILY_SPECS",
    "IMAGE_MAX_PIXELS",
    "IMAGE_MIN_PIXELS",
    "MODEL_MARKER",
    "SPECIAL_TOKENS",
    "VIDEO_MAX_PIXELS",
    "VIDEO_MIN_PIXELS",
    "Family",
    "chat_template",
    "make_model",
]


def _media_part_jinja(part: MediaPart, keyword: str) -> str:
    """One ``if``/``elif`` arm of the content loop: matches ``{"type": m}``, ``{m: ...}`` or ``{m + "_url": ...}``."""
    m, counter = part.modality, f"{part.modality}_count"
    label = ""
    if part.label is not None:
        label = f"{part.label} {{{{ {counter}.value }}}}: "
        if not part.label_always:
            label = "{% if add_vision_id %}" + label + "{% endif %}"
    return (
        f"{{% {keyword} content['type'] == '{m}' or '{m}' in content or '{m}_url' in content %}}"
        f"{{% set {counter}.value = {counter}.value + 1 %}}" + label + part.placeholder + part.suffix
    )


def chat_template(spec: FamilySpec) -> str:
    """The family's Qwen-style chat template; each media content part renders to its compact placeholder."""
    counters = "".join(f"{{% set {p.modality}_count = namespace(value=0) %}}" for p in spec.media_parts)
    media_parts = "".join(_media_part_jinja(p, "elif" if i else "if") for i, p in enumerate(spec.media_parts))
    return (
        counters
        + "{% for message in messages %}"
        "{% if loop.first and message['role'] != 'system' %}"
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "{% endif %}"
        "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}"
        "{{ message['content'] }}<|im_end|>\n"
        "{% else %}"
        "{% for content in message['content'] %}"
        + media_parts
        + "{% elif 'text' in content %}"
        "{{ content['text'] }}"
        "{% endif %}"
        "{% endfor %}"
        "<|im_end|>\n"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}"
        "<|im_start|>assistant\n"
        "{% endif %}"
    )


def _train_tokenizer(spec: FamilySpec):
    """Train a Qwen2-compatible byte-level BPE and wrap it in transformers' Qwen2Tokenizer."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    specials = list(spec.special_tokens)
    tok = Tokenizer(
        models.BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False, byte_fallback=False)
    )
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TARGET,
        min_frequency=1,
        show_progress=False,
        special_tokens=[AddedToken(s, special=True, normalized=False) for s in specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus_lines(), trainer)
    model = json.loads(tok.to_str())["model"]
    vocab: dict[str, int] = model["vocab"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]

    eos, pad = "<|im_end|>", "<|endoftext|>"
    named = dict(spec.named_tokens)  # e.g. image_token=<|image_pad|>: saved by name, read by the processor
    taken = {eos, pad, spec.unk_token, *named.values()}
    extra = [s for s in specials if s not in taken]
    hf_tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=spec.unk_token,
        eos_token=eos,
        pad_token=pad,
        extra_special_tokens=extra,
        model_max_length=32768,
        **named,
    )
    # Special tokens keep the ids the trainer gave them (0..len(specials)-1).
    ids = hf_tok.convert_tokens_to_ids(specials)
    if ids != list(range(len(specials))):  # pragma: no cover - a tokenizers/transformers behaviour change
        raise RuntimeError(f"special token ids moved: {dict(zip(specials, ids))}")
    return hf_tok


def make_model(out_dir: str | Path, family: Family = "qwen2_vl") -> Path:
    """Write a tiny offline model directory for ``family`` into ``out_dir`` and return its path.

    The directory loads with ``AutoProcessor`` / ``AutoTokenizer`` / ``AutoConfig``
    under ``HF_HUB_OFFLINE=1``. Existing files of the same names are overwritten.
    """
    spec = FAMILY_SPECS.get(family)
    if spec is None:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(spec)
    spec.build_processor(tokenizer, chat_template(spec)).save_pretrained(out)
    spec.build_config(tokenizer).save_pretrained(out)
    (out / MODEL_MARKER).write_text(json.dumps({"family": family}, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m ray_mm.models.make_model DIR [--family F]`` (the CLI's ``make-model`` does the same)."""
    import argparse

    parser = argparse.ArgumentParser(prog="make-model", description=__doc__.splitlines()[0])
    parser.add_argument("dir")
    parser.add_argument("--family", default="qwen2_vl", choices=FAMILIES)
    args = parser.parse_args(argv)
    path = make_model(args.dir, args.family)
    print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
