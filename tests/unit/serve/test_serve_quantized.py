"""The served corpus index type: ``--index-type flat|int8|binary``, /search over it, /info."""
from __future__ import annotations

import argparse

import pytest

from embedray.cli.serve import add_arguments as add_serve_arguments
from embedray.cli.serve import config_from_args


def test_index_type_flag_parses_and_is_validated(tiny_model, corpus_file, monkeypatch):
    monkeypatch.delenv("EMBEDRAY_API_KEY", raising=False)
    parser = add_serve_arguments(argparse.ArgumentParser())
    cfg = config_from_args(parser.parse_args(["tiny-bert", "--corpus", str(corpus_file), "--index-type", "binary"]))
    assert cfg.index_type == "binary"
    assert config_from_args(parser.parse_args([str(tiny_model)])).index_type == "flat"
    assert "--index-type" in parser.format_help() and "sign bits" in parser.format_help()
    with pytest.raises(ValueError, match="index_type: must be one of flat, int8, binary, got 'pq'"):
        config_from_args(parser.parse_args([str(tiny_model), "--index-type", "pq"]))


@pytest.mark.parametrize("index_type", ["int8", "binary"])
def test_search_over_a_quantized_corpus_index_and_info(make_client, tiny_model, corpus_file, index_type):
    flat = make_client(tiny_model, corpus=str(corpus_file))
    quantized = make_client(tiny_model, corpus=str(corpus_file), index_type=index_type)
    assert flat.get("/info").json()["corpus"] == {"documents": 5, "index_type": "flat"}
    assert quantized.get("/info").json()["corpus"] == {"documents": 5, "index_type": index_type}
    query = {"query": "fast lossless compression of files", "top_k": 3}
    want, got = flat.post("/search", json=query), quantized.post("/search", json=query)
    assert got.status_code == 200, got.text
    assert [h["id"] for h in got.json()["results"]][:1] == [h["id"] for h in want.json()["results"]][:1]


def test_a_saved_binary_index_is_served_as_saved(tiny_model, corpus_file, tmp_path, caplog):
    from embedray.mining.index import VectorIndex
    from embedray.serve.batching import Part
    from embedray.serve.corpus import load_corpus
    from embedray.serve.embedder import EmbedderCore

    built = EmbedderCore(tiny_model, corpus=corpus_file, precision="fp32", index_type="binary")
    assert built.describe()["index_type"] == "binary"
    docs = load_corpus(corpus_file)
    texts = [d.text_for_model for d in docs]
    (emb,) = built.encode_parts([Part(texts, built.counter.count(texts), list(range(len(texts))))])
    VectorIndex.build(emb, [d.id for d in docs], index_type="binary", use_gpu=False).save(tmp_path / "b")
    served = EmbedderCore(tiny_model, corpus=corpus_file, index=tmp_path / "b", precision="fp32")
    assert served.describe()["index_type"] == "binary" and served.corpus.index.rescore_mapped
    assert "serving it as saved" in caplog.text
    assert EmbedderCore(tiny_model, precision="fp32").describe()["index_type"] is None  # no corpus
