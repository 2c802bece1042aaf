"""``embedray``: the command line, one module per command in this package.

Each module has ``HELP`` (and optionally ``DESCRIPTION``), ``add_arguments(parser)`` and
``run(args) -> exit status``; heavy imports (torch, ray) wait inside ``run`` so that
``embedray --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from embedray import __version__

#: (command, module under embedray.cli); ``data`` has subcommands (one per dataset).
COMMANDS = [("eval", "eval"), ("train", "train"), ("mine", "mine"), ("pipeline", "pipeline"), ("rotate", "rotate"),
            ("export", "export"), ("serve", "serve"), ("ui", "ui"), ("models", "models")]
DATASETS = [("debian", "data"), ("flag", "data_flag"), ("build", "data_build")]


def _add(sub, name: str, module: str) -> None:
    mod = importlib.import_module(f"embedray.cli.{module}")
    p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP))
    mod.add_arguments(p)
    p.set_defaults(func=mod.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embedray", description="Train, distill and serve text embedding models on Ray.",
        epilog="Run 'embedray COMMAND --help' for a command's options. Models: bundled names "
               "(see 'embedray models'), local folders, or s3:// / gs:// / hdfs:// URIs of folders (mirrored "
               "once into $EMBEDRAY_CACHE/.data); no model hub is used.")
    parser.add_argument("--version", action="version", version=f"embedray {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data = sub.add_parser("data", help="build datasets").add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for name, module in DATASETS:
        _add(data, name, module)
    for name, module in COMMANDS:
        _add(sub, name, module)
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
