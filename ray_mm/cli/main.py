"""The ``ray-mm`` command line: make-model, align, run, serve, bench.

Mistakes in what the user gave (a model directory that does not exist, a misspelt config key, a
request file that cannot be read) end as one line on stderr and exit status 2, not a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any, TextIO

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
USAGE_EXIT = 2  # as argparse exits for a bad option


class UsageError(Exception):
    """A mistake on the command line; ``main`` prints its one-line message and exits 2."""


def _cmd_make_model(args: argparse.Namespace) -> int:
    from ..models import make_model

    path = make_model(args.dir, args.family)
    print(f"wrote tiny {args.family} model to {path}")
    return 0


def _cmd_align(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..errors import MMError
    from ..pipeline import Preprocessor, RequestOutcome
    from ..request.jsonl import dedupe, dump_features, summarize, write_record

    config = load_config(args.config)
    check_model_dir(args.model)
    lines = open_requests(args.requests)
    try:
        pre = Preprocessor(args.model, config, adapter=args.adapter)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load a model from {args.model}: {_one_line(exc)}") from exc
    records = []
    with open_output(args.out) as out:
        for fallback, line in dedupe(lines):
            if isinstance(line, MMError):  # not JSON, or a repeated request_id: the line is its error
                outcome = RequestOutcome.failure(fallback, line)
            else:
                outcome = pre.run(line, fallback)
            write_record(out, outcome.record)
            if args.dump_features and outcome.ok:
                dump_features(args.dump_features, outcome.request_id, outcome.features, outcome.item_features)
            records.append(outcome.record)
    print(summarize(records), file=sys.stderr)
    if args.strict and not all(r.get("ok") for r in records):
        return 1
    return 0


def check_model_dir(model: str | None) -> None:
    """A ``--model`` that is not a directory is a usage error (checked before any work starts)."""
    if model is None:
        return
    path = Path(model)
    if not path.exists():
        raise UsageError(f"model directory not found: {model}")
    if not path.is_dir():
        raise UsageError(f"model path is not a directory: {model}")


def open_requests(path: str) -> Any:
    """``read_requests(path)``, opened now: a file that cannot be opened is a usage error."""
    from ..request.jsonl import read_requests

    try:
        return read_requests(path)
    except OSError as exc:
        raise UsageError(f"cannot read request file {path}: {exc.strerror or exc}") from exc


def open_output(path: str | None) -> contextlib.AbstractContextManager[TextIO]:
    """The result file (stdout when ``None``); one that cannot be created is a usage error."""
    if not path:
        return contextlib.nullcontext(sys.stdout)
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write output file {path}: {exc.strerror or exc}") from exc


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def configure_logging(level: str) -> None:
    """Send the ``ray_mm`` logger tree to stderr at ``level`` (``logging.basicConfig``-style, but only
    for ``ray_mm``: Ray's and other libraries' loggers are left as they are). Records still
    propagate to the root logger's handlers, if any. Calling it again replaces the handler it
    installed, so the stream is the current ``sys.stderr``."""
    logger = logging.getLogger("ray_mm")
    for handler in [h for h in logger.handlers if getattr(h, "_ray_mm_cli", False)]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._ray_mm_cli = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)


def add_log_level(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="WARNING", choices=LOG_LEVELS, type=str.upper,
                        help="level of the ray_mm logs on stderr (default: WARNING)")


def build_parser() -> argparse.ArgumentParser:
    from ..models.make_model import FAMILIES

    parser = argparse.ArgumentParser(prog="ray-mm", description="Multimodal preprocessing for VLM serving on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    mm = sub.add_parser("make-model", help="write a tiny offline model directory")
    mm.add_argument("dir")
    mm.add_argument("--family", default="qwen2_vl", choices=list(FAMILIES))
    mm.set_defaults(func=_cmd_make_model)

    al = sub.add_parser("align", help="run the whole pipeline in one process, without Ray")
    al.add_argument("--model", required=True, help="local model directory")
    al.add_argument("--requests", required=True, help="request JSONL")
    al.add_argument("--out", help="result JSONL (default: stdout)")
    al.add_argument("--dump-features", help="write DIR/<request_id>.npz with item0, item1, ...")
    al.add_argument("--config", help="YAML config (media policy, caps, ...)")
    al.add_argument("--adapter", help="model adapter name (default: from the model directory)")
    al.add_argument("--strict", action="store_true", help="exit 1 if any request failed")
    add_log_level(al)
    al.set_defaults(func=_cmd_align)

    from .run import add_run_parser

    add_run_parser(sub)
    from .serve import add_serve_parser

    add_serve_parser(sub)
    from ..bench.cli import add_bench_parser

    add_bench_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..config import ConfigError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    if getattr(args, "log_level", None):
        configure_logging(args.log_level)
    try:
        return int(args.func(args) or 0)
    except (UsageError, ConfigError) as exc:
        print(f"ray-mm {args.command}: error: {exc}", file=sys.stderr)
        return USAGE_EXIT


if __name__ == "__main__":
    raise SystemExit(main())
