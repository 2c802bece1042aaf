"""Fixtures shared by unit and integration tests."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


def make_topic_beir(root: Path, n_topics: int = 48, seed: int = 0) -> Path:
    """A small synthetic BEIR folder with learnable structure: each query names a topic's rare
    words; its document describes the topic in other words plus the same rare words."""
    import random

    from embedray.data.beir import Document, write_beir

    rng = random.Random(seed)
    vocab = ["alpha", "bravo", "cobalt", "delta", "ember", "fjord", "garnet", "harbor", "iris", "jasper",
             "kelp", "lumen", "maple", "nickel", "onyx", "pecan", "quartz", "raven", "sable", "tundra",
             "umber", "violet", "walnut", "xenon", "yarrow", "zephyr"]
    docs, queries, qrels = [], [], {"train": {}, "dev": {}, "test": {}}
    for i in range(n_topics):
        a, b, c = rng.sample(vocab, 3)
        docs.append(Document(f"d{i}", f"This package about {a} {b} handles {c} records number {i} "
                                      f"with tools for {a} processing and {b} output."))
        queries.append((f"q{i}", f"{a} {b} {c} tool"))
        split = "train" if i % 6 < 4 else ("dev" if i % 6 == 4 else "test")
        qrels[split][f"q{i}"] = {f"d{i}": 1}
    for j in range(n_topics, n_topics + 40):  # distractors
        docs.append(Document(f"x{j}", f"Unrelated {rng.choice(vocab)} utility number {j}."))
    return write_beir(root, docs, queries, qrels)


@pytest.fixture(scope="session")
def topic_beir(tmp_path_factory) -> Path:
    return make_topic_beir(tmp_path_factory.mktemp("topic_beir"))


def as_parquet_beir(beir: Path, root: Path) -> Path:
    """The same BEIR folder with its corpus and queries as Parquet tables, and its train
    judgements as a ``train_pairs.parquet`` (query_id, pos_id)."""
    import shutil

    from embedray.data import (TrainPair, iter_corpus, iter_qrels, iter_queries, write_corpus_parquet,
                               write_pairs_parquet, write_queries_parquet)

    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(beir / "qrels", root / "qrels")
    write_corpus_parquet(iter_corpus(beir / "corpus.jsonl"), root / "corpus.parquet")
    write_queries_parquet(iter_queries(beir / "queries.jsonl"), root / "queries.parquet")
    write_pairs_parquet((TrainPair(q, d) for _, q, d, rel in iter_qrels(beir / "qrels" / "train.tsv") if rel > 0),
                        root / "train_pairs.parquet")
    return root


@pytest.fixture(scope="session")
def parquet_beir(topic_beir, tmp_path_factory) -> Path:
    return as_parquet_beir(topic_beir, tmp_path_factory.mktemp("parquet_beir"))


def make_topic_flag(beir: Path, root: Path, prompt: str = "Find the package: ", leak: int = 1) -> dict[str, Path]:
    """The topic data as FlagEmbedding JSONL per split: each row has its query, its document as
    ``pos``, three other topics' documents and three distractors as ``neg``, teacher scores and
    ``prompt``; the first ``leak`` test rows are repeated in train."""
    from embedray.data import FlagExample, iter_corpus, iter_qrels, iter_queries, write_flag_jsonl

    docs = {d.id: d.text for d in iter_corpus(beir / "corpus.jsonl")}
    queries = dict(iter_queries(beir / "queries.jsonl"))
    topics = sorted((d for d in docs if d.startswith("d")), key=lambda d: int(d[1:]))
    distractors = sorted(d for d in docs if d.startswith("x"))
    files, rows = {}, {}
    for split in ("train", "dev", "test"):
        rows[split] = []
        for _, q, d, _ in iter_qrels(beir / "qrels" / f"{split}.tsv"):
            i = topics.index(d)
            negs = ([docs[topics[(i + k) % len(topics)]] for k in (5, 17, 29)]
                    + [docs[x] for x in distractors[i % 8::8][:3]])
            rows[split].append(FlagExample(queries[q], [docs[d]], negs, [4.0], [0.0, -1.0, -1.0, -2.0, -2.0, -3.0],
                                           prompt))
    rows["train"] += rows["test"][:leak]
    root.mkdir(parents=True, exist_ok=True)
    for split, examples in rows.items():
        write_flag_jsonl(examples, root / f"{split}.jsonl")
        files[split] = root / f"{split}.jsonl"
    return files


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not SHARED_DATASETS.is_dir():
        raise RuntimeError(f"{SHARED_DATASETS} is missing: the public BEIR sets live in ../shared/datasets "
                           "beside the repository")
    return SHARED_DATASETS
