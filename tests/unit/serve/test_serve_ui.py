"""Rendering of the Gradio demo (ui/app.py) without a server or a browser."""
from __future__ import annotations

import httpx
import pytest

from tests.ui_app import load_ui_module

ui = load_ui_module()

PAYLOAD = {"model": "student", "reranked": False, "results": [
    {"rank": 1, "id": "zst", "title": "zstd <fast>", "snippet": "a fast compressor & more",
     "highlights": [[2, 6], [7, 17]], "title_highlights": [[6, 10]], "score": 0.91, "retrieval_score": 0.91,
     "rerank_score": None},
    {"rank": 2, "id": "gz", "title": "gzip", "snippet": "classic", "highlights": [], "title_highlights": [],
     "score": 0.5, "retrieval_score": 0.5, "rerank_score": None}]}


def test_highlight_escapes_and_marks():
    assert ui.highlight("a <b> c", [(2, 5)]) == "a <mark>&lt;b&gt;</mark> c"
    assert ui.highlight("abc", [(5, 9), (1, 0)]) == "abc"  # bad spans are ignored


def test_render_results_ranks_scores_and_badges():
    out = ui.render_results(PAYLOAD, only_here={"gz"})
    assert out.index('data-doc-id="zst"') < out.index('data-doc-id="gz"')
    assert "<mark>fast</mark>" in out and "<mark>compressor</mark>" in out
    assert "zstd &lt;<mark>fast</mark>&gt;" in out and "0.9100" in out
    assert out.count("only here") == 1
    assert "<fast>" not in out  # escaped


def test_render_info_and_errors():
    info = {"model": "student", "dim": 384, "dimensions": [384, 128], "max_tokens": 256, "version": "0.1.0",
            "corpus": {"documents": 12}, "reranker": None, "metrics": {"ndcg@10": 0.51234}, "base_model": "minilm"}
    md = ui.render_info(info, "http://x")
    assert "384-d (Matryoshka: 384, 128)" in md and "12 docs" in md and "ndcg@10 = 0.5123" in md
    assert "Matryoshka" not in ui.render_info(dict(info, dimensions=[384]), "http://x")
    assert "unavailable (boom)" in ui.render_info(None, "http://x", "boom")
    assert ui.render_error("<x>") == '<div class="er-error">&lt;x&gt;</div>'


def test_client_reports_server_errors():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/search":
            return httpx.Response(404, json={"error": {"message": "no corpus is served", "type": "t",
                                                       "code": "no_corpus"}})
        return httpx.Response(200, json={"model": "m"})

    client = ui.ApiClient("http://test")
    client.http = httpx.Client(base_url="http://test", transport=httpx.MockTransport(handler))
    assert client.info() == {"model": "m"}
    with pytest.raises(ui.ApiUnavailable, match="404 no_corpus: no corpus is served"):
        client.search("q")
    down = ui.ApiClient("http://127.0.0.1:9", timeout_s=2)
    with pytest.raises(ui.ApiUnavailable, match="cannot reach"):
        down.info()
