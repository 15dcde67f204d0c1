"""The HTTP contract of ``ray-mm serve``, without Ray: body and query parsing, request ids, size caps,
error records and their HTTP statuses, and the inline features (npz) of an answer.

``actors/serve.py`` (the Ray Serve deployment) calls these; everything here is testable without a
cluster (``tests/unit/test_http_api.py``).
"""

from __future__ import annotations

import base64
import io
import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..errors import InternalError, MMError, RequestError
from ..request import request_id_of
from ..request.precomputed import PRIMARY

PREPROCESS_PATH = "/v1/preprocess"
HEALTH_PATH = "/healthz"
REQUEST_ID_HEADER = "x-request-id"
# Key of a record from ``Coordinator.submit_and_wait(keep_features=True)`` that carries the request's
# feature refs; the front end reads the features and removes the key before answering.
FEATURE_REFS_KEY = "_feature_refs"
FORMATS = ("sglang", "vllm")
# Statuses an error record may carry to the client as they are; anything else is a fault of ray-mm (500).
_PASSED_STATUSES = frozenset({400, 403, 404, 405, 409, 413, 415, 422, 500, 501, 503, 504})
_HEADER_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


class ServeSettings(BaseModel):
    """Settings of the ``ray-mm serve`` front end (the Serve deployment); the pool has its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_replicas: int = Field(default=1, ge=1, description="Serve replicas of the front end (each one async, num_cpus=0).")
    max_ongoing_requests: int = Field(
        default=256, ge=1,
        description="Requests one replica holds at once (Serve queues the rest in its proxy). A replica mostly awaits "
        "the coordinator, so this can be high; keep num_replicas * this under the coordinator's actor concurrency "
        "(1000 for an async actor), which its GPU workers' calls share.",
    )
    max_body_bytes: int = Field(default=32 << 20, ge=1, description="Largest request body; a larger one is 413, before parsing.")
    max_features_bytes: int = Field(
        default=64 << 20, ge=1, description="Largest features npz that include_features=true inlines (before base64); over it 413."
    )
    request_timeout_s: float | None = Field(
        default=None, gt=0,
        description="End-to-end deadline of one request; None: the pool's request_timeout_s. A client may ask for less "
        "with ?timeout_s=, never for more.",
    )
    retry_after_s: int = Field(default=1, ge=0, description="Retry-After (seconds) on a 503 answer.")
    health_timeout_s: float = Field(default=2.0, gt=0, description="How long /healthz waits for the coordinator.")
    graceful_shutdown_timeout_s: float = Field(
        default=5.0, ge=0, description="On shutdown, how long a replica may finish the requests it holds before it is killed."
    )


@dataclass(frozen=True)
class PreprocessQuery:
    """The query parameters of ``POST /v1/preprocess``."""

    format: Literal["sglang", "vllm"] | None = None
    include_features: bool = False
    timeout_s: float | None = None

    @property
    def needs_features(self) -> bool:
        """Whether the answer reads the request's features (vLLM's hand-off carries embeddings, which the
        engine's encoder makes, so its metadata needs none)."""
        return self.include_features or self.format == "sglang"


_TRUE, _FALSE = frozenset({"1", "true", "yes", "on"}), frozenset({"0", "false", "no", "off", ""})


def parse_query(params: Mapping[str, str]) -> PreprocessQuery:
    """``format=sglang|vllm``, ``include_features=true|false``, ``timeout_s=<seconds>``; anything else is 400."""
    unknown = sorted(set(params) - {"format", "include_features", "timeout_s"})
    if unknown:
        raise RequestError(f"unknown query parameters {unknown} (known: format, include_features, timeout_s)")
    fmt = params.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise RequestError(f"format must be one of {list(FORMATS)}, not {fmt[:32]!r}")
    flag = params.get("include_features", "false").lower()
    if flag not in _TRUE | _FALSE:
        raise RequestError(f"include_features must be true or false, not {flag[:32]!r}")
    timeout_s = None
    if "timeout_s" in params:
        try:
            timeout_s = float(params["timeout_s"])
        except ValueError:
            timeout_s = float("nan")
        if not timeout_s > 0 or timeout_s == float("inf"):
            raise RequestError(f"timeout_s must be a positive number of seconds, not {params['timeout_s'][:32]!r}")
    return PreprocessQuery(fmt, flag in _TRUE, timeout_s)  # type: ignore[arg-type]


def effective_timeout(query: PreprocessQuery, server_timeout_s: float) -> float:
    """The request's deadline: what the client asked for, capped by the server's."""
    return server_timeout_s if query.timeout_s is None else min(query.timeout_s, server_timeout_s)


def body_too_large(size: int, cap: int, at_least: bool = False) -> RequestError:
    """413 for a body of ``size`` bytes (``at_least``: counted while reading, the rest unread)."""
    what = f"at least {size}" if at_least else str(size)
    return RequestError(f"request body of {what} bytes is over the limit of {cap} bytes", status=413)


def check_content_length(header: str | None, cap: int) -> None:
    """A declared body over ``cap`` is refused before a byte of it is read."""
    if header is None:
        return
    try:
        size = int(header)
    except ValueError:
        raise RequestError("Content-Length is not a number") from None
    if size > cap:
        raise body_too_large(size, cap)


def new_request_id() -> str:
    return "http-" + uuid.uuid4().hex[:16]


