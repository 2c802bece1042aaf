"""The embedray search demo (Gradio): talks to ``embedray serve`` over HTTP only.

* **Search**: a query box over the served corpus; ranked results with scores and the query
  terms highlighted in titles and snippets; optional cross-encoder rerank.
* **Compare**: the same query against two servers side by side (e.g. the base model and the
  distilled student), with the documents only one of them found marked.
* **Model info** from each server's ``/info`` (dims, max tokens, training metrics).

Run with ``embedray ui --api http://127.0.0.1:8000 [--base-api http://127.0.0.1:8001]`` or
``python ui/app.py ...``. Binds 127.0.0.1:7860 (another host warns: the UI has no login); no
share links, no analytics; uploads (Gradio accepts them on every app) are capped at
``MAX_UPLOAD``.
"""
from __future__ import annotations

import html
import ipaddress
import json
import os
import signal
import sys
import threading
from pathlib import PurePath
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402  (after the analytics switch)
import httpx  # noqa: E402

#: Largest file Gradio's upload route accepts; this UI takes no files at all.
MAX_UPLOAD = "1mb"

CSS = """
.er-results { display: flex; flex-direction: column; gap: 10px; }
.er-hit { border: 1px solid #d0d7de; border-radius: 8px; padding: 10px 14px; background: #fff; }
.er-hit.er-only { border-left: 4px solid #e8a33d; }
.er-head { display: flex; gap: 10px; align-items: baseline; }
.er-rank { font-weight: 700; color: #57606a; min-width: 2em; }
.er-title { font-weight: 600; font-size: 1.05em; color: #0b3d91; }
.er-id { color: #6e7781; font-family: monospace; font-size: 0.85em; }
.er-score { margin-left: auto; font-family: monospace; font-size: 0.9em; color: #1a7f37; }
.er-snippet { margin-top: 6px; color: #24292f; line-height: 1.45; }
.er-snippet mark, .er-title mark { background: #fff3a3; padding: 0 1px; border-radius: 2px; }
.er-error { border: 1px solid #cf222e; background: #ffebe9; color: #82071e; border-radius: 8px; padding: 10px; }
.er-note { color: #57606a; font-size: 0.9em; margin-bottom: 4px; }
.er-badge { font-size: 0.75em; background: #e8a33d; color: #fff; border-radius: 4px; padding: 1px 5px; }
"""


class ApiClient:
    """A small HTTP client for one ``embedray serve`` endpoint.

    Args:
        url: base URL, e.g. ``http://127.0.0.1:8000``.
        api_key: sent as a Bearer token when set.
        timeout_s: per-request timeout.
    """

    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 60.0):
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def _call(self, method: str, path: str, body: dict | None = None) -> dict[str, Any]:
        try:
            r = self.http.request(method, path, json=body)
        except httpx.HTTPError as e:
            raise ApiUnavailable(f"cannot reach {self.url}: {e}") from None
        try:
            payload = r.json()
        except json.JSONDecodeError:
            raise ApiUnavailable(f"{self.url}{path} answered {r.status_code} without JSON") from None
        if r.status_code >= 400:
            err = payload.get("error", {}) if isinstance(payload, dict) else {}
            raise ApiUnavailable(f"{r.status_code} {err.get('code', '')}: {err.get('message', r.text)}")
        return payload

    def info(self) -> dict[str, Any]:
        return self._call("GET", "/info")

    def search(self, query: str, top_k: int = 10, rerank: bool = False) -> dict[str, Any]:
        return self._call("POST", "/search", {"query": query, "top_k": int(top_k), "rerank": bool(rerank),
                                              "truncate": True})


class ApiUnavailable(RuntimeError):
    """The server could not be reached or answered with an error."""


def highlight(text: str, spans: list[list[int]] | list[tuple[int, int]]) -> str:
    """HTML-escape ``text`` and wrap the character ``spans`` in ``<mark>``."""
    out, pos = [], 0
    for start, end in sorted((int(a), int(b)) for a, b in spans):
        if start < pos or end > len(text) or start >= end:
            continue
        out.append(html.escape(text[pos:start]))
        out.append(f"<mark>{html.escape(text[start:end])}</mark>")
        pos = end
    out.append(html.escape(text[pos:]))
    return "".join(out)


def render_error(message: str) -> str:
    return f'<div class="er-error">{html.escape(message)}</div>'


