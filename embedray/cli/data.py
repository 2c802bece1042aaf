"""``embedray data debian``: build the built-in Debian package-description dataset (BEIR layout)."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from embedray.data.debian import DEFAULT_LISTS_DIR, build_debian

HELP = "build the built-in Debian package-description dataset (BEIR layout)"
DESCRIPTION = ("Queries are package summaries; the relevant document is the package's long description. "
               "Deterministic train/dev/test split by package name.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the flags of ``embedray data debian``."""
    parser.add_argument("out_dir", type=Path, help="folder to write the BEIR dataset into")
    parser.add_argument("--max-docs", type=int, default=None,
                        help="corpus size (positives of the chosen queries + distractors); default all")
    parser.add_argument("--max-queries", type=int, default=None,
                        help="total queries, split 80/10/10 over train/dev/test; default all")
    parser.add_argument("--split-queries", type=_split_counts, default=None, metavar="SPLIT=N,...",
                        help="queries of named splits instead of their share, e.g. test=300,dev=60")
    parser.add_argument("--lists-dir", type=Path, default=Path(DEFAULT_LISTS_DIR),
                        help=f"apt lists folder with *Translation-en* files (default {DEFAULT_LISTS_DIR})")
    parser.add_argument("--seed", type=int, default=0,
                        help="which queries/distractors the caps keep (splits never change)")


def _split_counts(text: str) -> dict[str, int]:
    """``train=480,test=300`` → ``{"train": 480, "test": 300}`` (argparse type)."""
    counts = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        split, eq, value = part.partition("=")
        if not eq or not value.strip().isdigit():
            raise argparse.ArgumentTypeError(f"expected SPLIT=N[,SPLIT=N...], got {part!r}")
        counts[split.strip()] = int(value)
    return counts


def run(args: argparse.Namespace) -> int:
    """``embedray data debian``: build the dataset, print the counts; 0 on success, 1 on error."""
    try:
        stats = build_debian(args.out_dir, max_docs=args.max_docs, max_queries=args.max_queries,
                             split_queries=getattr(args, "split_queries", None),
                             seed=getattr(args, "seed", 0), lists_dir=args.lists_dir, progress=True)
    except (FileNotFoundError, ValueError, RuntimeError, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(stats.summary())
    return 0
