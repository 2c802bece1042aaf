"""Serving the ONNX export (``--backend onnx``, or ``auto`` on an int8 export): the same routes, the
backend and precision in /info."""
from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from embedray.models.backends import INT8_FILE, ONNX_FILE
from embedray.serve.config import ServeConfig

TEXTS = ["A fast compression tool.", "Debian packages", "x", "The quick brown fox jumps over the lazy dog " * 3]


@pytest.fixture(scope="module")
def onnx_model(matryoshka_model, tmp_path_factory):
    """The Matryoshka tiny-bert with ``onnx/model.onnx`` and its int8 file."""
    from embedray.models.export import export_model

    out = tmp_path_factory.mktemp("served") / "tiny-onnx"
    export_model(matryoshka_model, out, quantize="int8")
    return out


def _embed(client, texts, **extra) -> np.ndarray:
    r = client.post("/v1/embeddings", json={"input": texts, **extra})
    assert r.status_code == 200, r.text
    return np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)


@pytest.mark.parametrize("file_name,precision,atol", [(ONNX_FILE, "fp32", 1e-5), (INT8_FILE, "int8", None)])
def test_onnx_backend_serves_embeddings_and_says_so(make_client, onnx_model, file_name, precision, atol):
    client = make_client(onnx_model, backend="onnx", onnx_file=file_name)
    expected = SentenceTransformer(str(onnx_model), device="cpu").encode(TEXTS)  # torch, (n, 32)
    got = _embed(client, TEXTS)
    if atol is not None:
        np.testing.assert_allclose(got, expected, atol=atol)
    else:
        assert (got * expected).sum(axis=1).min() >= 0.99
    info = client.get("/info").json()
    assert (info["backend"], info["onnx_file"], info["precision"]) == ("onnx", file_name, precision)
    assert info["dimensions"] == [32, 16, 8]
    assert _embed(client, TEXTS[:2], dimensions=8).shape == (2, 8)


def test_onnx_backend_searches_the_corpus(make_client, onnx_model, corpus_file):
    client = make_client(onnx_model, backend="onnx", onnx_file=INT8_FILE, corpus=str(corpus_file))
    r = client.post("/search", json={"query": "Debian is a Linux distribution", "top_k": 2})
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == 2


def test_auto_backend_is_torch_without_an_export(make_client, tiny_model):
    assert ServeConfig(str(tiny_model), convert=False).backend == "torch"
    info = make_client(tiny_model).get("/info").json()
    assert info["backend"] == "torch" and info["onnx_file"] is None


def test_auto_backend_serves_the_int8_export(make_client, onnx_model):
    cfg = ServeConfig(str(onnx_model))
    assert (cfg.backend, cfg.onnx_file) == ("onnx", INT8_FILE)
    info = make_client(onnx_model, precision="auto").get("/info").json()
    assert (info["backend"], info["onnx_file"], info["precision"]) == ("onnx", INT8_FILE, "int8")
    # A forced precision is a torch precision: auto does not swap it for int8.
    for precision in ("fp32", "bf16"):
        assert ServeConfig(str(onnx_model), precision=precision).backend == "torch"
    assert ServeConfig(str(onnx_model), backend="torch").backend == "torch"


def test_backend_is_validated(onnx_model, tiny_model, tmp_path):
    with pytest.raises(ValueError, match="'tensorrt' is not a backend; choose one of torch, onnx"):
        ServeConfig(str(onnx_model), backend="tensorrt")
    with pytest.raises(ValueError, match=r"onnx_file: .*it has no ONNX export.*embedray export"):
        ServeConfig(str(tiny_model), backend="onnx")
    with pytest.raises(ValueError, match=rf"onnx_file: .*model_qint8_avx2.onnx does not exist \(it has {ONNX_FILE}"):
        ServeConfig(str(onnx_model), backend="onnx", onnx_file="model_qint8_avx2.onnx")
    with pytest.raises(ValueError, match="bf16 applies to the torch backend"):
        ServeConfig(str(onnx_model), backend="onnx", precision="bf16")
    cfg = ServeConfig(str(onnx_model), backend="onnx", onnx_file=INT8_FILE)
    assert cfg.backend == "onnx" and cfg.onnx_file == INT8_FILE


def test_serve_flags(onnx_model):
    import argparse

    from embedray.cli.serve import add_arguments as add_serve_arguments
    from embedray.cli.serve import config_from_args

    parser = add_serve_arguments(argparse.ArgumentParser())
    cfg = config_from_args(parser.parse_args([str(onnx_model), "--backend", "onnx", "--onnx-file", INT8_FILE]))
    assert (cfg.backend, cfg.onnx_file) == ("onnx", INT8_FILE)
    assert "auto|torch|onnx" in parser.format_help()
