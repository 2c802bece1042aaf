"""Ray Train on a pairs file with bad lines: the workers train on exactly the rows the driver
validated (``on_error: skip``, ``max_train_pairs``), and the run's summary carries the skips."""
import json

import pytest

from embedray.config import build_config
from embedray.pipeline.config import TrainJobConfig

pytestmark = pytest.mark.integration

# Over the topic_beir ids: 6 good rows by line 10, 3 bad lines among them, one bad line after.
PAIRS = [
    {"query_id": "q0", "pos_id": "d0"}, "", {"query_id": "q1", "pos_id": "nope"}, "{not json",
    {"query_id": "q2", "pos_id": "d2", "neg_ids": ["x50"]}, {"query_id": "qX", "pos_id": "d3"},
    {"query_id": "q3", "pos_id": "d3"}, {"query_id": "q6", "pos_id": "d6"}, {"query_id": "q7", "pos_id": "d7"},
    {"query_id": "q8", "pos_id": "d8"}, {"query_id": "q9", "pos_id": ""}, {"query_id": "q12", "pos_id": "d12"},
]


def write_pairs(path):
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in PAIRS))
    return path


def test_workers_train_on_the_validated_rows_and_the_summary_counts_the_skips(local_ray, topic_beir, tmp_path,
                                                                              capsys):
    from embedray.cluster.train import run_training

    pairs = write_pairs(tmp_path / "pairs.jsonl")
    job = build_config(TrainJobConfig, {
        "data": {"path": str(topic_beir), "train_pairs": str(pairs), "on_error": "skip", "max_train_pairs": 6,
                 "dev_split": None},
        "model": {"name_or_path": "tiny-bert"},
        "loss": {"name": "infonce", "temperature": 0.1},
        "train": {"max_steps": 3, "batch_size": 2, "num_negatives": 1, "checkpoint_every": 0, "eval_every": 0,
                  "log_every": 1, "max_doc_length": 32, "num_threads": 1},
        "cluster": {"num_workers": 2, "cpus_per_worker": 0.5, "storage_path": str(tmp_path / "runs"),
                    "run_name": "skips", "max_failures": 0},
    })
    summary = run_training(job)
    assert "[embedray] data: skipped 3 bad rows" in capsys.readouterr().out
    assert summary["steps"] == 3
    assert summary["train_pairs"] == 6  # rank 0's count after pooling both workers' shards
    written = json.loads((tmp_path / "runs" / "skips" / "training_summary_report.json").read_text())
    assert written["data_skipped"] == summary["data_skipped"]
    skipped = summary["data_skipped"]
    assert skipped["total"] == 3
    assert skipped["by_reason"] == {"unknown document id": 1, "malformed JSON": 1, "unknown query id": 1}
    assert [e.split(": ")[0] for e in skipped["examples"]] == [f"{pairs}:{n}" for n in (3, 4, 6)]


def test_ray_train_reads_a_parquet_corpus_queries_and_pairs(local_ray, parquet_beir, tmp_path):
    from embedray.cluster.train import run_training

    assert not (parquet_beir / "corpus.jsonl").exists() and not (parquet_beir / "queries.jsonl").exists()
    job = build_config(TrainJobConfig, {
        "data": {"path": str(parquet_beir), "train_pairs": str(parquet_beir / "train_pairs.parquet"),
                 "dev_split": "dev"},
        "model": {"name_or_path": "tiny-bert"},
        "loss": {"name": "infonce", "temperature": 0.1},
        "train": {"max_steps": 3, "batch_size": 4, "num_negatives": 1, "checkpoint_every": 0, "eval_every": 0,
                  "log_every": 1, "max_doc_length": 32, "num_threads": 1},
        "cluster": {"num_workers": 2, "cpus_per_worker": 0.5, "storage_path": str(tmp_path / "runs"),
                    "run_name": "parquet", "max_failures": 0},
    })
    summary = run_training(job)
    assert summary["steps"] == 3 and summary["train_pairs"] == 32
    assert summary["dev_after"]["ndcg@10"] > 0  # the dev split's queries came from queries.parquet
