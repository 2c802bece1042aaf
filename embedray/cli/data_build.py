"""``embedray data build KIND INPUT --output OUT.jsonl``: training pairs from NLI triples, search
logs, raw text or sentences, or near-duplicate removal, written as FlagEmbedding JSONL."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "build FlagEmbedding training pairs: nli | logs | nsp | span | simcse | dedup"
DESCRIPTION = """Builders (each validates its input: a bad row stops with file:line, or --on-error skip
counts it; every input row left out is counted by reason):
  nli     SNLI/MNLI JSONL or TSV (premise/hypothesis/label) -> premise, entailments as positives,
          contradictions as hard negatives (neutral left out)
  logs    JSONL {query, clicked, shown?} -> clicked as positives, shown-but-not-clicked as hard
          negatives (else --random-negatives documents clicked for other queries)
  nsp     documents (JSONL --field, or blank-line-separated text) -> (sentence, next sentence)
  span    passages -> two views with different spans removed (unsupervised positives)
  simcse  sentences (JSONL --field, or one per line) -> (sentence, same sentence)
  dedup   FlagEmbedding JSONL -> the same rows without near-duplicate queries (embeddings, FAISS,
          cosine >= --threshold); --report writes the pairs found"""

KINDS = ("nli", "logs", "nsp", "span", "simcse", "dedup")  # embedray.data.builders.KINDS
# The flags only some builders take: flag → kinds.
_ONLY = {"field": ("nsp", "span", "simcse"), "min_chars": ("nsp", "simcse"), "ratio": ("span",),
         "random_negatives": ("logs",), "seed": ("logs", "span"), "model": ("dedup",), "threshold": ("dedup",),
         "report": ("dedup",), "language": ("nsp",)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the flags of ``embedray data build``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("kind", choices=KINDS, help="what to build")
    parser.add_argument("input", type=Path, help="the input file")
    parser.add_argument("--output", "-o", type=Path, required=True, help="FlagEmbedding JSONL to write")
    parser.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                        help="a bad input row stops with file:line (raise) or is skipped and counted")
    parser.add_argument("--field", default=None, help="JSONL field holding the text (default: text)")
    parser.add_argument("--min-chars", type=int, default=None, help="shortest sentence kept (nsp 20, simcse 1)")
    parser.add_argument("--language", default=None, help="nsp: the sentence splitter's language (default en)")
    parser.add_argument("--ratio", type=float, default=None, help="span: share of words removed per view (0.15)")
    parser.add_argument("--random-negatives", type=int, default=None,
                        help="logs: negatives for a query shown nothing unclicked (default 1)")
    parser.add_argument("--seed", type=int, default=None, help="logs/span: random choices (default 0)")
    parser.add_argument("--model", default=None, help="dedup: the embedding model (default minilm-l6)")
    parser.add_argument("--threshold", type=float, default=None, help="dedup: cosine at or above which "
                                                                      "two queries are near-duplicates (0.95)")
    parser.add_argument("--report", type=Path, default=None, help="dedup: JSONL of the near-duplicate pairs")


def run(args: argparse.Namespace) -> int:
    """Build, write atomically, print the counts; 0 on success, 1 on an input error."""
    from embedray.data import DataError
    from embedray.data import builders as b
    from embedray.data.flag import write_flag_jsonl

    for name, kinds in _ONLY.items():
        if getattr(args, name) is not None and args.kind not in kinds:
            print(f"error: --{name.replace('_', '-')} applies to {', '.join(kinds)}, not {args.kind}", file=sys.stderr)
            return 2
    opt = lambda name, default: default if getattr(args, name) is None else getattr(args, name)  # noqa: E731
    try:
        if args.kind == "nli":
            rows, stats = b.build_nli(args.input, args.on_error)
        elif args.kind == "logs":
            rows, stats = b.build_logs(args.input, opt("random_negatives", 1), opt("seed", 0), args.on_error)
        elif args.kind == "nsp":
            rows, stats = b.build_nsp(args.input, opt("field", "text"), opt("min_chars", 20), opt("language", "en"),
                                      args.on_error, progress=True)
        elif args.kind == "span":
            rows, stats = b.build_span(args.input, opt("field", "text"), opt("ratio", 0.15), seed=opt("seed", 0),
                                       on_error=args.on_error)
        elif args.kind == "simcse":
            rows, stats = b.build_simcse(args.input, opt("field", "text"), opt("min_chars", 1), args.on_error)
        else:
            rows, stats = _dedup(args, opt("model", "minilm-l6"), opt("threshold", 0.95))
    except (DataError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    write_flag_jsonl(rows, args.output)
    print(stats.summary())
    print(f"wrote {args.output.resolve()}")
    return 0


def _dedup(args: argparse.Namespace, model_name: str, threshold: float):
    from embedray.atomic import atomic_open
    from embedray.data import SkipReport
    from embedray.data import builders as b
    from embedray.models import load_encoder

    report = SkipReport()
    examples = list(b.iter_examples(args.input, args.on_error, report))
    model = load_encoder(model_name)
    encode = lambda texts: model.encode(texts, batch_size=64, normalize_embeddings=True,  # noqa: E731
                                        show_progress_bar=len(texts) > 1000)
    kept, pairs, stats = b.dedup_examples(examples, encode, threshold)
    stats.report = report
    if args.report is not None:
        with atomic_open(args.report) as f:
            for i, j, cos in pairs:
                f.write(json.dumps({"kept": examples[i].query, "removed": examples[j].query, "cosine": round(cos, 4)})
                        + "\n")
    return kept, stats
