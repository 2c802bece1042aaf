"""``embedray ui``: the Gradio search demo (``ui/app.py``), run as its own process.

The demo lives outside the package and talks to ``embedray serve`` over HTTP only; embedray
never imports it (nor gradio, the ``[ui]`` extra): it starts ``ui/app.py`` with this Python and
hands it the API key through the environment, never in argv.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from embedray.serve.config import API_KEY_ENV, read_api_key_file

HELP = "the Gradio search demo (talks HTTP to 'embedray serve')"
#: The demo app of a source checkout (``pip install -e '.[ui]'``).
UI_APP = Path(__file__).resolve().parents[2] / "ui" / "app.py"

UI_DESCRIPTION = """\
The Gradio search demo (127.0.0.1:7860): a search box over the served corpus, a side-by-side
comparison of two served models (e.g. the base model and the distilled student), and model info.
It talks to 'embedray serve' over HTTP only; no share links.

example:
  embedray serve runs/demo/student --corpus data/debian &
  embedray serve minilm-l6 --corpus data/debian --port 8001 &
  embedray ui --api http://127.0.0.1:8000 --base-api http://127.0.0.1:8001
"""



class RefuseKeyInArgv(argparse.Action):
    """``--api-key VALUE``: refused with the ways that keep the key out of the process list."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} would put the key in the process list (ps shows every argument); "
                     f"pass --api-key-file FILE or set {API_KEY_ENV} instead")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register the ``embedray ui`` flags on ``parser``."""
    parser.description = UI_DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--api", default="http://127.0.0.1:8000", metavar="URL",
                        help="the 'embedray serve' endpoint of the model to demo (default: %(default)s)")
    parser.add_argument("--base-api", default=None, metavar="URL",
                        help="a second endpoint (e.g. the base model) for the side-by-side comparison")
    parser.add_argument("--api-key-file", default=None, metavar="FILE",
                        help=f"file holding the API key for --api and --base-api (default: ${API_KEY_ENV})")
    parser.add_argument("--api-key", action=RefuseKeyInArgv, help=argparse.SUPPRESS)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    return parser


def ui_command(api: str, base_api: str | None, host: str, port: int) -> list[str]:
    """The command line that starts the demo (``ui/app.py`` under this Python)."""
    if importlib.util.find_spec("gradio") is None:
        raise ValueError("the Gradio demo needs gradio: pip install -e '.[ui]' (make demo installs it)")
    if not UI_APP.is_file():
        raise FileNotFoundError(f"the Gradio demo ships with the source tree; {UI_APP} is missing")
    return [sys.executable, str(UI_APP), "--api", api, *(["--base-api", base_api] if base_api else []),
            "--host", host, "--port", str(port)]


def _env(api_key: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if api_key:
        env[API_KEY_ENV] = api_key  # the environment, not argv: ps shows every argument
    return env


def start_ui_process(api: str, base_api: str | None = None, api_key: str | None = None,
                     host: str = "127.0.0.1", port: int = 7860) -> Callable[[], None]:
    """Start the demo beside a server; returns the function that stops it."""
    proc = subprocess.Popen(ui_command(api, base_api, host, port), env=_env(api_key))

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return stop


def run(args: argparse.Namespace) -> int:
    """``embedray ui``: run the demo until Ctrl-C; its exit status."""
    key = read_api_key_file(args.api_key_file) if args.api_key_file else os.environ.get(API_KEY_ENV) or None
    proc = subprocess.Popen(ui_command(args.api, args.base_api, args.host, args.port), env=_env(key))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(timeout=10)
        return 130
