"""evaluate_retrieval end to end on a handmade BEIR folder, with tiny-bert and with an encode_fn."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from embedray.cli.eval import add_arguments as add_eval_arguments
from embedray.cli.eval import run as run_eval
from embedray.data.beir import Document, load_beir, write_beir
from embedray.eval.retrieval import encode_texts, evaluate_retrieval, resolve_ignore_identical
from embedray.models.backends import load_encoder
from embedray.models.bundled import resolve_model

TOPICS = ["apple", "river", "engine", "violin", "glacier", "pepper", "comet", "saddle"]


@pytest.fixture(scope="module")
def beir_dir(tmp_path_factory):
    """8 documents, one per topic word; queries q0..q5 each judge the document of their topic."""
    root = tmp_path_factory.mktemp("beir") / "toy"
    docs = [Document(f"d{i}", f"all about the {w} and nothing else", title=f"{w} facts")
            for i, w in enumerate(TOPICS)]
    queries = [(f"q{i}", f"tell me about {w}") for i, w in enumerate(TOPICS[:6])]
    qrels = {"test": {f"q{i}": {f"d{i}": 1} for i in range(6)},
             "dev": {"q0": {"d0": 1}}}
    return write_beir(root, docs, queries, qrels)


@pytest.fixture(scope="module")
def self_match_dir(tmp_path_factory):
    """ArguAna-like: every query is also a corpus document (same id, same text)."""
    root = tmp_path_factory.mktemp("beir") / "selfmatch"
    docs = [Document(f"a{i}", f"argument about {w}") for i, w in enumerate(TOPICS)]
    docs += [Document(f"c{i}", f"counter argument: {w} and {w}") for i, w in enumerate(TOPICS)]
    queries = [(f"a{i}", f"argument about {w}") for i, w in enumerate(TOPICS)]
    return write_beir(root, docs, queries, {"test": {f"a{i}": {f"c{i}": 1} for i in range(8)}})


@pytest.fixture(scope="module")
def tiny():
    return load_encoder("tiny-bert")


def keyword_encode(texts: list[str], kind: str) -> np.ndarray:
    """A perfect toy encoder: one dimension per topic word, plus a constant one."""
    out = np.array([[t.count(w) for w in TOPICS] + [0.1] for t in texts], dtype=np.float32)
    return out  # (n, len(TOPICS) + 1), deliberately not normalized


def test_end_to_end_with_tiny_bert(beir_dir, tiny):
    data = load_beir(beir_dir, "test")
    res = evaluate_retrieval(tiny, data, k=5, batch_size=3, show_progress=False)
    assert set(res.run) == {f"q{i}" for i in range(6)}
    assert all(len(docs) == 5 for docs in res.run.values())
    assert all(list(d.values()) == sorted(d.values(), reverse=True) for d in res.run.values())
    assert {"ndcg@5", "recall@5", "mrr@5", "num_queries"} <= set(res.metrics)
    assert "recall@100" not in res.metrics  # k=5 cannot measure it
    assert res.metrics["num_queries"] == 6 and 0 <= res.metrics["ndcg@5"] <= 1
    t = res.timings
    assert (t.num_docs, t.num_queries) == (8, 6) and t.docs_per_s > 0 and t.search_s >= 0
    assert res.settings["ignore_identical_ids"] is False and res.settings["dim"] == 32


def test_encode_fn_path_and_normalization(beir_dir):
    data = load_beir(beir_dir, "test")
    calls = []

    def fn(texts, kind):
        calls.append((kind, len(texts)))
        return keyword_encode(texts, kind)

    res = evaluate_retrieval(fn, data, k=10, batch_size=3, show_progress=False)
    assert res.metrics["ndcg@10"] == pytest.approx(1.0) and res.metrics["mrr@10"] == 1.0
    assert res.metrics["recall@10"] == 1.0
    assert [c for c in calls if c[0] == "doc"] == [("doc", 3), ("doc", 3), ("doc", 2)]
    assert sum(n for kind, n in calls if kind == "query") == 6
    # cosine of doc [2 apples, 0.1] and query [1 apple, 0.1]: vectors were normalized
    want = (2 + 0.01) / (np.sqrt(4.01) * np.sqrt(1.01))
    assert res.run["q0"]["d0"] == pytest.approx(want, abs=1e-5)
    emb = encode_texts(fn, ["apple apple", "x", "river"], "doc", batch_size=2, show_progress=False)
    assert emb.dtype == np.float32 and emb.shape == (3, 9)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, rtol=1e-6)
    # batches go longest first, but rows come back in input order
    np.testing.assert_allclose(emb[0], keyword_encode(["apple apple"], "doc")[0] /
                               np.linalg.norm(keyword_encode(["apple apple"], "doc")[0]), rtol=1e-6)


def test_encode_fn_matches_model(beir_dir, tiny):
    """A model and an encode_fn wrapping the same model give the same ranking."""
    data = load_beir(beir_dir, "test")
    via_model = evaluate_retrieval(tiny, data, k=8, show_progress=False)
    via_fn = evaluate_retrieval(lambda texts, kind: tiny.encode(texts, convert_to_tensor=True),
                                data, k=8, show_progress=False)
    assert {q: list(d) for q, d in via_model.run.items()} == {q: list(d) for q, d in via_fn.run.items()}
    assert via_model.metrics == pytest.approx(via_fn.metrics)


def test_prefixes_reach_the_encoder(beir_dir):
    data = load_beir(beir_dir, "test")
    seen = {"query": [], "doc": []}

    def fn(texts, kind):
        seen[kind].extend(texts)
        return keyword_encode(texts, kind)

    evaluate_retrieval(fn, data, k=3, query_prompt="query: ", doc_prompt="passage: ",
                       show_progress=False)
    assert all(t.startswith("query: tell me") for t in seen["query"])
    assert "passage: apple facts all about the apple and nothing else" in seen["doc"]


def test_a_models_own_prompts_apply_once(beir_dir, tiny, tmp_path):
    """An exported model's prompts (query, and document as the default) are used when the
    evaluation gives none, exactly once each: the same run as passing them to a prompt-less model."""
    folder = tmp_path / "prompted"
    shutil.copytree(resolve_model("tiny-bert"), folder)
    cfg = json.loads((folder / "config_sentence_transformers.json").read_text())
    cfg.update(prompts={"query": "query: ", "document": "passage: "}, default_prompt_name="document")
    (folder / "config_sentence_transformers.json").write_text(json.dumps(cfg))
    data = load_beir(beir_dir, "test")
    own = evaluate_retrieval(load_encoder(str(folder)), data, k=8, show_progress=False)
    given = evaluate_retrieval(tiny, data, k=8, query_prompt="query: ", doc_prompt="passage: ",
                               show_progress=False)
    plain = evaluate_retrieval(tiny, data, k=8, show_progress=False)
    assert own.settings["query_prompt"] == "query: " and own.settings["doc_prompt"] == "passage: "
    for q in given.run:
        assert list(own.run[q]) == list(given.run[q])
        np.testing.assert_allclose(list(own.run[q].values()), list(given.run[q].values()), atol=1e-5)
    assert any(abs(own.run[q][d] - plain.run[q][d]) > 1e-3 for q in plain.run for d in plain.run[q])


def test_ignore_identical_ids(self_match_dir):
    data = load_beir(self_match_dir, "test")
    assert resolve_ignore_identical("auto", list(data.qrels), data.corpus) is True
    on = evaluate_retrieval(keyword_encode, data, k=3, show_progress=False)
    off = evaluate_retrieval(keyword_encode, data, ignore_identical_ids="off", k=3,
                             show_progress=False)
    assert on.settings["ignore_identical_ids"] is True
    assert all(q not in docs and len(docs) == 3 for q, docs in on.run.items())
    # without it each query finds itself first (identical text), pushing its counter-argument down
    assert all(next(iter(docs)) == q for q, docs in off.run.items())
    assert on.metrics["mrr@3"] == pytest.approx(1.0) and off.metrics["mrr@3"] < 1.0
    forced = evaluate_retrieval(keyword_encode, data, ignore_identical_ids=True, k=3,
                                show_progress=False)
    assert forced.run == on.run
    with pytest.raises(ValueError, match="ignore_identical_ids"):
        evaluate_retrieval(keyword_encode, data, ignore_identical_ids="maybe", show_progress=False)


def test_auto_is_off_when_queries_are_not_documents(beir_dir):
    data = load_beir(beir_dir, "test")
    assert resolve_ignore_identical("auto", list(data.qrels), data.corpus) is False
    corpus = {"a", "b", "c", "x"}
    assert resolve_ignore_identical("auto", ["a", "b", "c", "q"], corpus) is True  # mostly shared
    assert resolve_ignore_identical("auto", ["a", "q", "r", "s"], corpus) is False  # coincidence
    assert resolve_ignore_identical("on", ["q"], corpus) is True
    assert resolve_ignore_identical("off", ["a"], corpus) is False


def test_corpus_embeddings_and_truncate_dim(beir_dir):
    data = load_beir(beir_dir, "test")
    docs = keyword_encode([d.text_for_model for d in data.corpus.values()], "doc")
    full = evaluate_retrieval(keyword_encode, data, k=5, show_progress=False)
    pre = evaluate_retrieval(keyword_encode, data, k=5, corpus_embeddings=docs, show_progress=False)
    assert {q: list(d) for q, d in pre.run.items()} == {q: list(d) for q, d in full.run.items()}
    for q in full.run:
        np.testing.assert_allclose(list(pre.run[q].values()), list(full.run[q].values()), rtol=1e-5)
    assert pre.timings.docs_per_s is None and pre.doc_embeddings is None
    kept = evaluate_retrieval(keyword_encode, data, k=5, return_embeddings=True, show_progress=False)
    assert kept.doc_embeddings.shape == (8, 9)
    short = evaluate_retrieval(keyword_encode, data, k=5, truncate_dim=2, show_progress=False)
    assert short.settings["dim"] == 2 and short.metrics["ndcg@5"] < full.metrics["ndcg@5"]
    with pytest.raises(ValueError, match="corpus_embeddings"):
        evaluate_retrieval(keyword_encode, data, corpus_embeddings=docs[:3], show_progress=False)


def test_bad_encoder_output_is_a_clear_error(beir_dir):
    data = load_beir(beir_dir, "test")
    with pytest.raises(ValueError, match="shape"):
        evaluate_retrieval(lambda texts, kind: np.zeros((1, 4)), data, show_progress=False)
    with pytest.raises(TypeError, match="encode_fn"):
        evaluate_retrieval(42, data, show_progress=False)


def test_run_eval_cli(beir_dir, tmp_path, capsys):
    import argparse

    parser = add_eval_arguments(argparse.ArgumentParser(prog="embedray eval"))
    out = tmp_path / "res" / "eval.json"
    args = parser.parse_args(["--model", "tiny-bert", "--model", "tiny-bert@1", "--data", str(beir_dir),
                              "--k", "5", "--batch-size", "4", "--no-progress", "--output", str(out)])
    assert run_eval(args) == 0
    table = capsys.readouterr().out
    assert "| model" in table and "nDCG@5" in table and "MRR@5" in table and "tiny-bert@1" in table
    saved = json.loads(out.read_text())
    assert set(saved["results"]) == {"tiny-bert", "tiny-bert@1"}
    assert saved["results"]["tiny-bert"]["metrics"]["num_queries"] == 6
    assert saved["config"]["k"] == 5 and saved["split"] == "test"


def test_run_eval_bad_input_returns_2(beir_dir, tmp_path, capsys):
    assert run_eval({"model": "tiny-bert", "data": str(tmp_path / "nope")}) == 2
    assert "corpus.jsonl" in capsys.readouterr().err
    assert run_eval({"model": "tiny-bert", "data": str(beir_dir), "split": "train"}) == 2
    assert "splits here: dev, test" in capsys.readouterr().err
    assert run_eval({"model": "no-such-model", "data": str(beir_dir)}) == 2
    assert "unknown model" in capsys.readouterr().err
    assert run_eval({"model": "tiny-bert", "data": str(beir_dir), "batch_size": 0}) == 2
    assert "batch_size" in capsys.readouterr().err
