"""Corpus loading, the FAISS-backed corpus index, snippets and highlights."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from embedray.data.beir import Document
from embedray.data.errors import DataError
from embedray.serve.corpus import CorpusIndex, find_highlights, load_corpus, make_snippet, query_terms


def test_load_corpus_from_jsonl_and_beir_folder(corpus_file, tmp_path):
    docs = load_corpus(corpus_file)
    assert [d.id for d in docs][:2] == ["py", "deb"]
    folder = tmp_path / "beir"
    folder.mkdir()
    (folder / "corpus.jsonl").write_text(corpus_file.read_text())
    assert [d.id for d in load_corpus(folder)] == [d.id for d in docs]


def test_load_corpus_errors(tmp_path):
    with pytest.raises(ValueError, match="no corpus here"):
        load_corpus(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"_id": "a", "text": "x"}) + "\n" + json.dumps({"_id": "a", "text": "y"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2: field '_id': duplicate id"):
        load_corpus(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        load_corpus(empty)


def test_corpus_index_ranks_by_inner_product():
    docs = [Document("a", "alpha", "A"), Document("b", "beta"), Document("c", "gamma")]
    emb = np.eye(3, dtype=np.float32)
    index = CorpusIndex(docs, emb)
    hits = index.search(np.array([0.1, 0.9, 0.3], dtype=np.float32), k=2)
    assert [h.id for h in hits] == ["b", "c"]
    assert hits[0].score == pytest.approx(0.9) and hits[0].text == "beta"
    assert len(index.search(np.ones(3, dtype=np.float32), k=10)) == 3


def test_query_terms_and_highlights():
    assert query_terms("How to compress the FILES, fast?") == ["compress", "files", "fast"]
    text = "Compressing files fast: a compressor for file archives."
    spans = find_highlights(text, query_terms("compress files"))
    assert [text[a:b] for a, b in spans] == ["Compressing", "files", "compressor"]
    assert find_highlights(text, []) == []


def test_snippet_window_around_the_first_match():
    text = " ".join(f"filler{i}" for i in range(100)) + " the zstd compressor is fast " + "tail " * 50
    snippet, spans = make_snippet(text, "zstd compressor", width=80)
    assert snippet.startswith("…") and snippet.endswith("…")
    assert len(snippet) <= 82
    assert [snippet[a:b] for a, b in spans] == ["zstd", "compressor"]
    short, spans = make_snippet("tiny zstd text", "zstd", width=80)
    assert short == "tiny zstd text" and [short[a:b] for a, b in spans] == ["zstd"]
    head, _ = make_snippet("no match here " * 20, "zzz", width=40)
    assert head.startswith("no match") and head.endswith("…")


def test_saved_index_is_loaded_instead_of_encoding(tiny_model, corpus_file, tmp_path):
    from embedray.mining.index import IndexStore, VectorIndex
    from embedray.serve.batching import Part
    from embedray.serve.corpus import load_index
    from embedray.serve.embedder import EmbedderCore

    def part(core, texts):
        return Part(texts, core.counter.count(texts), list(range(len(texts))))

    built = EmbedderCore(tiny_model, corpus=corpus_file)
    docs = load_corpus(corpus_file)
    (emb,) = built.encode_parts([part(built, [d.text_for_model for d in docs])])
    store = IndexStore(tmp_path / "store")  # what a pipeline run publishes
    store.publish(VectorIndex.build(emb, [d.id for d in docs], use_gpu=False, version=1))
    served = EmbedderCore(tiny_model, corpus=corpus_file, index=tmp_path / "store")
    ((query,),) = built.encode_parts([part(built, ["zstd compression"])])
    assert [h.id for h in served.search(query, 3)] == [h.id for h in built.search(query, 3)]
    VectorIndex.build(np.eye(2, dtype=np.float32), ["py", "deb"], use_gpu=False).save(tmp_path / "two")
    with pytest.raises(ValueError, match="dimension 2 != model dimension 32"):
        load_index(tmp_path / "two", docs, 32)
    VectorIndex.build(np.ones((1, 32), dtype=np.float32), ["nope"], use_gpu=False).save(tmp_path / "alien")
    with pytest.raises(ValueError, match="not in the corpus"):
        load_index(tmp_path / "alien", docs, 32)


def test_an_index_folder_is_filled_at_the_first_start_and_checked_against_the_model(tiny_model, corpus_file,
                                                                                     tmp_path, caplog):
    import logging

    from embedray.mining.cache import folder_fingerprint
    from embedray.serve.batching import Part
    from embedray.serve.corpus import load_index
    from embedray.serve.embedder import EmbedderCore

    caplog.set_level(logging.INFO)
    first = EmbedderCore(tiny_model, corpus=corpus_file, index=tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert meta["model"] == folder_fingerprint(tiny_model) and meta["doc_prompt"] == ""
    assert "saved the flat index to" in caplog.text
    caplog.clear()
    again = EmbedderCore(tiny_model, corpus=corpus_file, index=tmp_path / "idx")
    assert "loaded flat index" in caplog.text and "indexed" not in caplog.text
    q = ["zstd compression"]
    ((query,),) = first.encode_parts([Part(q, first.counter.count(q), [0])])
    assert [h.id for h in again.search(query, 3)] == [h.id for h in first.search(query, 3)]
    docs = load_corpus(corpus_file)
    # other weights (a training snapshot's, say), or another document prompt: refused, saying what to do
    for key, value, match in (("model", "0123456789abcdef.bf16", "built with other weights"),
                              ("doc_prompt", "passage: ", "encoded with the prompt 'passage: '")):
        bad = tmp_path / f"bad-{key}"
        shutil.copytree(tmp_path / "idx", bad)
        (bad / "meta.json").write_text(json.dumps({**meta, key: value}))
        with pytest.raises(ValueError, match=match + ".*give --index a new folder"):
            load_index(bad, docs, again.dim, model=meta["model"], doc_prompt="")
    # the same weights encoded in bf16 are the same model
    load_index(tmp_path / "idx", docs, again.dim, model=meta["model"] + ".bf16", doc_prompt="")
