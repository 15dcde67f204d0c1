"""Request parsing: the three JSONL request forms of DESIGN.md into a ``ParsedRequest``.

Forms: ``prompt`` + media lists; ``input_ids`` (+ ``skip_tokenizer_init``) +
media lists; OpenAI chat ``messages`` whose content parts carry the media.
Schema problems raise :class:`RequestError` (400) naming the request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import RequestError
from ..types import MODALITIES, MediaSpec, ParsedRequest

_LIST_KEYS = {"image": "images", "video": "videos", "audio": "audios"}
_KNOWN_KEYS = {"request_id", "prompt", "input_ids", "skip_tokenizer_init", "messages", *_LIST_KEYS.values()}
_PART_MODALITY = {"image_url": "image", "video_url": "video", "audio_url": "audio", "input_audio": "audio"}


def request_id_of(line: Any, fallback: str) -> str:
    """The request's id if it has a usable one, else ``fallback`` (for error records)."""
    if isinstance(line, dict):
        rid = line.get("request_id")
        if isinstance(rid, (str, int)) and not isinstance(rid, bool) and str(rid):
            return str(rid)
    return fallback


def _media_spec(entry: Any, modality: str, index: int, rid: str) -> MediaSpec:
    if isinstance(entry, dict) and "format" in entry and entry.get("format") in (
        "processor_output",
        "precomputed_embedding",
    ):
        return MediaSpec(modality, index, entry, {}, rid)  # type: ignore[arg-type]
    if isinstance(entry, dict):
        if "url" not in entry:
            raise RequestError(f"{modality} {index} of request {rid}: a media object needs a 'url'")
        options = {k: v for k, v in entry.items() if k != "url"}
        return MediaSpec(modality, index, entry["url"], options, rid)  # type: ignore[arg-type]
    if entry is None:
        raise RequestError(f"{modality} {index} of request {rid}: media entry is null")
    return MediaSpec(modality, index, entry, {}, rid)  # type: ignore[arg-type]


def _messages_to_prompt(
    messages: Any, rid: str, media: dict[str, list[Any]], render: Callable[[list[dict[str, Any]]], str]
) -> str:
    if not isinstance(messages, list) or not messages:
        raise RequestError(f"request {rid}: 'messages' must be a non-empty list")
    normalized: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise RequestError(f"request {rid}: message {i} must be an object with a string 'role'")
        content = msg.get("content")
        if isinstance(content, str):
            normalized.append({"role": msg["role"], "content": [{"type": "text", "text": content}]})
            continue
        if not isinstance(content, list):
            raise RequestError(f"request {rid}: message {i} content must be a string or a list of parts")
        parts: list[dict[str, Any]] = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise RequestError(f"request {rid}: message {i} part {j} must be an object with a 'type'")
            kind = part["type"]
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise RequestError(f"request {rid}: message {i} part {j} text must be a string")
                parts.append({"type": "text", "text": part["text"]})
            elif kind in _PART_MODALITY:
                modality = _PART_MODALITY[kind]
                media[modality].append(_part_source(part, kind, rid, i, j))
                parts.append({"type": modality})
            else:
                raise RequestError(f"request {rid}: message {i} part {j} has unsupported type {kind!r}")
        normalized.append({"role": msg["role"], "content": parts})
    return render(normalized)


def _part_source(part: dict[str, Any], kind: str, rid: str, i: int, j: int) -> Any:
    payload = part.get(kind)
    if kind == "input_audio":
        if not isinstance(payload, dict) or not isinstance(payload.get("data"), str):
            raise RequestError(f"request {rid}: message {i} part {j} input_audio needs 'data' (base64)")
        fmt = str(payload.get("format", "wav"))
        return f"data:audio/{fmt};base64,{payload['data']}"
    if isinstance(payload, str):
        return payload
    if isinstance(payload, dict) and "url" in payload:
        return {k: v for k, v in payload.items() if k != "detail"}
    raise RequestError(f"request {rid}: message {i} part {j} {kind} needs a 'url'")


def parse_request(
    line: Any,
    *,
    fallback_id: str = "?",
    render_chat: Callable[[list[dict[str, Any]]], str] | None = None,
    vocab_size: int | None = None,
) -> ParsedRequest:
    """Validate one request object. ``render_chat`` applies the model's chat template."""
    if not isinstance(line, dict):
        raise RequestError(f"request {fallback_id}: a request must be a JSON object")
    if not request_id_of(line, ""):
        raise RequestError(f"request {fallback_id}: missing or invalid 'request_id' (a non-empty string)")
    rid = request_id_of(line, fallback_id)
    extra = set(line) - _KNOWN_KEYS
    if extra:
        raise RequestError(f"request {rid}: unknown keys {sorted(extra)}")
    forms = [k for k in ("prompt", "input_ids", "messages") if k in line]
    if len(forms) != 1:
        raise RequestError(f"request {rid}: give exactly one of 'prompt', 'input_ids', 'messages' (got {forms or 'none'})")

    media: dict[str, list[Any]] = {m: [] for m in MODALITIES}
    for modality, key in _LIST_KEYS.items():
        value = line.get(key, [])
        if value is None:
            value = []
        if not isinstance(value, list):
            raise RequestError(f"request {rid}: '{key}' must be a list")
        media[modality].extend(value)

    skip = line.get("skip_tokenizer_init", False)
    if not isinstance(skip, bool):
        raise RequestError(f"request {rid}: 'skip_tokenizer_init' must be true or false")
    prompt: str | None = None
    input_ids: list[int] | None = None
    if "prompt" in line:
        if not isinstance(line["prompt"], str):
            raise RequestError(f"request {rid}: 'prompt' must be a string")
        prompt = line["prompt"]
    elif "input_ids" in line:
        input_ids = _validate_ids(line["input_ids"], rid, vocab_size)
    else:
        if any(media.values()):
            raise RequestError(f"request {rid}: with 'messages', media go in the message parts")
        if render_chat is None:
            raise RequestError(f"request {rid}: this model has no chat template")
        prompt = _messages_to_prompt(line["messages"], rid, media, render_chat)
    if skip and input_ids is None:
        raise RequestError(f"request {rid}: 'skip_tokenizer_init' needs 'input_ids'")

    specs = {m: [_media_spec(e, m, k, rid) for k, e in enumerate(entries)] for m, entries in media.items()}
    return ParsedRequest(request_id=rid, prompt=prompt, input_ids=input_ids, skip_tokenizer_init=skip, media=specs)


def _validate_ids(value: Any, rid: str, vocab_size: int | None) -> list[int]:
    if not isinstance(value, list) or not value:
        raise RequestError(f"request {rid}: 'input_ids' must be a non-empty list of integers")
    for k, tok in enumerate(value):
        if not isinstance(tok, int) or isinstance(tok, bool):
            raise RequestError(f"request {rid}: input_ids[{k}] is not an integer")
        if tok < 0 or (vocab_size is not None and tok >= vocab_size):
            raise RequestError(f"request {rid}: input_ids[{k}] = {tok} is outside the vocabulary [0, {vocab_size})")
    return list(value)
