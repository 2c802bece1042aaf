"""``embedray data flag``: FlagEmbedding JSONL files → a BEIR folder and its training pairs."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "turn FlagEmbedding JSONL (train, optional dev/test) into a BEIR folder + train_pairs.jsonl"
DESCRIPTION = ("Every pos/neg text becomes one corpus document (ids from the text), a row's prompt is its "
               "query's instruction, its neg are kept as the pair's neg_ids and its pos_scores/neg_scores "
               "as teacher scores. A dev/test query that is also a training query is leakage: dropped from "
               "the held-out split and reported (--leakage keep|error to change that).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the flags of ``embedray data flag``."""
    parser.add_argument("out_dir", type=Path, help="folder to write the BEIR dataset into")
    # Each file may be an s3:// / gs:// / hdfs:// URI, mirrored once into $EMBEDRAY_CACHE/.data.
    parser.add_argument("--train", required=True, help="FlagEmbedding JSONL to train on (a path or an s3:// URI)")
    parser.add_argument("--dev", default=None, help="FlagEmbedding JSONL held out for dev")
    parser.add_argument("--test", default=None, help="FlagEmbedding JSONL held out for the test split")
    parser.add_argument("--leakage", choices=["drop", "keep", "error"], default="drop",
                        help="held-out queries that are also training queries (default: drop)")
    parser.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                        help="a bad line stops with file:line (raise) or is skipped and counted")


def run(args: argparse.Namespace) -> int:
    """Convert, print what was written; 0 on success, 1 on an input error."""
    from embedray.data import DataError, SkipReport
    from embedray.data.flag import write_flag_folder
    from embedray.data.remote import MIRROR_DIR, local_data
    from embedray.models.bundled import cache_dir

    report = SkipReport()
    try:
        files = {s: Path(local_data(f, f"--{s}", cache_dir() / MIRROR_DIR))
                 for s, f in (("train", args.train), ("dev", args.dev), ("test", args.test)) if f}
        stats = write_flag_folder(files, args.out_dir, leakage=args.leakage, on_error=args.on_error, report=report)
    except (DataError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(stats.summary())
    if report.total:
        print(f"skipped: {report.summary()}")
    print(f"wrote {args.out_dir.resolve()} (train pairs: train_pairs.jsonl)")
    return 0
