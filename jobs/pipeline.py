"""Entrypoint for ``ray job submit -- python jobs/pipeline.py RECIPE.yaml [key=value ...]``."""
import sys

from embedray.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