def render_results(payload: dict[str, Any], only_here: set[str] | None = None) -> str:
    """HTML for a ``/search`` response; ids in ``only_here`` get an "only here" badge."""
    hits = payload.get("results", [])
    note = (f'<div class="er-note">{len(hits)} results from <b>{html.escape(str(payload.get("model")))}</b>'
            f'{" · reranked by the cross-encoder" if payload.get("reranked") else ""}</div>')
    if not hits:
        return note + '<div class="er-note">no results</div>'
    cards = []
    for h in hits:
        only = only_here is not None and h["id"] in only_here
        # A corpus without titles (Debian descriptions) is titled by its document ids.
        title = highlight(h["title"], h.get("title_highlights", [])) if h.get("title") else html.escape(h["id"])
        doc_id = f'<span class="er-id">{html.escape(h["id"])}</span>' if h.get("title") else ""
        score = f'{h["score"]:.4f}'
        if h.get("rerank_score") is not None:
            score += f' <span title="retrieval score">(ret {h["retrieval_score"]:.3f})</span>'
        badge = ' <span class="er-badge">only here</span>' if only else ""
        cards.append(
            f'<div class="er-hit{" er-only" if only else ""}" data-doc-id="{html.escape(h["id"])}">'
            f'<div class="er-head"><span class="er-rank">#{h["rank"]}</span>'
            f'<span class="er-title">{title}</span>{doc_id}{badge}'
            f'<span class="er-score">{score}</span></div>'
            f'<div class="er-snippet">{highlight(h.get("snippet", ""), h.get("highlights", []))}</div></div>')
    return note + '<div class="er-results">' + "".join(cards) + "</div>"


def _display_name(model: str) -> str:
    """A model's name: a filesystem path shows only its last folder."""
    return PurePath(model).name if model.startswith(("/", "~")) else model


def render_info(info: dict[str, Any] | None, url: str, error: str | None = None) -> str:
    """Markdown summary of a server's ``/info``."""
    if info is None:
        return f"**{url}**: unavailable ({error})"
    corpus = info.get("corpus") or {}
    dims = info.get("dimensions") or []
    mrl = f" (Matryoshka: {', '.join(str(d) for d in dims)})" if len(dims) > 1 else ""
    lines = [f"**{info.get('model')}** at `{url}` · {info.get('dim')}-d{mrl}"
             f" · max {info.get('max_tokens')} tokens · corpus: {corpus.get('documents', 0)} docs"
             f" · reranker: {info.get('reranker') or 'none'} · embedray {info.get('version')}"]
    if info.get("base_model"):
        lines.append(f"base model: `{_display_name(str(info['base_model']))}`")
    metrics = info.get("metrics") or {}
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    if flat:
        lines.append("metrics: " + ", ".join(f"{k} = {v:.4g}" for k, v in sorted(flat.items())))
    return "  \n".join(lines)


