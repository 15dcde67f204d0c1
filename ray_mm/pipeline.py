"""The whole preprocessing step in one process: parse, tokenize, load, process, align.

``Preprocessor`` is the in-process pipeline behind ``ray-mm align``; the pool
reuses its pieces (``prepare`` on the coordinator, ``process_item`` on media
workers, ``align_request`` on the coordinator again), so both give the same
records for the same input.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .align import SpliceRequired, align, align_by_text
from .buffers import active_arena
from .cache import FeatureCache
from .config import RayMMConfig
from .errors import AlignmentError, InternalError, MediaLimitError, MediaUnsupportedError, MMError, RequestError, describe_source
from .media import DecodedMedia, DecodedVideo, MediaLoader, is_precomputed
from .media.loader import FetchedMedia
from .models import ModelAdapter, load_adapter
from .request import parse_request, request_id_of
from .request.bundle import bundle_size_hint, split_bundles
from .request.precomputed import payload_nbytes, precomputed_features
from .types import MODALITIES, Alignment, ItemMeta, MediaSpec, ParsedRequest, ProcessedItem

logger = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A parsed request with its prompt ids, ready for item dispatch."""

    request: ParsedRequest
    input_ids: list[int]
    timings: dict[str, float] = field(default_factory=dict)
    # (modality, index) -> the runs an engine dict's offsets gave that item: alignment must find it there.
    given_runs: dict[tuple[str, int], list[tuple[int, int]]] = field(default_factory=dict)


