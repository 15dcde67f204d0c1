"""The ``ray-mm`` command line: make-model, align, run, bench."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys


def _cmd_make_model(args: argparse.Namespace) -> int:
    from .models import make_model

    path = make_model(args.dir, args.family)
    print(f"wrote tiny {args.family} model to {path}")
    return 0


def _cmd_align(args: argparse.Namespace) -> int:
    from .config import load_config
    from .errors import MMError
    from .io import dump_features, read_requests, summarize, write_record
    from .pipeline import Preprocessor, RequestOutcome

    config = load_config(args.config)
    pre = Preprocessor(args.model, config, adapter=args.adapter)
    records = []
    out_cm = open(args.out, "w", encoding="utf-8") if args.out else contextlib.nullcontext(sys.stdout)
    with out_cm as out:
        for fallback, line in read_requests(args.requests):
            if isinstance(line, MMError):
                outcome = RequestOutcome.failure(fallback, line)
            else:
                outcome = pre.run(line, fallback)
            write_record(out, outcome.record)
            if args.dump_features and outcome.ok:
                dump_features(args.dump_features, outcome.request_id, outcome.features)
            records.append(outcome.record)
    print(summarize(records), file=sys.stderr)
    if args.strict and not all(r.get("ok") for r in records):
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ray-mm", description="Multimodal preprocessing for VLM serving on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    mm = sub.add_parser("make-model", help="write a tiny offline model directory")
    mm.add_argument("dir")
    mm.add_argument("--family", default="qwen2_vl", choices=["qwen2_vl", "qwen2_audio"])
    mm.set_defaults(func=_cmd_make_model)

    al = sub.add_parser("align", help="run the whole pipeline in one process, without Ray")
    al.add_argument("--model", required=True, help="local model directory")
    al.add_argument("--requests", required=True, help="request JSONL")
    al.add_argument("--out", help="result JSONL (default: stdout)")
    al.add_argument("--dump-features", help="write DIR/<request_id>.npz with item0, item1, ...")
    al.add_argument("--config", help="YAML config (media policy, caps, ...)")
    al.add_argument("--adapter", help="model adapter name (default: from the model directory)")
    al.add_argument("--strict", action="store_true", help="exit 1 if any request failed")
    al.set_defaults(func=_cmd_align)

    from .runner import add_run_parser

    add_run_parser(sub)
    from .bench import add_bench_parser

    add_bench_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