def header_request_id(value: str | None) -> str | None:
    """The ``X-Request-Id`` header, if usable as an id (short, printable, no spaces); else 400."""
    if value is None or value == "":
        return None
    if not _HEADER_ID.fullmatch(value):
        raise RequestError("X-Request-Id must be 1-128 characters of letters, digits and ._:@/+=-")
    return value


def is_openai_chat(body: Mapping[str, Any]) -> bool:
    """An OpenAI chat-completions body: ``model`` and ``messages`` (the API requires both)."""
    return "messages" in body and "model" in body


def request_line(body: bytes, header_id: str | None = None, make_id: Callable[[], str] = new_request_id) -> tuple[dict[str, Any], str]:
    """The ray-mm request line of an HTTP body, and its request id.

    The body is a ray-mm request object, or an OpenAI chat-completions body (only its ``messages``
    are used; ``model``, ``max_tokens``, ``stream`` and the other OpenAI keys are ignored). The id is
    the body's ``request_id``, else the ``X-Request-Id`` header, else a new one. Schema errors of a
    ray-mm request are left to the pool's parser, which names them per request.
    """
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"the body is not valid JSON ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(obj, dict):
        raise RequestError(f"the body must be a JSON object, not {type(obj).__name__}")
    # The header is checked only when it is used: a body with its own id is not refused for it.
    fallback = request_id_of(obj, "") or header_request_id(header_id) or make_id()
    if is_openai_chat(obj):
        rid = request_id_of(obj, fallback)
        return {"request_id": rid, "messages": obj["messages"]}, rid
    if "request_id" not in obj:
        obj = {"request_id": fallback, **obj}
    return obj, request_id_of(obj, fallback)


def http_status(record: Mapping[str, Any]) -> int:
    """The HTTP status of a record: 200 when ok, else its error's status where that is one a client
    can act on (400, 403, 409, 413, 422, 503, 504, ...). A ``Cancelled`` request (499: cancelled on
    the pool's side, not by this client) is 503; any other status is ray-mm's fault, 500."""
    if record.get("ok"):
        return 200
    status = (record.get("error") or {}).get("status")
    if status == 499:
        return 503
    return status if isinstance(status, int) and status in _PASSED_STATUSES else 500


def answer(record: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """``(HTTP status, body)``; an error body's ``status`` is the HTTP status it is answered with."""
    status = http_status(record)
    if status != 200:
        error = dict(record.get("error") or {"type": "InternalError", "message": "record without an error"})
        error["status"] = status
        record = {"request_id": record.get("request_id"), "ok": False, "error": error}
    return status, record


def error_record(request_id: str | None, exc: MMError) -> dict[str, Any]:
    return {"request_id": request_id, "ok": False, "error": exc.to_dict()}


def internal_error_record(request_id: str | None, what: str) -> dict[str, Any]:
    """The record of a fault of ray-mm itself (the caller logs the traceback; records carry none)."""
    return error_record(request_id, InternalError(f"request {request_id}: {what}"))


# -- inline features --------------------------------------------------------------------
def primary_name(item: Mapping[str, Any], arrays: Mapping[str, Any]) -> str:
    """The name of an item's main array (what ``ray-mm align --dump-features`` writes as ``item<n>``):
    the processor's usual name for the modality if present, else the array whose shape the record
    names as ``feature_shape``."""
    usual = PRIMARY.get(str(item.get("modality")))
    if usual in arrays:
        return str(usual)
    shape = list(item.get("feature_shape") or [])
    for name, value in arrays.items():
        if list(np.shape(value)) == shape:
            return str(name)
    raise InternalError(f"{item.get('modality')} {item.get('index')}: none of its arrays {sorted(arrays)} has shape {shape}")


def features_nbytes(item_features: Sequence[Mapping[str, Any]]) -> int:
    return sum(int(np.asarray(v).nbytes) for named in item_features for v in named.values())


def features_npz(items: Sequence[Mapping[str, Any]], item_features: Sequence[Mapping[str, Any]], cap: int) -> bytes:
    """The request's features as npz bytes, keyed as ``ray-mm align --dump-features`` writes them:
    ``item<n>`` (the main array) and ``item<n>.<name>`` (every output of the item), n in prompt
    order. Over ``cap`` bytes it is ``RequestError`` 413, checked on the raw sizes before building."""
    if len(items) != len(item_features):
        raise InternalError(f"{len(items)} items in the record but {len(item_features)} feature sets")
    raw = features_nbytes(item_features)
    if raw > cap:
        raise features_too_large(raw, cap)
    arrays: dict[str, np.ndarray] = {}
    for k, (item, named) in enumerate(zip(items, item_features)):
        arrays[f"item{k}"] = np.asarray(named[primary_name(item, named)])
        arrays.update({f"item{k}.{name}": np.asarray(value) for name, value in named.items()})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    if len(data) > cap:
        raise features_too_large(len(data), cap)
    return data


def features_too_large(size: int, cap: int) -> RequestError:
    return RequestError(f"the request's features are {size} bytes, over the inline limit of {cap} bytes; "
                        "ask without include_features and read them from the pool instead", status=413)


def encode_features(npz: bytes) -> dict[str, Any]:
    """The ``features`` field of an answer."""
    return {"format": "npz", "encoding": "base64", "nbytes": len(npz), "data": base64.b64encode(npz).decode("ascii")}


def decode_features(field: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The arrays of an answer's ``features`` field (for clients and tests)."""
    with np.load(io.BytesIO(base64.b64decode(field["data"]))) as npz:
        return {name: npz[name] for name in npz.files}
