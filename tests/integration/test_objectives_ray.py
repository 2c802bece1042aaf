"""A subset of the objective × input-format matrix through Ray Train (2 workers): the same loop,
the same falling loss as in tests/unit/training/test_objectives_in_loop.py."""
import json

import pytest

from embedray.config import build_config
from embedray.pipeline.config import TrainJobConfig

pytestmark = pytest.mark.integration

CASES = {
    "triplet-batch-hard-parquet": ({"name": "triplet", "margin": 0.3, "hardest_negatives": 1}, "parquet", "random", {}),
    "simcse-jsonl": ({"name": "simcse", "temperature": 0.1, "dropout": 0.1}, "beir-jsonl", "random", {}),
    "contrastive-flag": ({"name": "contrastive", "margin": 0.5}, "flag", "given", {}),
    # GradCache with cross-worker negatives: mini-batches of 2, the gather over both workers' batches.
    "classification-labels": ({"name": "classification"}, "labels", "none", {}),
    "infonce-gather-gradcache": ({"name": "infonce", "temperature": 0.1, "gather_across_workers": True}, "beir-jsonl",
                                 "random", {"mini_batch_size": 2}),
}


@pytest.fixture(scope="module")
def flag_beir(topic_beir, tmp_path_factory):
    from embedray.data.flag import write_flag_folder
    from tests.conftest import make_topic_flag

    root = tmp_path_factory.mktemp("flag")
    write_flag_folder(make_topic_flag(topic_beir, root / "jsonl", leak=0), root / "beir")
    return root / "beir"


@pytest.fixture(scope="module")
def labels(topic_beir, tmp_path_factory):
    """Each topic document labelled by the first of its rare words."""
    rows = [json.loads(line) for line in (topic_beir / "corpus.jsonl").read_text().splitlines()]
    path = tmp_path_factory.mktemp("labels") / "labels.jsonl"
    path.write_text("".join(json.dumps({"_id": d["_id"], "label": d["text"].split()[3]}) + "\n"
                            for d in rows if d["_id"].startswith("d")))
    return path


@pytest.mark.parametrize("case", CASES)
def test_objective_trains_on_ray_and_its_loss_falls(case, local_ray, topic_beir, parquet_beir, flag_beir, labels,
                                                    tmp_path):
    from embedray.cluster.train import run_training

    loss, fmt, negatives, extra = CASES[case]
    beir, pairs = {"beir-jsonl": (topic_beir, None), "parquet": (parquet_beir, parquet_beir / "train_pairs.parquet"),
                   "flag": (flag_beir, flag_beir / "train_pairs.jsonl"), "labels": (topic_beir, None)}[fmt]
    job = build_config(TrainJobConfig, {
        "data": {"path": str(beir), "train_pairs": str(pairs) if pairs else None, "dev_split": None,
                 "train_labels": str(labels) if fmt == "labels" else None},
        "model": {"name_or_path": "tiny-bert"}, "loss": loss,
        "train": {"max_steps": 16, "batch_size": 4, "num_negatives": 1, "negatives": negatives, "lr": 3e-3,
                  "checkpoint_every": 0, "eval_every": 0, "log_every": 1, "max_doc_length": 48, "num_threads": 1,
                  "precision": "fp32", **extra},
        "cluster": {"num_workers": 2, "cpus_per_worker": 0.5, "storage_path": str(tmp_path / "runs"),
                    "run_name": case, "max_failures": 0},
    })
    summary = run_training(job)
    losses = [r["loss"] for r in json.loads((tmp_path / "runs" / case / "detailed_training_logs.json").read_text())["steps"]]
    assert summary["steps"] == 16 and len(losses) == 16
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4, losses
