"""Cross-encoder scores as distillation targets: logits back from the pool's sigmoid
probabilities, divided by a temperature chosen on dev."""
from __future__ import annotations

import json
import math

import pytest
import torch

from embedray.training.config import DistillConfig
from embedray.training.distill import GATE_FILE, ce_logits, choose_temperature, pool_scores, resolve_ce_temperature

# One query's pool as the refresher stores it: sigmoid probabilities of a one-logit cross-encoder.
SCORES = {"q": {"pos": 0.97, "n1": 0.60, "n2": 0.10, "n3": 0.02}}


def _entropy(logits: torch.Tensor) -> float:
    p = torch.softmax(logits, dim=-1)
    return float(-(p * p.log()).sum())


def test_targets_are_the_logits_not_a_flat_softmax_over_probabilities():
    targets = pool_scores(["q"], ["pos"], [["n1", "n2", "n3"]], SCORES)  # (1, 4)
    want = [math.log(p / (1 - p)) for p in (0.97, 0.60, 0.10, 0.02)]
    torch.testing.assert_close(targets[0], torch.tensor(want), atol=1e-5, rtol=0)
    flat = math.log(4)
    probs = torch.tensor([[0.97, 0.60, 0.10, 0.02]])
    assert _entropy(probs) > 0.9 * flat  # the old target: softmax over [0, 1] scores is nearly uniform
    assert _entropy(targets) < 0.4 * flat  # the logits put most of the mass on the positive
    assert torch.softmax(targets, -1)[0, 0] > 0.9
    # A temperature divides the logits; rows' own scores (score_source: data) are used as given.
    torch.testing.assert_close(pool_scores(["q"], ["pos"], [["n1", "n2", "n3"]], SCORES, temperature=2.0),
                               targets / 2)
    torch.testing.assert_close(pool_scores(["q"], ["pos"], [["n1"]], SCORES, source="data"), torch.tensor([[0.97, 0.60]]))


def test_a_random_top_up_is_taken_as_irrelevant_an_unscored_query_is_an_error():
    """A query the denoiser left fewer negatives than the loop draws is topped up with random
    documents, which the cross-encoder never scored: they take its lowest score; a query whose
    positive has no score was never scored at all, and that stays an error."""
    from embedray.training.distill import PROB_EPS

    targets = pool_scores(["q"], ["pos"], [["n1", "random-doc"]], SCORES)
    torch.testing.assert_close(targets[0, 2], ce_logits(torch.tensor(PROB_EPS)))
    assert targets[0, 2] < targets[0, 1] - 10
    with pytest.raises(ValueError, match="no cross-encoder score for query 'q2', document 'pos'"):
        pool_scores(["q2"], ["pos"], [["n1"]], {"q2": {"n1": 0.3}})
    with pytest.raises(ValueError, match="training rows give no score for query 'q', document 'random-doc'"):
        pool_scores(["q"], ["pos"], [["random-doc"]], SCORES, source="data")


def test_saturated_probabilities_stay_finite():
    out = ce_logits(torch.tensor([0.0, 1.0, 0.5]))
    assert torch.isfinite(out).all() and out[0] < -13 and out[1] > 13 and out[2] == 0


def test_the_temperature_fits_how_often_the_cross_encoder_is_right():
    qrels = {f"q{i}": {"rel": 1} for i in range(20)}
    confident_right = {q: {"rel": 0.99, "a": 0.01, "b": 0.01} for q in qrels}
    sharp = choose_temperature(qrels, confident_right)
    assert sharp["value"] == min(sharp["nll"]) and sharp["queries"] == 20  # always right: sharpen
    # Confident and right on half the queries, confidently wrong on the rest: soften.
    mixed = {q: ({"rel": 0.99, "a": 0.01} if i % 2 else {"rel": 0.01, "a": 0.99}) for i, q in enumerate(qrels)}
    soft = choose_temperature(qrels, mixed)
    assert soft["value"] == max(soft["nll"])
    assert soft["nll"][soft["value"]] < soft["nll"][1.0]  # a real improvement over T = 1
    # No query with a relevant candidate: nothing to fit.
    assert choose_temperature({"q": {"x": 1}}, {"q": {"a": 0.5, "b": 0.4}}) == {"value": 1.0, "nll": {}, "queries": 0}


