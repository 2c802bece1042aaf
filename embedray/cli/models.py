"""``embedray models``: the bundled models (and, with ``--resolve``, their local folders)."""
from __future__ import annotations

import argparse

from embedray.models.bundled import BUNDLED, resolve_model

HELP = "list the bundled models"


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--resolve", action="store_true", help="also print each model's local folder (builds tiny-bert)")
    return p


def run(args: argparse.Namespace) -> int:
    for name, what in BUNDLED.items():
        print(f"{name:12s} {what}")
        if args.resolve:
            print(f"{'':12s} -> {resolve_model(name)}")
    return 0
