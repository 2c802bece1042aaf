"""The classification objective in the real loop: labelled corpus texts, a head on the embedding,
the loss falls, the head is saved beside the exported embedder and predicts held-out labels."""
import json

import numpy as np
import pytest

from embedray.config import build_config
from embedray.losses.classification import load_head, predict
from embedray.models import load_encoder
from embedray.pipeline.config import TrainJobConfig
from embedray.pipeline.runtime import run_local


@pytest.fixture(scope="module")
def labels_file(topic_beir, tmp_path_factory):
    """Each topic document's label: the first of its rare words (26 possible), split by id."""
    rows = []
    for line in (topic_beir / "corpus.jsonl").read_text().splitlines():
        doc = json.loads(line)
        if doc["_id"].startswith("d"):
            i = int(doc["_id"][1:])
            rows.append({"_id": doc["_id"], "label": doc["text"].split()[3], "split": "test" if i % 4 == 3 else "train"})
    path = tmp_path_factory.mktemp("labels") / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def test_classification_trains_and_keeps_its_head_beside_the_model(topic_beir, labels_file, tmp_path):
    path, rows = labels_file
    job = build_config(TrainJobConfig, {
        "data": {"path": str(topic_beir), "train_labels": str(path)}, "model": {"name_or_path": "tiny-bert"},
        "loss": {"name": "classification"},
        "train": {"max_steps": 40, "batch_size": 8, "lr": 3e-3, "checkpoint_every": 20, "eval_every": 0,
                  "log_every": 1, "max_doc_length": 48, "precision": "fp32"},
        "cluster": {"storage_path": str(tmp_path), "run_name": "cls"}})
    assert job.train.negatives == "none" and job.train.num_negatives == 0
    summary = run_local(job)
    losses = [r["loss"] for r in json.loads((tmp_path / "cls" / "detailed_training_logs.json").read_text())["steps"]]
    assert summary["train_pairs"] == sum(r["split"] == "train" for r in rows)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
    head, names = load_head(tmp_path / "cls" / "final" / "classifier")
    assert names == sorted({r["label"] for r in rows if r["split"] == "train"})
    model = load_encoder(tmp_path / "cls" / "final", precision="fp32")  # the embedder alone, as saved
    train = [r for r in rows if r["split"] == "train"]
    corpus = {json.loads(line)["_id"]: json.loads(line)["text"] for line in (topic_beir / "corpus.jsonl").read_text().splitlines()}
    got = predict(head, model.encode([corpus[r["_id"]] for r in train]))
    accuracy = np.mean([names[g] == r["label"] for g, r in zip(got, train)])
    assert accuracy > 0.8, accuracy


def test_classification_and_labels_go_together(topic_beir, labels_file):
    path, _ = labels_file
    for cfg in ({"data": {"path": str(topic_beir)}, "loss": {"name": "classification"}},
                {"data": {"path": str(topic_beir), "train_labels": str(path)}}):
        with pytest.raises(Exception, match="classification trains on data.train_labels"):
            build_config(TrainJobConfig, cfg)
