"""Mining covers the training queries only, each with every positive it is known to have."""
import json
from types import SimpleNamespace

from embedray.data.beir import Document
from embedray.pipeline.refresh import train_positives
from embedray.training.config import DataConfig
from embedray.training.data import TrainingData


def test_only_training_queries_are_mined_with_all_their_positives(tmp_path):
    corpus = {d: Document(d, f"text {d}", "") for d in ["a", "b", "c", "d"]}
    queries = {"qtrain": "x", "qother": "y", "qdev": "z"}
    positives = {"qtrain": {"a", "b"}, "qdev": {"c"}}  # train + dev qrels
    data = TrainingData(corpus, queries, positives, dev=None)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps(r) for r in [
        {"query_id": "qtrain", "pos_id": "a"},
        {"query_id": "qother", "pos_id": "d"},       # a pair outside the qrels
        {"query_id": "unknown", "pos_id": "a"}]) + "\n")
    job = SimpleNamespace(data=DataConfig(path=str(tmp_path), train_pairs=str(pairs)))
    got = train_positives(job, data)
    assert got == {"qtrain": {"a", "b"}, "qother": {"d"}}
    assert positives["qtrain"] == {"a", "b"} and "qother" not in positives  # the data is untouched
