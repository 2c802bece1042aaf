"""``embedray rotate``: rotate a model onto its principal axes (Matryoshka prefixes keep the
most variance), fit on a BEIR split's queries and positives."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from embedray.data.beir import load_beir, pairs_from_data

HELP = "rotate a model onto its principal axes (Matryoshka prefixes)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="sentence-transformers folder (or bundled name) to rotate")
    p.add_argument("--data", required=True, help="BEIR folder whose split's queries and positives fit the axes")
    p.add_argument("--split", default="train", help="qrels split to fit on (default: train; never test)")
    p.add_argument("--out", required=True, help="folder for the rotated copy (replaced atomically)")
    p.add_argument("--max-texts", type=int, default=20000, help="fit on at most this many texts (a fixed sample)")
    p.add_argument("--batch-size", type=int, default=64, help="encoder batch size")


def run(args: argparse.Namespace) -> int:
    """``embedray rotate``: principal-axes rotation of a model, fit on a BEIR split's pairs."""
    from embedray.models.rotation import fit_texts, rotate_model  # torch: only when run

    if args.split == "test":
        raise ValueError("--split test: the test split only measures; fit the rotation on train (or dev)")
    if args.max_texts < 2:
        raise ValueError(f"--max-texts must be >= 2, got {args.max_texts}")
    data = load_beir(args.data, args.split)
    pairs = [(query, data.corpus[d].text_for_model) for _, query, d in pairs_from_data(data)]
    info = rotate_model(args.model, fit_texts(pairs, args.max_texts), args.out,
                        batch_size=args.batch_size, show_progress=True)
    print(json.dumps({"model": str(Path(args.out).expanduser().resolve()), **info}, indent=2))
    return 0