class Preprocessor:
    """Parse, tokenize, fetch, decode, process and align requests for one model."""

    def __init__(self, model_dir: str | Path, config: RayMMConfig | None = None, adapter: str | None = None) -> None:
        self.config = config or RayMMConfig()
        self.adapter: ModelAdapter = load_adapter(model_dir, adapter)
        self.loader = MediaLoader(self.config)
        self.cache = FeatureCache(self.config.cache_bytes)
        # The transport items actually ship in: uint8 only for adapters that take it (the others ship
        # float32 whatever the config says); it keys the content-hash cache.
        self.transport = "uint8" if self.config.transport == "uint8" and self.adapter.uint8_transport else "float32"
        target = getattr(self.adapter, "image_target_size", None)
        if self.config.jpeg_draft and target is not None:
            self.loader.image_draft_size = _draft_size(target)

    # -- coordinator side -------------------------------------------------
    def prepare(self, line: Any, fallback_id: str = "?") -> Prepared:
        """Parse and tokenize one request, and refuse it (typed error) on what can be checked before
        any item is dispatched: the item count, the modalities, where videos go for a frame-expanding
        adapter, and the size of precomputed payloads."""
        t0 = time.perf_counter()
        req = parse_request(
            line,
            fallback_id=fallback_id,
            render_chat=self.adapter.apply_chat_template,
            vocab_size=self.adapter.vocab_size,
        )
        self._check_item_count(req)
        accepted = self.adapter.input_modalities
        for modality in MODALITIES:
            if req.media.get(modality) and modality not in accepted:
                raise RequestError(
                    f"request {req.request_id}: model adapter {self.adapter.name!r} does not accept {modality}"
                )
        self._check_video_entries(req, chat=isinstance(line, dict) and "messages" in line)
        self._check_precomputed_bytes(req)
        ids = req.input_ids if req.input_ids is not None else self.adapter.tokenize(req.prompt or "")
        given_runs = self._split_precomputed(req, ids)
        return Prepared(req, ids, {"tokenize_s": time.perf_counter() - t0}, given_runs)

    def _split_precomputed(self, req: ParsedRequest, ids: list[int]) -> dict[tuple[str, int], list[tuple[int, int]]]:
        """Engine dicts (SGLang's one dict per modality) into one entry per item; an item without offsets
        is aligned as one run of its tokens, which only adapters whose items are one run accept."""
        if not any(is_precomputed(spec.source) for spec in req.items()):
            return {}
        merge = getattr(self.adapter, "merge_size", None)
        given_runs = split_bundles(req, ids, frozenset(self.adapter.feature_token_ids.values()), int(merge) if merge else None)
        self._check_item_count(req)  # again: one engine dict may hold many items
        for spec in req.items():
            if is_precomputed(spec.source) and spec.given is None and spec.modality not in self.adapter.precomputed_modalities:
                # Aligned as one run of its tokens: wrong for a family whose items expand into structures
                # (timestamps, slices, tiles), so it is refused, not guessed. Offsets say where its runs are.
                raise RequestError(f"{spec.label}: precomputed {spec.modality} features without 'offsets' are not accepted by "
                                   f"adapter {self.adapter.name!r} (its items expand into more than one run of tokens)")
        return given_runs

    def _check_item_count(self, req: ParsedRequest) -> None:
        n_items = len(req.items())
        if n_items > self.config.media.max_items_per_request:
            raise MediaLimitError(
                f"request {req.request_id}: {n_items} media items, over the cap of {self.config.media.max_items_per_request}"
            )

    def _check_video_entries(self, req: ParsedRequest, chat: bool) -> None:
        """A frame-expanding adapter takes videos among the images unless it places ``videos`` entries itself.

        Alignment orders items per modality, so the frames of a ``videos`` entry would fill the image
        placeholders after every image, whatever the prompt order: wrong features, silently.
        """
        n = len(req.media.get("video") or [])
        if not n or not self.adapter.expand_video_as_frames or self.adapter.frames_from_videos_in_prompt_order:
            return
        got = f"{n} video part{'s' if n > 1 else ''} in 'messages'" if chat else f"{n} entr{'ies' if n > 1 else 'y'} in 'videos'"
        raise RequestError(
            f"request {req.request_id}: adapter {self.adapter.name} takes videos as entries of 'images' with "
            f'"kind": "video"; got {got}'
        )

    def _check_precomputed_bytes(self, req: ParsedRequest) -> None:
        """Refuse a precomputed payload over ``max_precomputed_bytes``, sized without converting it."""
        cap = self.config.media.max_precomputed_bytes
        for spec in req.items():
            if is_precomputed(spec.source):
                # Before any array is read; a dict holding several items may hold the cap for each.
                nbytes, n = payload_nbytes(spec.source), bundle_size_hint(spec.source)
                if nbytes > cap * n:
                    raise MediaLimitError(
                        f"{spec.label}: precomputed arrays of about {nbytes} bytes, over the cap of {cap} (max_precomputed_bytes)"
                        + (f" for each of its {n} items" if n > 1 else "")
                    )

    def align_request(self, prepared: Prepared, per_spec: list[list[ItemMeta]]) -> Alignment:
        """Align item metadata (one list per spec, in ``request.items()`` order)."""
        alignment = self._align(prepared, per_spec)
        for item in alignment.items:
            runs = prepared.given_runs.get((item.meta.modality, item.meta.index))
            if runs is not None and [tuple(o) for o in item.offsets] != [tuple(r) for r in runs]:
                raise AlignmentError(f"{item.meta.modality} {item.meta.index} of request {prepared.request.request_id}: "
                                     f"found at offsets {item.offsets[:2]}..., not at the offsets given {runs[:2]}...")
        return alignment

    def _align(self, prepared: Prepared, per_spec: list[list[ItemMeta]]) -> Alignment:
        req = prepared.request
        items = group_items(req.items(), per_spec)
        adapter = self.adapter
        kwargs: dict[str, Any] = dict(
            request_id=req.request_id,
            skip_tokenizer_init=req.skip_tokenizer_init,
            dynamic_frame_expansion=adapter.dynamic_frame_expansion,
            feature_ids=adapter.feature_token_ids,
        )
        if req.prompt is None:  # ids from the client: they are spliced in id space, as sent
            return align(prepared.input_ids, adapter.placeholder_token_ids, items, **kwargs)
        try:
            return align(prepared.input_ids, adapter.placeholder_token_ids, items, special_ids=adapter.special_token_ids,
                         from_text=True, **kwargs)
        except SpliceRequired:
            # An expansion opens or closes with plain text next to plain prompt text: splice the
            # text and tokenize once, as the processor does, so the ids are the processor's.
            return align_by_text(req.prompt, adapter.placeholder_tokens, adapter.feature_token_ids, adapter.feature_tokens,
                                 items, adapter.tokenize, request_id=req.request_id)

    # -- media worker side --------------------------------------------------
    def resolve_spec(self, spec: MediaSpec) -> tuple[MediaSpec, dict[str, Any]]:
        """The spec to load (a video among images for frame-expanding adapters) and its checked processor options."""
        load_spec, options = spec, spec.options
        if spec.modality == "image" and options.get("kind") == "video" and self.adapter.expand_video_as_frames:
            # MiniCPM-V style: a video among the images, decoded into frames that each take an image placeholder.
            options = {k: v for k, v in options.items() if k != "kind"}
            load_spec = MediaSpec("video", spec.index, spec.source, options, spec.request_id)
        proc_options = _processor_options(options)
        self._check_pixel_options(load_spec, proc_options)  # before any fetch: refuse cheaply
        return load_spec, proc_options

    def process_item(self, spec: MediaSpec) -> list[ProcessedItem]:
        """Fetch, decode and run the processor on one media entry."""
        load_spec, _ = self.resolve_spec(spec)
        return self.process_fetched(spec, None if self._nothing_to_fetch(load_spec) else self.loader.fetch(load_spec))

    async def fetch_item_async(self, spec: MediaSpec) -> FetchedMedia | None:
        """The entry's bytes, fetched on the event loop (media workers fetch many at once, off their
        decode thread); None for entries with nothing to fetch (precomputed, in-process media)."""
        load_spec, _ = self.resolve_spec(spec)
        return None if self._nothing_to_fetch(load_spec) else await self.loader.fetch_async(load_spec)

    def _nothing_to_fetch(self, load_spec: MediaSpec) -> bool:
        return is_precomputed(load_spec.source) or self.loader.is_in_process(load_spec)

    def process_fetched(self, spec: MediaSpec, fetched: FetchedMedia | None) -> list[ProcessedItem]:
        """Decode and run the processor on one entry whose bytes are in (``fetched``; None when
        ``fetch_item_async`` said there is nothing to fetch); the content-hash cache is consulted first."""
        load_spec, proc_options = self.resolve_spec(spec)
        if is_precomputed(load_spec.source):
            return [self._precomputed_item(spec)]
        if fetched is None:
            return self.process_decoded(spec, self.loader.load(load_spec), load_spec, proc_options)
        if not self.cache.max_bytes:
            return self.process_decoded(spec, self.loader.decode(load_spec, fetched), load_spec, proc_options)
        cache_key = (fetched.content_hash, self.adapter.name, self.transport, load_spec.modality)
        cached = self.cache.get(cache_key)
        if cached is not None:
            for item in cached:
                item.meta.index = spec.index
                item.meta.expansion = self.adapter.item_expansion(item.meta.modality, item.base_expansion, spec.index)
                item.meta.source_index = spec.index if item.meta.source_index is not None else None
                item.meta.timings = {"fetch_s": fetched.fetch_s, "decode_s": 0.0, "process_s": 0.0, "cache_hit": 1.0}
            return cached
        results = self.process_decoded(spec, self.loader.decode(load_spec, fetched), load_spec, proc_options)
        self.cache.put(cache_key, _outliving_the_call(results))
        return results

    def process_decoded(
        self,
        spec: MediaSpec,
        decoded: DecodedMedia,
        load_spec: MediaSpec | None = None,
        proc_options: dict[str, Any] | None = None,
    ) -> list[ProcessedItem]:
        """Run the processor on an already decoded item and build its metadata."""
        if load_spec is None or proc_options is None:
            load_spec, proc_options = self.resolve_spec(spec)
        process_options = {**proc_options, "transport": "uint8"} if self.transport == "uint8" else proc_options
        try:
            data = decoded.data.frames if isinstance(decoded.data, DecodedVideo) else decoded.data
            if isinstance(decoded.data, DecodedVideo) and self.adapter.takes_video_metadata:
                process_options = {**process_options, "video_metadata": video_metadata(decoded.data)}
            t0 = time.perf_counter()
            outputs = self.adapter.process(load_spec.modality, data, process_options)
            process_s = time.perf_counter() - t0
        except (MediaUnsupportedError, RequestError) as exc:  # the adapter's own checks give the reason; name the item
            if exc.message.startswith(spec.label):
                raise
            raise type(exc)(f"{spec.label}: {exc.message}") from exc
        except MMError:
            raise
        except Exception as exc:
            raise _processor_error(spec, proc_options, exc) from exc
        results = []
        for k, out in enumerate(outputs):
            content_hash = decoded.content_hash if len(outputs) == 1 else _sub_hash(decoded.content_hash, k)
            primary = out.features[out.primary]
            expanded = out.modality != load_spec.modality
            meta = ItemMeta(
                modality=out.modality,
                index=spec.index,
                num_tokens=int(out.num_tokens),
                grid_thw=[int(x) for x in out.grid_thw] if out.grid_thw is not None else None,
                hash=content_hash,
                feature_shape=[int(x) for x in primary.shape],
                feature_dtype=str(primary.dtype),
                expansion=self.adapter.item_expansion(out.modality, out.expansion, spec.index),
                extras=dict(out.extras),
                source_modality=load_spec.modality if expanded else None,
                source_index=spec.index if expanded else None,
                timings={**decoded.timings, "process_s": process_s / len(outputs)},
            )
            results.append(ProcessedItem(meta=meta, features=out.features, primary=out.primary, base_expansion=out.expansion))
        return results

    def _precomputed_item(self, spec: MediaSpec) -> ProcessedItem:
        t0 = time.perf_counter()
        merge = getattr(self.adapter, "merge_size", None)
        out, content_hash = precomputed_features(spec, int(merge) if merge else None)
        primary = out.features[out.primary]
        meta = ItemMeta(
            modality=out.modality, index=spec.index, num_tokens=out.num_tokens, grid_thw=out.grid_thw, hash=content_hash,
            feature_shape=[int(x) for x in primary.shape], feature_dtype=str(primary.dtype), expansion=out.expansion,
            timings={"fetch_s": 0.0, "decode_s": 0.0, "process_s": time.perf_counter() - t0},
        )
        return ProcessedItem(meta=meta, features=out.features, primary=out.primary)

    def _check_pixel_options(self, spec: MediaSpec, options: dict[str, Any]) -> None:
        """Client resize options must be positive integers, and may not upscale past the pixel caps.

        ``min_pixels`` / ``size.shortest_edge`` make the processor *upscale* small media: unchecked,
        a 1x1 image with ``min_pixels=10**10`` would allocate tens of GB.
        """
        if spec.modality not in ("image", "video"):
            return
        policy = self.config.media
        cap = policy.max_image_pixels if spec.modality == "image" else policy.max_video_frame_pixels
        values = [(k, options[k]) for k in ("min_pixels", "max_pixels") if options.get(k) is not None]
        size = options.get("size")
        if size is not None:
            if not isinstance(size, dict):
                raise RequestError(f"{spec.label}: option 'size' must be an object")
            values += [(f"size.{k}", size[k]) for k in ("shortest_edge", "longest_edge") if size.get(k) is not None]
        for name, value in values:
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise RequestError(f"{spec.label}: option {name} must be a positive integer")
            if name in ("min_pixels", "size.shortest_edge") and value > cap:
                raise MediaLimitError(f"{spec.label}: option {name}={value} would upscale past the cap of {cap} pixels")

    # -- whole request in process ------------------------------------------
    def run(self, line: Any, fallback_id: str = "?") -> RequestOutcome:
        t0 = time.perf_counter()
        rid = request_id_of(line, fallback_id)
        try:
            prepared = self.prepare(line, fallback_id)
            processed = [self.process_item(spec) for spec in prepared.request.items()]
            t1 = time.perf_counter()
            alignment = self.align_request(prepared, [[p.meta for p in group] for group in processed])
            align_s = time.perf_counter() - t1
        except MMError as exc:
            return RequestOutcome.failure(rid, exc)
        except Exception as exc:
            logger.exception("request %s: internal fault", rid)
            return RequestOutcome.failure(rid, InternalError(f"request {rid}: internal error ({type(exc).__name__})"))
        by_meta = {id(p.meta): p for group in processed for p in group}
        # Dumped features are what the model consumes: uint8 pixels are finished (rescaled, normalised,
        # patchified) here as the GPU worker would.
        finished = [self.adapter.finish_features(by_meta[id(item.meta)].features) for item in alignment.items]
        features = [f[by_meta[id(item.meta)].primary] for f, item in zip(finished, alignment.items)]
        timings = {**prepared.timings, "align_s": align_s, "total_s": time.perf_counter() - t0}
        for stage in ("fetch_s", "decode_s", "process_s"):
            timings[stage] = sum(p.meta.timings.get(stage, 0.0) for group in processed for p in group)
        return RequestOutcome(rid, success_record(rid, alignment, timings), features, finished)


