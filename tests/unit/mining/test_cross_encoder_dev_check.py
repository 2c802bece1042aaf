"""The cross-encoder's dev check after training: its depth is configurable and 0 skips it."""
import json

import pytest

from embedray.config import build_config
from embedray.mining.config import CrossEncoderConfig
from embedray.pipeline.config import TrainJobConfig
from embedray.pipeline.cross_encoder import train_base_cross_encoder
from embedray.pipeline.refresh import train_positives, trained_examples
from embedray.training.data import load_training_data


def _job(beir, depth):
    return build_config(TrainJobConfig, {
        "data": {"path": str(beir)},
        "model": {"name_or_path": "tiny-bert"},
        "mining": {"k": 10, "num_negatives": 2, "range_min": 0},
        "cross_encoder": {"base_model": "tiny-bert", "max_steps": 2, "batch_size": 4,
                          "negatives_per_query": 1, "max_length": 48, "dev_rerank_depth": depth},
    })


@pytest.mark.parametrize("depth", [5, 0])
def test_dev_check_reranks_the_configured_depth(topic_beir, tmp_path, capsys, depth):
    job = _job(topic_beir, depth)
    data = load_training_data(job.data)
    assert data.dev is not None
    train_base_cross_encoder(job, data, tmp_path / "ce", tmp_path, train_positives(job, data),
                             trained_examples(job, data))
    assert (tmp_path / "ce" / "config.json").exists()
    report = tmp_path / "cross_encoder_dev.json"
    if depth:
        saved = json.loads(report.read_text())
        assert saved["depth"] == 5 and 0 <= saved["after"]["ndcg@10"] <= 1
        # The first stage read the mining cache; encoding afresh gives the same ranking.
        from embedray.eval.retrieval import evaluate_retrieval
        from embedray.models.encoder import BiEncoder
        from embedray.training.loop import make_encode_fn

        model = BiEncoder.from_config(job.model).eval()
        fresh = evaluate_retrieval(make_encode_fn(model, job.model), data.dev, k=5, show_progress=False)
        from embedray.eval.metrics import compute_metrics

        want = compute_metrics(data.dev.qrels, fresh.run, ks=[5, 10])
        assert saved["before"]["ndcg@10"] == pytest.approx(want["ndcg@10"], abs=1e-5)
        assert saved["before"]["recall@5"] == pytest.approx(want["recall@5"], abs=1e-5)
        assert "reranking dev top-5:" in capsys.readouterr().out
    else:
        assert not report.exists()
        assert "reranking dev" not in capsys.readouterr().out


def test_dev_rerank_depth_must_not_be_negative():
    with pytest.raises(ValueError, match="dev_rerank_depth"):
        CrossEncoderConfig(dev_rerank_depth=-1)
