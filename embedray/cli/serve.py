"""``embedray serve``: one flag per :class:`ServeConfig` field; Ray Serve (the replica on its own
port, or the proxy) serves the model until Ctrl-C, the Gradio demo beside it with ``--ui``."""
from __future__ import annotations

import argparse
import inspect
import re
from dataclasses import MISSING, fields
from pathlib import Path

from embedray.cli.ui import RefuseKeyInArgv, start_ui_process
from embedray.models.bundled import BUNDLED, cache_dir, resolve_model
from embedray.serve.config import API_KEY_ENV, ServeConfig

SERVE_DESCRIPTION = f"""\
Serve a sentence-transformers model over HTTP with Ray Serve (127.0.0.1:8000 by default):
POST /v1/embeddings (OpenAI-compatible), POST /search (needs --corpus), POST /rerank (needs
--cross-encoder), GET /health, /info, /metrics, /docs. Requests are batched dynamically under a
token budget; oversized requests are split, not refused. Ctrl-C stops the server and the local
Ray instance it started (set RAY_ADDRESS to use a running cluster instead).

examples:
  embedray serve minilm-l6
  embedray serve runs/demo/student --corpus data/debian --cross-encoder runs/demo/cross-encoder
  embedray serve minilm-l6 --host 0.0.0.0 --api-key-file ~/.config/embedray/api_key --replicas 2
  (or {API_KEY_ENV}=... in the environment; a key on the command line would be visible in `ps`)
"""

# Fields set by their own flags (positional model) or never from the command line (the key
# itself: argv is visible to every user of the machine; --api-key-file and the environment are not).
_SPECIAL = {"model_dir", "api_key"}


def _field_docs(cls) -> dict[str, str]:
    """``{field: help}`` from the ``Attributes:`` section of a dataclass docstring."""
    doc = inspect.getdoc(cls) or ""
    section = doc.split("Attributes:", 1)[-1]
    docs, current = {}, None
    for line in section.splitlines():
        m = re.match(r"\s{4}(\w+): (.*)", line)
        if m:
            current = m.group(1)
            docs[current] = m.group(2).strip()
        elif current and line.strip():
            docs[current] += " " + line.strip()
    return docs


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register the ``embedray serve`` flags on ``parser`` (one per :class:`ServeConfig` field)."""
    parser.description = SERVE_DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("model_dir", metavar="MODEL_DIR",
                        help="sentence-transformers folder, or a bundled model name (minilm-l6, tiny-bert, ...)")
    parser.add_argument("--base-model", metavar="MODEL_DIR", default=None,
                        help="also serve this model (e.g. the base model the student was distilled from) "
                             "at /base on the same port, with the same corpus and limits, for the UI's "
                             "side-by-side comparison")
    parser.add_argument("--ui", action="store_true",
                        help="also launch the Gradio demo on 127.0.0.1 (port --ui-port)")
    parser.add_argument("--ui-port", type=int, default=7860, metavar="N", help="(default: %(default)s)")
    docs = _field_docs(ServeConfig)
    for f in fields(ServeConfig):
        if f.name in _SPECIAL:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = None if f.default is MISSING else f.default
        help_text = docs.get(f.name, "").replace("``", "").replace("%", "%%")
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
            continue
        kind = {int: int, float: float}.get(type(default), str)
        metavar = {"corpus": "PATH", "index": "DIR", "index_type": "flat|int8|binary", "backend": "auto|torch|onnx|openvino",
                   "precision": "auto|fp32|bf16", "ingress": "auto|replica|proxy", "gpus_per_replica": "auto|N", "cross_encoder": "DIR", "api_key_file": "FILE",
                   "model_name": "NAME", "host": "HOST"}.get(f.name, {int: "N", float: "X"}.get(kind))
        parser.add_argument(flag, type=kind, default=default, metavar=metavar,
                            help=help_text + (" (default: %(default)s)" if default is not None else ""))
    parser.add_argument("--api-key", action=RefuseKeyInArgv, help=argparse.SUPPRESS)
    return parser


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """Build a :class:`ServeConfig` from parsed ``embedray serve`` flags (resolves bundled names)."""
    values = {f.name: getattr(args, f.name) for f in fields(ServeConfig)
              if f.name not in _SPECIAL and hasattr(args, f.name)}
    if values.get("model_name") is None:
        values["model_name"] = _display_name(args.model_dir)
    if values.get("corpus"):
        from embedray.data.remote import MIRROR_DIR, local_data

        values["corpus"] = local_data(values["corpus"], "--corpus", cache_dir() / MIRROR_DIR)
    return ServeConfig(model_dir=str(resolve_model(args.model_dir)), **values)


def _display_name(model: str) -> str:
    """A bundled model keeps its short name (its folder is called ``model``); a folder its name."""
    return model if model in BUNDLED or model.startswith("tiny-bert@") else Path(model).expanduser().resolve().name


def run(args: argparse.Namespace) -> int:
    """``embedray serve``: start Ray Serve with the model (and ``--base-model`` at ``/base``,
    and the UI with ``--ui``), print the URLs and block until Ctrl-C. Returns 0."""
    import dataclasses

    from embedray.models.backends import ONNX_FILE, has_openvino_export
    from embedray.models.export import CONVERTED_DIR

    cfg = config_from_args(args)
    base = None
    if getattr(args, "base_model", None):
        base = dataclasses.replace(cfg, model_dir=str(resolve_model(args.base_model)),
                                   model_name=_display_name(args.base_model), cross_encoder=None, replicas=1,
                                   backend="torch" if getattr(args, "backend", "auto") == "torch" else "auto",
                                   onnx_file=ONNX_FILE)
    for served in (cfg, base):
        if served is not None and served.backend == "openvino" and not has_openvino_export(served.model_dir):
            print(f"{served.model_name}: served with OpenVINO from a converted copy (made once, kept in "
                  f"{cache_dir() / CONVERTED_DIR}; --backend torch or --no-convert serves it with torch)", flush=True)
    on_ready = None
    if getattr(args, "ui", False):
        def on_ready(urls: dict[str, str]):
            return start_ui_process(urls["api"], urls["base_api"], cfg.api_key, "127.0.0.1", args.ui_port)

    from embedray.cluster.serve_app import serve_forever  # ray: only when serving

    return serve_forever(cfg, base=base, on_ready=on_ready)


HELP = "serve a model over HTTP (OpenAI /v1/embeddings, /search, /rerank)"