_LOADER_OPTIONS = frozenset({"fps", "nframes", "min_frames", "max_frames", "kind", "type"})


_PACKAGE_DIR = os.path.dirname(os.path.realpath(__file__)) + os.sep
_DATA_URI = re.compile(r"data:[^\s'\"]*")
_URL_CREDENTIALS = re.compile(r"(\w+://)[^/\s@]*@")
_REASON_CHARS = 200


def _processor_error(spec: MediaSpec, proc_options: dict[str, Any], exc: Exception) -> MMError:
    """The typed error for an exception out of ``adapter.process`` (other than an ``MMError``).

    The HF processors refuse input they cannot take with ``ValueError`` (an aspect ratio over
    their limit, a shape they cannot read; adapters follow the same rule, see
    ``ModelAdapter.process``), and sometimes ``TypeError``: that is the client's input, 4xx:
    a ``RequestError`` when the item carries processor options (the likely cause), else a
    ``MediaUnsupportedError``. Anything else (``KeyError``, ``AttributeError``, ...), and a
    ``TypeError`` raised in ray-mm's own code, is a fault of ray-mm: logged with its
    traceback, 500.
    """
    ours = isinstance(exc, TypeError) and _raised_in_ray_mm(exc)
    if isinstance(exc, (ValueError, TypeError)) and not ours:
        reason = _safe_reason(exc)
        if proc_options:  # the client's per-item options are the likely cause: a bad request, not our fault
            names = ", ".join(str(k)[:40] for k in sorted(proc_options, key=str)[:8])
            return RequestError(f"{spec.label}: the processor rejected the item's options ({names}; {type(exc).__name__}: {reason})")
        return MediaUnsupportedError(f"{spec.label}: the model's processor cannot take this {spec.modality}: {reason}")
    logger.exception("%s: processor fault (%s)", spec.label, type(exc).__name__, exc_info=exc)
    return InternalError(f"{spec.label}: processor failed ({type(exc).__name__})")


