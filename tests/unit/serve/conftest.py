"""Fixtures for the serving unit tests: tiny models, a small corpus, an in-process app."""
from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

DOCS = [
    {"_id": "py", "title": "Python", "text": "Python is a programming language used for scripting, "
                                             "automation and data science."},
    {"_id": "deb", "title": "Debian", "text": "Debian is a Linux distribution; apt installs and upgrades "
                                              "its packages."},
    {"_id": "cof", "title": "Coffee", "text": "Coffee is a brewed drink prepared from roasted coffee beans."},
    {"_id": "zst", "title": "zstd", "text": "Zstandard is a fast lossless compression algorithm with a "
                                            "command line tool for compressing files."},
    {"_id": "git", "title": "", "text": "Git is a distributed version control system for tracking changes "
                                        "in source code during software development."},
]


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    from embedray.models.bundled import resolve_model

    return resolve_model("tiny-bert")


@pytest.fixture(scope="session")
def matryoshka_model(tiny_model, tmp_path_factory) -> Path:
    """A copy of tiny-bert with an ``embedray.json`` declaring Matryoshka dims 16 and 8."""
    folder = tmp_path_factory.mktemp("mrl") / "tiny-mrl"
    shutil.copytree(tiny_model, folder)
    (folder / "embedray.json").write_text(json.dumps({
        "matryoshka_dims": [32, 16, 8], "base_model": "tiny-bert",
        "metrics": {"ndcg@10": 0.4321}, "training": {"steps": 7}}))
    return folder


@pytest.fixture(scope="session")
def tiny_cross_encoder(tiny_model, tmp_path_factory) -> Path:
    """A cross-encoder with a fresh one-label head on tiny-bert, saved as a folder."""
    from sentence_transformers import CrossEncoder

    folder = tmp_path_factory.mktemp("ce") / "tiny-ce"
    CrossEncoder(str(tiny_model), num_labels=1).save(str(folder))
    return folder


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in DOCS), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def _cores():
    """EmbedderCore / RerankerCore instances cached by their arguments (loading takes a second)."""
    return {}


@pytest.fixture
def make_client(_cores):
    """``make_client(model_dir, **config)`` → a TestClient over the app with a LocalBackend."""
    from fastapi.testclient import TestClient

    from embedray.serve.app import build_app
    from embedray.serve.backend import LocalBackend
    from embedray.serve.config import ServeConfig
    from embedray.serve.embedder import EmbedderCore, RerankerCore

    clients = []

    def make(model_dir, **overrides):
        # fp32 unless a test asks otherwise: most compare with sentence-transformers' fp32 output
        cfg = ServeConfig(str(model_dir), **{"precision": "fp32", **overrides})
        key = ("emb", cfg.model_dir, cfg.corpus, cfg.max_batch_tokens, cfg.precision, cfg.index_type,
               cfg.backend, cfg.onnx_file)
        if key not in _cores:
            _cores[key] = EmbedderCore(cfg.model_dir, cfg.corpus, max_batch_tokens=cfg.max_batch_tokens,
                                       precision=cfg.precision, index_type=cfg.index_type,
                                       backend=cfg.backend, onnx_file=cfg.onnx_file)
        reranker = None
        if cfg.cross_encoder:
            ckey = ("ce", cfg.cross_encoder, cfg.precision)
            if ckey not in _cores:
                _cores[ckey] = RerankerCore(cfg.cross_encoder, precision=cfg.precision)
            reranker = _cores[ckey]
        backend = LocalBackend(_cores[key], reranker, Path(cfg.cross_encoder).name if reranker else None,
                               cfg.queue_timeout_s)
        client = TestClient(asyncio.run(build_app(cfg, backend)), raise_server_exceptions=False)
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()


def _assert_error_shape(response, status: int, code: str | None = None) -> dict:
    """The response is ``status`` with the JSON error shape (and ``code`` when given)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "code"}, body
    assert all(isinstance(v, str) and v for v in body["error"].values()), body
    assert "Traceback" not in response.text
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


@pytest.fixture
def error_shape():
    """``error_shape(response, status, code=None)`` asserts the JSON error shape, returns the error."""
    return _assert_error_shape


PROMPTS = {"query": "query: ", "document": "passage: ", "sections-query": "Classify the Debian section: "}


@pytest.fixture(scope="session")
def prompted_model(tiny_model, tmp_path_factory) -> Path:
    """A copy of tiny-bert whose sentence-transformers config has E5-style prompts (``document``
    the default) and a task prompt, as a multi-task export writes them."""
    folder = tmp_path_factory.mktemp("prompted") / "tiny-prompted"
    shutil.copytree(tiny_model, folder)
    cfg_path = folder / "config_sentence_transformers.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(prompts=PROMPTS, default_prompt_name="document")
    cfg_path.write_text(json.dumps(cfg))
    return folder