def test_the_gate_records_the_temperature_and_training_reads_it(tmp_path, capsys):
    from embedray.pipeline.config import TrainJobConfig
    from embedray.config import build_config
    from embedray.pipeline.cross_encoder import gate

    job = build_config(TrainJobConfig, {"data": {"path": "data"}})
    t = {"value": 0.5, "nll": {0.5: 0.2, 1.0: 0.3}, "queries": 4}
    u = {"value": 2.0, "nll": {0.5: 0.5, 1.0: 0.45}, "queries": 1}
    one = {"before": {"ndcg@10": 0.5}, "after": {"ndcg@10": 0.6}, "depth": 5, "temperature": t}
    verdict = gate(job, one)
    assert verdict["temperature"] == 0.5 and verdict["passed"]
    # Several tasks: the temperature with the lowest likelihood loss over all their dev queries.
    assert gate(job, {"tasks": {"a": one, "b": {**one, "temperature": u}}})["temperature"] == 0.5
    (tmp_path / GATE_FILE).write_text(json.dumps(verdict))
    ce = DistillConfig(teacher="tiny-bert", score_source="cross_encoder")
    assert resolve_ce_temperature(ce, tmp_path).cross_encoder_temperature == 0.5
    assert "logits / 0.5 (chosen on dev)" in capsys.readouterr().out
    fixed = DistillConfig(teacher="tiny-bert", score_source="cross_encoder", cross_encoder_temperature=3.0)
    assert resolve_ce_temperature(fixed, tmp_path).cross_encoder_temperature == 3.0
    assert resolve_ce_temperature(ce, tmp_path / "none").cross_encoder_temperature == 1.0
    assert resolve_ce_temperature(DistillConfig(), tmp_path).cross_encoder_temperature is None
    with pytest.raises(ValueError, match="cross_encoder_temperature: must be a number > 0"):
        DistillConfig(cross_encoder_temperature=0)


def test_a_run_distils_from_the_pool_s_cross_encoder_logits(topic_beir, tmp_path, capsys, monkeypatch):
    """score_source: cross_encoder end to end, no Ray: the run's cross-encoder is trained, checked
    on dev (its temperature chosen), scores pool v1, and the loop's KL targets are its logits over
    temperature: the very tensors the loss receives are checked, not only that training ran."""
    from embedray.config import build_config
    from embedray.losses.kl_distill import KLDistillLoss
    from embedray.pipeline.config import TrainJobConfig
    from embedray.pipeline.runtime import run_local

    seen = []
    forward = KLDistillLoss.forward

    def spy(self, q, d_pos, d_neg, teacher_scores):
        seen.append(teacher_scores.detach().clone())
        return forward(self, q, d_pos, d_neg, teacher_scores)

    monkeypatch.setattr(KLDistillLoss, "forward", spy)
    job = build_config(TrainJobConfig, {
        "data": {"path": str(topic_beir)}, "model": {"name_or_path": "tiny-bert"},
        "loss": {"name": "infonce", "distill_score": "kl"},
        "distill": {"teacher": "tiny-bert", "score_source": "cross_encoder"},
        "train": {"max_steps": 3, "batch_size": 4, "num_negatives": 2, "eval_every": 0, "log_every": 1,
                  "max_doc_length": 48, "precision": "fp32", "checkpoint_every": 0},
        "mining": {"k": 10, "num_negatives": 2, "range_min": 0}, "refresh": {"mode": "static"},
        "cross_encoder": {"base_model": "tiny-bert", "max_steps": 2, "batch_size": 4, "negatives_per_query": 1,
                          "max_length": 48, "dev_rerank_depth": 5, "denoise_margin": -1.0, "gate": False},
        "cluster": {"storage_path": str(tmp_path), "run_name": "ce"}})
    run_local(job)
    run = tmp_path / "ce"
    verdict = json.loads((run / GATE_FILE).read_text())
    dev = json.loads((run / "cross_encoder_dev.json").read_text())
    assert verdict["temperature"] == dev["temperature"]["value"] and dev["temperature"]["queries"] > 0
    assert f"logits / {verdict['temperature']:g} (chosen on dev)" in capsys.readouterr().out
    assert len(seen) == 3 and all(t.shape == (4, 3) for t in seen)
    from embedray.mining.store import PoolStore

    pool = PoolStore(run / "pools").load(1)
    probs = [s for negs in pool.negatives.values() for _, s in negs]
    lo, hi = float(ce_logits(torch.tensor(min(probs)))), float(ce_logits(torch.tensor(max(probs))))
    targets = torch.cat(seen)[:, 1:] * verdict["temperature"]  # the negatives' columns, undone
    assert lo - 1e-4 <= float(targets.min()) and float(targets.max()) <= hi + 1e-4