def _raised_in_ray_mm(exc: BaseException) -> bool:
    """True when the innermost frame of ``exc``'s traceback is ray-mm's own code (not a library's)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.realpath(tb.tb_frame.f_code.co_filename).startswith(_PACKAGE_DIR)


def _safe_reason(exc: BaseException) -> str:
    """A library's message fit for a client: one line, no ``data:`` payload or URL credentials, ~200 chars."""
    text = " ".join(str(exc).split())
    text = _DATA_URI.sub(lambda m: describe_source(m.group(0)), text)
    text = _URL_CREDENTIALS.sub(r"\1***@", text)
    if len(text) > _REASON_CHARS:
        text = text[:_REASON_CHARS] + "..."
    return text or type(exc).__name__


def _processor_options(options: dict[str, Any]) -> dict[str, Any]:
    """Per-item options meant for the processor (sampling options are the loader's)."""
    return {k: v for k, v in options.items() if k not in _LOADER_OPTIONS}


def video_metadata(video: DecodedVideo) -> dict[str, Any]:
    """How the frames were sampled, in the form HF video processors take (``video_metadata``): without
    it they re-sample, or compute timestamps and ``second_per_grid_ts`` at an assumed 24 fps."""
    return {"fps": float(video.video_fps), "total_num_frames": int(video.total_frames),
            "frames_indices": [int(i) for i in video.indices],
            "duration": float(video.total_frames) / float(video.video_fps) if video.video_fps else None}


