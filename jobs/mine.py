"""Entrypoint for ``ray job submit -- python jobs/mine.py --model M --data DIR --output hn.jsonl ...``.

Same flags as ``embedray mine`` (see ``--help``); under ``ray job submit`` the corpus is encoded
by Ray Data actors (``--ray`` is on by default here), so ``--num-actors`` / ``--gpus-per-actor``
scale it out on the cluster.
"""
import argparse
import sys

from embedray.cli import mine


def main(argv: list[str] | None = None) -> int:
    parser = mine.add_arguments(argparse.ArgumentParser(prog="jobs/mine.py"))
    parser.add_argument("--no-ray", dest="ray", action="store_false",
                        help="encode in this process instead of on Ray Data actors")
    parser.set_defaults(ray=True)
    return mine.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
