"""embedray's cross-encoder on the real MiniLM backbone: train a few steps, rerank, denoise."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from embedray.data.beir import Document, RetrievalData

pytestmark = pytest.mark.integration

TOPICS = {"json": "a fast JSON parser library for C programs",
          "web": "a lightweight web server daemon with TLS support",
          "gtk": "Python bindings for the GTK graphical toolkit",
          "font": "a monospace font family for programming",
          "kernel": "tools to build and load Linux kernel modules",
          "music": "a terminal music player for MP3 and FLAC files",
          "image": "a simple image viewer for PNG and JPEG",
          "mail": "a text-based mail client with IMAP support"}


def _data() -> RetrievalData:
    corpus, queries, qrels = {}, {}, {}
    others = list(TOPICS)
    for i, (key, desc) in enumerate(TOPICS.items()):
        corpus[key] = Document(key, f"This package provides {desc}.")
        for j in (1, 2):
            other = others[(i + j) % len(others)]
            corpus[f"{key}-x{j}"] = Document(f"{key}-x{j}", f"Documentation and examples for {TOPICS[other]}.")
        queries[f"q-{key}"] = desc.split(" for ")[0].replace("a ", "", 1)
        qrels[f"q-{key}"] = {key: 1}
    return RetrievalData(corpus, queries, qrels, "dev")


def test_train_rerank_and_denoise_with_minilm(tmp_path):
    from sentence_transformers import CrossEncoder

    from embedray.data.beir import pairs_from_data
    from embedray.mining.config import CrossEncoderConfig, MiningConfig
    from embedray.mining.pipeline import mine
    from embedray.training.cross_encoder import evaluate_reranker, train_cross_encoder

    data = _data()
    first = mine(data.corpus, data.queries, data.qrels, "minilm-l6", MiningConfig(k=10, num_negatives=3))
    cfg = CrossEncoderConfig(base_model="minilm-l6", max_steps=8, batch_size=8, learning_rate=1e-4,
                             negatives_per_query=3, max_length=64, seed=0)
    path = train_cross_encoder(pairs_from_data(data), data.corpus, first.pool, cfg, tmp_path / "ce")
    ce = CrossEncoder(str(path))
    pos = ce.predict([(data.queries[q], data.corpus[d].text_for_model)
                      for q, docs in data.qrels.items() for d in docs])
    neg = ce.predict([(data.queries[q], data.corpus[d].text_for_model)
                      for q, negs in first.pool.negatives.items() for d, _ in negs])
    assert pos.mean() > neg.mean()  # a few steps already separate positives from mined negatives

    run = {q: {d: 1.0 / (1 + r) for r, d in enumerate([x for x, _ in first.pool.negatives[q]] + [p])}
           for q, docs in data.qrels.items() for p in docs}  # first stage ranks the positive last
    result = evaluate_reranker(path, data, run, k=10)
    assert result["before"]["ndcg@10"] == pytest.approx(1 / np.log2(5))
    assert result["after"]["ndcg@10"] > result["before"]["ndcg@10"]

    res = mine(data.corpus, data.queries, data.qrels, "minilm-l6",
               MiningConfig(k=10, num_negatives=3, rescore_candidates=6), cross_encoder=path,
               ce_cfg=CrossEncoderConfig(denoise_margin=0.0))
    for q, negs in res.pool.negatives.items():
        assert all(s < min(res.pool.positive_scores[q].values()) for _, s in negs)
    assert res.counts["pairs_total"] == len(data.qrels) * 7
