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
    "ntxent": {"name": "ntxent", "temperature": 0.1},
    "infonce + hardest": {"name": "infonce", "temperature": 0.1, "hardest_negatives": 2},
    "triplet + batch-hard": {"name": "triplet", "margin": 0.3, "hardest_negatives": 1},
    "triplet + matryoshka": {"name": "triplet", "matryoshka_dims": [32, 16]},
    "contrastive + matryoshka": {"name": "contrastive", "matryoshka_dims": [32, 16]},
}


def _job(beir, storage, name, loss, num_negatives=1, train_pairs=None, negatives="random", distill=None):
    return build_config(TrainJobConfig, {
        "data": {"path": str(beir), "train_pairs": str(train_pairs) if train_pairs else None},
        "model": {"name_or_path": "tiny-bert"},
        "loss": loss,
        "train": {"max_steps": 30, "batch_size": 8, "num_negatives": num_negatives, "lr": 3e-3,
                  "checkpoint_every": 30, "eval_every": 0, "log_every": 1, "max_doc_length": 48,
                  "precision": "fp32", "negatives": negatives},
        "cluster": {"storage_path": str(storage), "run_name": name},
        "distill": distill or {},
    })


@pytest.fixture(scope="module")
def flag_beir(topic_beir, tmp_path_factory):
    """The topic data through FlagEmbedding JSONL: given negatives, teacher scores, a prompt."""
    from embedray.data.flag import write_flag_folder
    from tests.conftest import make_topic_flag

    root = tmp_path_factory.mktemp("flag")
    write_flag_folder(make_topic_flag(topic_beir, root / "jsonl", leak=0), root / "beir")
    return root / "beir"


#: BEIR JSONL with qrels pairs; Parquet corpus, queries and training pairs; FlagEmbedding JSONL
#: (trained on its own negatives).
FORMATS = ["beir-jsonl", "parquet", "flag"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda o: o.replace(" + ", "-"))
def test_each_objective_trains_in_the_loop_and_its_loss_falls(objective, fmt, topic_beir, parquet_beir, flag_beir,
                                                              tmp_path):
    beir, pairs = {"beir-jsonl": (topic_beir, None), "parquet": (parquet_beir, parquet_beir / "train_pairs.parquet"),
                   "flag": (flag_beir, flag_beir / "train_pairs.jsonl")}[fmt]
    summary = run_local(_job(beir, tmp_path, "run", OBJECTIVES[objective], train_pairs=pairs,
                             negatives="given" if fmt == "flag" else "random"))
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


def test_the_rows_own_scores_are_distillation_targets_without_a_teacher_model(flag_beir, tmp_path):
    # Only the score term (MSE of the student's logits to the rows' scores) is optimised.
    loss = {"name": "infonce", "temperature": 0.1, "distill_score": "mse", "weights": {"task": 0.0, "score": 1.0}}
    summary = run_local(_job(flag_beir, tmp_path, "data", loss, num_negatives=2, negatives="given",
                             train_pairs=flag_beir / "train_pairs.jsonl", distill={"score_source": "data"}))
    losses = [r["loss"] for r in json.loads((tmp_path / "data" / "detailed_training_logs.json").read_text())["steps"]]
    assert summary["steps"] == 30
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses


def test_data_scores_name_what_is_missing(flag_beir, tmp_path):
    loss = {"name": "infonce", "distill_score": "kl"}
    with pytest.raises(ValueError, match="no score for query .*train.num_negatives may not exceed"):
        run_local(_job(flag_beir, tmp_path, "seven", loss, num_negatives=7, negatives="given",
                       train_pairs=flag_beir / "train_pairs.jsonl", distill={"score_source": "data"}))
    with pytest.raises(ValueError, match="score_source: data scores each row's own negatives: loss.distill_score "
                                         "needs train.negatives: given"):
        _job(flag_beir, tmp_path, "random", loss, distill={"score_source": "data"})