def _draft_size(target: Any) -> Any:
    """Draft request in the file's raw orientation: the processor's target, axes swapped back if EXIF rotates."""

    def size(width: int, height: int, swapped: bool) -> tuple[int, int]:
        if swapped:
            tw, th = target(height, width)
            return th, tw
        return tuple(target(width, height))

    return size


def _outliving_the_call(items: list[ProcessedItem]) -> list[ProcessedItem]:
    """``items`` with any array that lives in the active per-call output arena copied out, for a
    holder (the cache) that keeps them past the call."""
    arena = active_arena()
    if arena is None:
        return items
    return [dataclasses.replace(item, features={k: np.array(v) if isinstance(v, np.ndarray) and arena.holds(v) else v
                                                for k, v in item.features.items()}) for item in items]


def group_items(specs: list[MediaSpec], per_spec: list[list[ItemMeta]]) -> dict[str, list[ItemMeta]]:
    """Flatten per-spec outputs into per-modality lists, renumbering expanded items in order."""
    if len(specs) != len(per_spec):
        raise InternalError("item results do not match the request's media entries")
    grouped: dict[str, list[ItemMeta]] = {}
    for _spec, metas in sorted(zip(specs, per_spec), key=lambda sm: (MODALITIES.index(sm[0].modality), sm[0].index)):
        for meta in metas:
            grouped.setdefault(meta.modality, []).append(meta)
    # Expanded frames make the per-modality index differ from the spec index; keep both.
    for metas in grouped.values():
        for k, meta in enumerate(metas):
            meta.index = k
    return grouped


def _sub_hash(content_hash: str, k: int) -> str:
    return hashlib.sha256(f"{content_hash}:{k}".encode()).hexdigest()


def success_record(rid: str, alignment: Alignment, timings: dict[str, float]) -> dict[str, Any]:
    return {
        "request_id": rid,
        "ok": True,
        "path": alignment.path,
        "input_ids": alignment.input_ids,
        "items": [item.to_record() for item in alignment.items],
        "timings": {k: round(v, 6) for k, v in timings.items()},
    }


@dataclass
class RequestOutcome:
    request_id: str
    record: dict[str, Any]
    features: list[np.ndarray] = field(default_factory=list)  # each item's main array, in prompt order
    item_features: list[dict[str, Any]] = field(default_factory=list)  # each item's outputs, named as the processor names them

    @classmethod
    def failure(cls, rid: str, exc: MMError) -> RequestOutcome:
        return cls(rid, {"request_id": rid, "ok": False, "error": exc.to_dict()})

    @property
    def ok(self) -> bool:
        return bool(self.record.get("ok"))
