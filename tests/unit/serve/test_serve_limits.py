"""Bounded work on every route, in-process: body, queue and request timeouts, the rerank
limits, highlighting linear in the query, paths kept out of /info, keys kept out of argv."""
from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time

import numpy as np
import orjson
import pytest

from embedray.serve.batching import ModelRunQueue, Part, QueueTimeout

INFO = {"dim": 32, "max_seq_length": 128, "normalized": True, "corpus_size": 0, "max_batch_tokens": 8192}


def _app(tiny_model, backend, **cfg):
    from embedray.serve.app import create_app
    from embedray.serve.config import ServeConfig
    from embedray.serve.embedder import TokenCounter, load_tokenizer

    return create_app(ServeConfig(str(tiny_model), **cfg), backend, dict(INFO),
                      TokenCounter(load_tokenizer(tiny_model), 128))


async def _asgi(app, method: str, path: str, chunks: list[bytes], then_hang: bool, headers=()):
    """Drive ``app`` with a client that sends ``chunks`` and then (``then_hang``) nothing more."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "path": path, "raw_path": path.encode(), "root_path": "", "scheme": "http", "query_string": b"",
             "headers": [(b"content-type", b"application/json"), *headers], "server": ("127.0.0.1", 80),
             "client": ("127.0.0.1", 1)}
    queue = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
    if not then_hang:
        queue.append({"type": "http.request", "body": b"", "more_body": False})
    sent: list[dict] = []

    async def receive():
        if queue:
            return queue.pop(0)
        await asyncio.Event().wait()

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body)


def test_half_sent_body_is_dropped_with_408(tiny_model):
    class Unused:
        async def embed_part(self, part):
            raise AssertionError("never reached")

    app = _app(tiny_model, Unused(), body_timeout_s=0.3)
    t0 = time.perf_counter()
    status, body = asyncio.run(_asgi(app, "POST", "/v1/embeddings", [b'{"input": "hal'], then_hang=True,
                                     headers=[(b"content-length", b"100")]))
    took = time.perf_counter() - t0
    assert status == 408 and body["error"]["code"] == "body_timeout", body
    assert 0.25 < took < 5
    # a body that arrives whole in pieces is read as usual
    status, _ = asyncio.run(_asgi(app, "POST", "/health", [b"{", b"}"], then_hang=False))
    assert status in (200, 405)


def test_request_that_the_model_does_not_finish_is_a_504(tiny_model, error_shape):
    from fastapi.testclient import TestClient

    class Stuck:
        async def embed_part(self, part):
            await asyncio.sleep(3600)

    client = TestClient(_app(tiny_model, Stuck(), request_timeout_s=0.5), raise_server_exceptions=False)
    t0 = time.perf_counter()
    err = error_shape(client.post("/v1/embeddings", json={"input": "a"}), 504, "timeout")
    assert time.perf_counter() - t0 < 5 and "request_timeout_s=0.5" in err["message"]
    assert client.get("/health").status_code == 200


def test_a_part_the_model_does_not_take_in_time_is_a_503_with_retry_after(tiny_model, error_shape):
    from fastapi.testclient import TestClient

    class Queued:
        async def embed_part(self, part):
            raise QueueTimeout("waited 0.1 s for the model")

    client = TestClient(_app(tiny_model, Queued()), raise_server_exceptions=False)
    r = client.post("/v1/embeddings", json={"input": "a"})
    error_shape(r, 503, "queue_timeout")
    assert r.headers["retry-after"] == "2"


def _held_model():
    """A model function that records what it runs and holds each run until ``release`` is set."""
    release, ran = threading.Event(), []

    def fn(parts):
        ran.extend(t for p in parts for t in p.texts)
        release.wait(10)
        return [np.zeros((len(p.texts), 1)) for p in parts]

    return fn, release, ran


def test_model_run_queue_times_out_waiting_parts_and_never_runs_them():
    fn, release, ran = _held_model()

    async def main():
        q = ModelRunQueue(fn, max_tokens=1, queue_timeout_s=0.2)
        first = asyncio.create_task(q.submit([Part(["running"], [1])]))
        await asyncio.sleep(0.05)
        with pytest.raises(QueueTimeout):
            await q.submit([Part(["waiting"], [1])])  # the model is busy with the first past the timeout
        release.set()
        (rows,), _ = await first
        assert rows.shape == (1, 1)
        await asyncio.sleep(0.1)

    asyncio.run(main())
    assert ran == ["running"]


def test_cancelled_submit_is_not_run():
    fn, release, ran = _held_model()

    async def main():
        q = ModelRunQueue(fn, max_tokens=1)
        first = asyncio.create_task(q.submit([Part(["running"], [1])]))
        await asyncio.sleep(0.05)
        gone = asyncio.create_task(q.submit([Part(["abandoned"], [1])]))
        await asyncio.sleep(0.05)
        gone.cancel()
        release.set()
        await first
        await asyncio.sleep(0.1)

    asyncio.run(main())
    assert ran == ["running"]


def test_rerank_texts_are_bounded(make_client, tiny_model, tiny_cross_encoder, error_shape):
    client = make_client(tiny_model, cross_encoder=str(tiny_cross_encoder), max_rerank_texts=4)
    assert client.post("/rerank", json={"query": "q", "texts": ["a"] * 4}).status_code == 200
    err = error_shape(client.post("/rerank", json={"query": "q", "texts": ["a"] * 5}), 413, "too_many_inputs")
    assert "limit of 4" in err["message"]
    error_shape(client.post("/rerank", json={"query": "q", "texts": ["a" * 40_000]}), 413, "input_too_long")
    limits = client.get("/info").json()["limits"]
    assert limits["max_rerank_texts"] == 4 and limits["request_timeout_s"] == 60.0
    assert {"body_timeout_s", "queue_timeout_s", "max_rerank_queued"} <= set(limits)


def test_highlighting_is_linear_in_the_query():
    from embedray.serve.corpus import (
        MAX_HIGHLIGHT_TERMS,
        find_highlights,
        make_snippet,
        query_terms,
    )

    rng = np.random.default_rng(0)
    nonsense = " ".join("".join(rng.choice(list("abcdefghij"), 6)) for _ in range(4700))  # ~32 KB
    terms = query_terms(nonsense + " zstd")
    assert len(nonsense) > 32_000 and len(terms) == MAX_HIGHLIGHT_TERMS
    text = "zstd compresses files fast " * 400
    assert find_highlights(text, ["zst", "fast", "f"])[:3] == [(0, 4), (16, 21), (22, 26)]
    snippet, spans = make_snippet(text, ["files"], 60)
    assert snippet[spans[0][0]:spans[0][1]] == "files"


def test_info_shows_no_absolute_paths(make_client, matryoshka_model, tmp_path):
    import shutil

    model = tmp_path / "student"
    shutil.copytree(matryoshka_model, model)
    card = json.loads((model / "embedray.json").read_text())
    card.update(base_model=str(tmp_path / "models" / "minilm-l6"),
                training={"data": str(tmp_path / "data" / "debian"), "nested": [{"teacher": "/srv/t"}], "steps": 3})
    (model / "embedray.json").write_text(json.dumps(card))
    client = make_client(model)
    info = client.get("/info").json()
    assert str(tmp_path) not in json.dumps(info)
    assert info["base_model"] == "minilm-l6" and info["training"]["data"] == "debian"
    assert info["training"]["nested"] == [{"teacher": "t"}] and info["training"]["steps"] == 3


def test_api_key_comes_from_a_file_or_the_environment_never_argv(tiny_model, tmp_path, monkeypatch, capsys):
    from embedray.cli.serve import add_arguments as add_serve_arguments
    from embedray.cli.serve import config_from_args
    from embedray.cli.ui import add_arguments as add_ui_arguments
    from embedray.serve.config import ServeConfig

    monkeypatch.delenv("EMBEDRAY_API_KEY", raising=False)
    key = tmp_path / "key"
    key.write_text("s3cret\n")
    parser = add_serve_arguments(argparse.ArgumentParser())
    assert config_from_args(parser.parse_args([str(tiny_model), "--api-key-file", str(key)])).api_key == "s3cret"
    for p in (parser, add_ui_arguments(argparse.ArgumentParser())):
        with pytest.raises(SystemExit):
            p.parse_args([str(tiny_model), "--api-key", "s3cret"] if p is parser else ["--api-key", "s3cret"])
        assert "process list" in capsys.readouterr().err
    monkeypatch.setenv("EMBEDRAY_API_KEY", "from-env")
    assert config_from_args(parser.parse_args([str(tiny_model)])).api_key == "from-env"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        ServeConfig(str(tiny_model), api_key_file=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="cannot read"):
        ServeConfig(str(tiny_model), api_key_file=str(tmp_path / "missing"))


def test_timeouts_must_be_positive(tiny_model):
    from embedray.serve.config import ServeConfig

    for name in ("body_timeout_s", "queue_timeout_s", "request_timeout_s"):
        with pytest.raises(ValueError, match=name):
            ServeConfig(str(tiny_model), **{name: 0})
    assert ServeConfig(str(tiny_model), body_timeout_s=0.5).body_timeout_s == 0.5


def test_health_checks_need_a_working_model(tiny_model, tiny_cross_encoder):
    from embedray.serve.embedder import EmbedderCore, RerankerCore

    core = EmbedderCore(tiny_model)
    core.check()
    core.model.encode = lambda texts, **kw: np.full((len(texts), core.dim), np.nan, np.float32)
    with pytest.raises(RuntimeError, match="non-finite"):
        core.check()
    ce = RerankerCore(tiny_cross_encoder)
    ce.check()
    ce.model.predict = lambda pairs, **kw: np.array([np.nan])
    with pytest.raises(RuntimeError, match="non-finite"):
        ce.check()


def test_ray_backend_maps_a_dead_reranker_to_503():
    from ray.exceptions import ActorDiedError, ActorUnavailableError

    from embedray.cluster.serve_app import RayBackend
    from embedray.serve.errors import ApiError

    async def raising(exc):
        raise exc

    backend = RayBackend(None, None, "ce", 8, 4)
    for exc in (ActorDiedError(), ActorUnavailableError("gone", None)):
        with pytest.raises(ApiError) as err:
            asyncio.run(backend._call(raising(exc), "cross-encoder"))
        assert err.value.status == 503 and err.value.code == "unavailable" and "cross-encoder" in err.value.message
    with pytest.raises(ApiError) as err:
        asyncio.run(backend._call(raising(QueueTimeout("waited 1 s")), "model"))
    assert err.value.status == 503 and err.value.code == "queue_timeout"


def test_embedding_body_is_orjson(make_client, tiny_model):
    client = make_client(tiny_model)
    r = client.post("/v1/embeddings", json={"input": ["a", "b"], "dimensions": 32})
    assert r.status_code == 200 and orjson.loads(r.content)["data"][1]["index"] == 1


def test_ui_titles_untitled_results_by_id_and_warns_off_loopback():
    from tests.ui_app import load_ui_module

    ui = load_ui_module()
    payload = {"model": "m", "results": [{"rank": 1, "id": "zstd", "title": "", "snippet": "fast",
                                          "highlights": [], "score": 0.5, "retrieval_score": 0.5}]}
    out = ui.render_results(payload)
    assert "(untitled)" not in out and '<span class="er-title">zstd</span>' in out
    assert ui.exposure_warning("127.0.0.1", 7860) is None and ui.exposure_warning("localhost", 7860) is None
    assert "no login" in ui.exposure_warning("0.0.0.0", 7860)
    assert ui.launch_kwargs("127.0.0.1", 7860)["max_file_size"] == ui.MAX_UPLOAD
    info = {"model": "student", "base_model": "/home/u/models/minilm-l6", "dim": 8}
    assert "/home/u" not in ui.render_info(info, "http://x") and "minilm-l6" in ui.render_info(info, "http://x")
