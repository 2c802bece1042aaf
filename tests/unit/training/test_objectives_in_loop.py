"""Every task objective trains in the real training loop (local, tiny-bert, the learnable topic
data) from every input format, and its loss falls; not only its formula is right."""
import json

import pytest

from embedray.config import build_config
from embedray.pipeline.config import TrainJobConfig
from embedray.pipeline.runtime import run_local

OBJECTIVES = {
    "infonce": {"name": "infonce", "temperature": 0.1},
    "triplet": {"name": "triplet", "margin": 0.3},
    "contrastive": {"name": "contrastive", "margin": 0.5},
    "simcse": {"name": "simcse", "temperature": 0.1, "dropout": 0.1},
    "triplet + matryoshka": {"name": "triplet", "matryoshka_dims": [32, 16]},
    "contrastive + matryoshka": {"name": "contrastive", "matryoshka_dims": [32, 16]},
}


def _job(beir, storage, name, loss, num_negatives=1, train_pairs=None):
    return build_config(TrainJobConfig, {
        "data": {"path": str(beir), "train_pairs": str(train_pairs) if train_pairs else None},
        "model": {"name_or_path": "tiny-bert"},
        "loss": loss,
        "train": {"max_steps": 30, "batch_size": 8, "num_negatives": num_negatives, "lr": 3e-3,
                  "checkpoint_every": 30, "eval_every": 0, "log_every": 1, "max_doc_length": 48,
                  "precision": "fp32"},
        "cluster": {"storage_path": str(storage), "run_name": name},
    })


#: BEIR JSONL with qrels pairs; Parquet corpus, queries and training pairs.
FORMATS = ["beir-jsonl", "parquet"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda o: o.replace(" + ", "-"))
def test_each_objective_trains_in_the_loop_and_its_loss_falls(objective, fmt, topic_beir, parquet_beir, tmp_path):
    beir, pairs = (topic_beir, None) if fmt == "beir-jsonl" else (parquet_beir, parquet_beir / "train_pairs.parquet")
    summary = run_local(_job(beir, tmp_path, "run", OBJECTIVES[objective], train_pairs=pairs))
    steps = json.loads((tmp_path / "run" / "detailed_training_logs.json").read_text())["steps"]
    losses = [r["loss"] for r in steps]
    assert summary["steps"] == 30 and len(losses) == 30 and summary["train_pairs"] == 32
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, f"{objective}: loss {first:.4f} → {last:.4f}"
    assert summary["dev_after"]["ndcg@10"] >= summary["dev_before"]["ndcg@10"], objective


@pytest.mark.parametrize("name", ["triplet", "contrastive"])
def test_objectives_that_need_negatives_say_so(name, topic_beir, tmp_path):
    with pytest.raises(ValueError, match="train.num_negatives >= 1"):
        run_local(_job(topic_beir, tmp_path, name, {"name": name}, num_negatives=0))