def build_ui(api: str, base_api: str | None = None, api_key: str | None = None) -> gr.Blocks:
    """The Gradio app for the server at ``api`` (and ``base_api`` for the comparison tab)."""
    student = ApiClient(api, api_key)
    base = ApiClient(base_api, api_key) if base_api else None

    def load_info() -> tuple[str, gr.Checkbox]:
        parts, has_reranker = [], False
        for client in [student] + ([base] if base else []):
            try:
                info = client.info()
                parts.append(render_info(info, client.url))
                has_reranker = has_reranker or (client is student and bool(info.get("reranker")))
            except ApiUnavailable as e:
                parts.append(render_info(None, client.url, str(e)))
        return "\n\n".join(parts), gr.Checkbox(visible=has_reranker)

    def search(query: str, top_k: float, rerank: bool) -> str:
        if not query or not query.strip():
            return render_error("type a query first")
        try:
            return render_results(student.search(query, int(top_k), rerank))
        except ApiUnavailable as e:
            return render_error(str(e))

    def compare(query: str, top_k: float) -> tuple[str, str]:
        if base is None:
            msg = render_error("no base model server: start the UI with --base-api URL")
            return msg, msg
        if not query or not query.strip():
            msg = render_error("type a query first")
            return msg, msg
        results = {}
        for name, client in (("base", base), ("student", student)):
            try:
                results[name] = client.search(query, int(top_k))
            except ApiUnavailable as e:
                results[name] = e
        ids = {n: {h["id"] for h in r["results"]} for n, r in results.items() if isinstance(r, dict)}
        out = []
        for name, other in (("base", "student"), ("student", "base")):
            r = results[name]
            if isinstance(r, Exception):
                out.append(render_error(str(r)))
            else:
                out.append(render_results(r, ids[name] - ids[other] if other in ids else None))
        return out[0], out[1]

    with gr.Blocks(title="embedray search", analytics_enabled=False) as demo:
        gr.Markdown("# embedray search demo")
        info = gr.Markdown("loading model info…", elem_id="model-info")
        with gr.Tab("Search"):
            with gr.Row():
                query = gr.Textbox(label="Query", placeholder="e.g. fast compression tool", scale=5,
                                   elem_id="query", lines=1, max_lines=1)
                button = gr.Button("Search", variant="primary", scale=1, elem_id="search-btn")
            with gr.Row():
                top_k = gr.Slider(1, 50, value=10, step=1, label="Results")
                rerank = gr.Checkbox(label="Rerank with the cross-encoder", value=False, visible=False)
            results = gr.HTML(elem_id="results")
            button.click(search, [query, top_k, rerank], results)
            query.submit(search, [query, top_k, rerank], results)
        with gr.Tab("Compare base vs student"):
            with gr.Row():
                cquery = gr.Textbox(label="Query", scale=5, elem_id="compare-query", lines=1, max_lines=1)
                cbutton = gr.Button("Compare", variant="primary", scale=1, elem_id="compare-btn")
            ck = gr.Slider(1, 50, value=10, step=1, label="Results")
            with gr.Row():
                with gr.Column():
                    gr.Markdown(f"### Base model  \n`{base_api or 'not configured'}`")
                    left = gr.HTML(elem_id="compare-base")
                with gr.Column():
                    gr.Markdown(f"### Student  \n`{api}`")
                    right = gr.HTML(elem_id="compare-student")
            cbutton.click(compare, [cquery, ck], [left, right])
            cquery.submit(compare, [cquery, ck], [left, right])
        demo.load(load_info, None, [info, rerank])
    return demo


def launch_kwargs(host: str, port: int) -> dict[str, Any]:
    """``Blocks.launch`` arguments: local only, no share link, no SSR, no MCP, our CSS."""
    return {"server_name": host, "server_port": port, "share": False, "inbrowser": False,
            "ssr_mode": False, "mcp_server": False, "enable_monitoring": False, "css": CSS,
            "show_error": False, "quiet": True, "max_file_size": MAX_UPLOAD}


def exposure_warning(host: str, port: int) -> str | None:
    """A warning when the UI is reachable from other machines (it has no login of its own)."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return None
    return (f"the UI listens on {host}:{port}: it has no login, so anyone who can reach this address can "
            "search the served corpus (through the API key the UI was given, if any). Bind 127.0.0.1 and "
            "tunnel to it (ssh -L) unless that is what you want.")


def start_ui(api: str, base_api: str | None = None, api_key: str | None = None,
             host: str = "127.0.0.1", port: int = 7860):
    """Launch the demo in a background thread; returns a function that stops it."""
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per API call otherwise
    warning = exposure_warning(host, port)
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    demo = build_ui(api, base_api, api_key)
    demo.launch(prevent_thread_lock=True, **launch_kwargs(host, port))
    print(f"embedray UI at http://{host}:{port}  (API: {api}{', base: ' + base_api if base_api else ''})",
          flush=True)
    return demo.close


def serve_ui(api: str, base_api: str | None = None, api_key: str | None = None,
             host: str = "127.0.0.1", port: int = 7860) -> int:
    """Launch the demo and block until Ctrl-C / SIGTERM. Returns 0."""
    stop_ui = start_ui(api, base_api, api_key, host, port)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        stop_ui()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python ui/app.py`` (what ``embedray ui`` and ``embedray serve --ui`` start): the flags of
    ``embedray ui``; the API key comes from ``--api-key-file`` or the environment."""
    import argparse

    from embedray.cli.ui import add_arguments
    from embedray.serve.config import API_KEY_ENV, read_api_key_file

    args = add_arguments(argparse.ArgumentParser(prog="ui/app.py")).parse_args(argv)
    key = read_api_key_file(args.api_key_file) if args.api_key_file else os.environ.get(API_KEY_ENV) or None
    return serve_ui(api=args.api, base_api=args.base_api, api_key=key, host=args.host, port=args.port)


if __name__ == "__main__":
    sys.exit(main())
