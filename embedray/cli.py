"""``embedray``: the command line. Each subcommand's flags and logic live in its package;
this file only wires them together."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from embedray import __version__


def _add_job_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML recipe (see jobs/configs/)")
    p.add_argument("overrides", nargs="*", metavar="key.path=value",
                   help="dotted overrides, e.g. train.max_steps=50 model.name_or_path=tiny-bert")


def _run_train(args: argparse.Namespace) -> int:
    from embedray.config import TrainJobConfig, load_config
    job = load_config(TrainJobConfig, args.config, args.overrides)
    if args.local:
        from embedray.training.local import run_local
        summary = run_local(job)
    else:
        from embedray.cluster.train import run_training
        summary = run_training(job)
    print(json.dumps(summary, indent=2))
    return 0


def _run_models(args: argparse.Namespace) -> int:
    from embedray.models.bundled import BUNDLED, resolve_model
    for name, what in BUNDLED.items():
        print(f"{name:12s} {what}")
        if args.resolve:
            print(f"{'':12s} -> {resolve_model(name)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from embedray.data.debian import add_data_debian_arguments, run_data_debian
    from embedray.eval.command import add_eval_arguments, run_eval

    parser = argparse.ArgumentParser(
        prog="embedray", description="Train, distill and serve text embedding models on Ray.",
        epilog="Run 'embedray COMMAND --help' for a command's options. Models: bundled names "
               "(see 'embedray models') or local folders; nothing is downloaded.")
    parser.add_argument("--version", action="version", version=f"embedray {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="build datasets").add_subparsers(dest="dataset", required=True, metavar="DATASET")
    p = data.add_parser("debian", help="build the built-in Debian package-description dataset (BEIR layout)",
                        description="Queries are package summaries; the relevant document is the package's "
                                    "long description. Deterministic train/dev/test split by package name.")
    add_data_debian_arguments(p)
    p.set_defaults(func=run_data_debian)

    p = sub.add_parser("eval", help="evaluate retrieval (nDCG@10, Recall@k, MRR@10) on a BEIR folder",
                       description="Encode the corpus, search it exactly with FAISS, and score the split's "
                                   "queries with pytrec_eval.")
    add_eval_arguments(p)
    p.set_defaults(func=run_eval)

    p = sub.add_parser("train", help="contrastive training on Ray Train (or --local)",
                       description="Train a bi-encoder from a YAML recipe. Re-running the same "
                                   "cluster.run_name resumes from its newest complete checkpoint.")
    _add_job_arguments(p)
    p.add_argument("--local", action="store_true", help="run in this process without Ray (debugging)")
    p.set_defaults(func=_run_train)

    for name, module, helptext in [
        ("mine", "embedray.mining.cli", "mine hard negatives offline and rescore them (FlagEmbedding JSONL)"),
        ("pipeline", "embedray.cluster.pipeline", "the end-to-end job: baseline → cross-encoder → teacher → student → report"),
        ("rotate", "embedray.models.rotation", "rotate a model onto its principal axes (Matryoshka prefixes)"),
        ("export", "embedray.models.export", "export a model folder to ONNX (fp32, --quantize int8) for fast CPU serving"),
        ("serve", "embedray.serve.cli", "serve a model over HTTP (OpenAI /v1/embeddings, /search, /rerank)"),
        ("ui", "embedray.serve.cli", "the Gradio search demo (talks HTTP to 'embedray serve')"),
    ]:
        mod = __import__(module, fromlist=["_"])
        p = sub.add_parser(name, help=helptext, description=helptext)
        getattr(mod, f"add_{name}_arguments")(p)
        p.set_defaults(func=getattr(mod, f"run_{name}"))

    p = sub.add_parser("models", help="list the bundled models")
    p.add_argument("--resolve", action="store_true", help="also print each model's local folder (builds tiny-bert)")
    p.set_defaults(func=_run_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Dotted overrides may follow flags (``train RECIPE --local train.lr=1e-5``); argparse's
    # positional lists stop at the first flag, so collect the rest here.
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # "no AVX512 build" is not news
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError) as e:  # bad input / config: the message says where and what
        print(f"embedray: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
