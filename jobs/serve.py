"""Entrypoint for ``ray job submit -- python jobs/serve.py MODEL_DIR [--corpus ...] [flags]``.

Under ``ray job submit`` RAY_ADDRESS is set, so the server joins that cluster; the job runs
(and serves) until it is stopped with ``ray job stop``, which removes the application.
"""
import argparse
import sys

from embedray.cli import serve

if __name__ == "__main__":
    parser = serve.add_arguments(argparse.ArgumentParser(prog="jobs/serve.py"))
    sys.exit(serve.run(parser.parse_args()))
