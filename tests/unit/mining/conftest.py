"""Shared fixtures for the mining tests: a tiny synthetic retrieval set and tiny-bert."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from embedray.data.beir import Document, RetrievalData

TOPICS = ["json parser library", "web server daemon", "python bindings for gtk",
          "font package", "kernel module tools", "music player", "image viewer", "mail client"]


def tiny_retrieval_data(split: str = "train") -> RetrievalData:
    """8 queries, 32 documents (one positive + three near-duplicates per topic)."""
    corpus, queries, qrels = {}, {}, {}
    for i, topic in enumerate(TOPICS):
        corpus[f"d{i}"] = Document(f"d{i}", f"This package provides a {topic} for Debian.", "")
        for j in range(3):
            corpus[f"d{i}x{j}"] = Document(f"d{i}x{j}", f"Extra {j} files of the {topic}, version {j}.",
                                           "")
        queries[f"q{i}"] = f"{topic}"
        qrels[f"q{i}"] = {f"d{i}": 1}
    return RetrievalData(corpus, queries, qrels, split)


@pytest.fixture(scope="session")
def tiny_data() -> RetrievalData:
    return tiny_retrieval_data()


@pytest.fixture(scope="session")
def tiny_bert_dir():
    from embedray.models.bundled import resolve_model

    return resolve_model("tiny-bert")


@pytest.fixture(scope="session")
def tiny_st(tiny_bert_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(tiny_bert_dir), device="cpu")
