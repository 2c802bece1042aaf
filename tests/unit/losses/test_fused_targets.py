"""``distill.score_source: fused``: distillation targets from the cross-encoder's score fused with
the teacher bi-encoder's, the way the gate fuses them, at a weight and temperature chosen on dev."""
from __future__ import annotations

import json
import math

import pytest
import torch

from embedray.config import build_config
from embedray.mining.fusion import fuse
from embedray.pipeline.config import TrainJobConfig
from embedray.training.config import DistillConfig
from embedray.training.distill import GATE_FILE, ce_logits, choose_temperature, fused_targets, resolve_fusion

# Two rows of 1 + 3 candidates: the pool's cross-encoder probabilities and the teacher's cosines.
PROBS = torch.tensor([[0.90, 0.95, 0.20, 0.01], [0.70, 0.10, 0.30, 0.05]])
COS = torch.tensor([[0.80, 0.55, 0.60, 0.20], [0.75, 0.74, 0.10, 0.30]])


def _row(t: torch.Tensor, i: int) -> dict[str, float]:
    return {f"d{j}": float(v) for j, v in enumerate(t[i])}


def test_targets_are_the_gate_s_fusion_of_each_row():
    for alpha in (0.0, 0.3, 1.0):
        got = fused_targets(ce_logits(PROBS), COS, alpha, temperature=0.5)
        for i in range(2):
            want = fuse(_row(COS, i), _row(PROBS, i), alpha)  # the gate's fusion, probabilities in
            torch.testing.assert_close(got[i], torch.tensor([want[f"d{j}"] for j in range(4)]) / 0.5,
                                       atol=1e-5, rtol=0)
    # The ends are the two rankings; a mix orders row 0 the teacher's way, row 1 ties broken by both.
    assert fused_targets(ce_logits(PROBS), COS, 1.0)[0].argmax() == 1  # the cross-encoder's top: a negative
    assert fused_targets(ce_logits(PROBS), COS, 0.0)[0].argmax() == 0
    # Standardised rows: neither scale dominates, whatever the teacher's cosine range.
    t = fused_targets(ce_logits(PROBS), COS * 0.01, 0.5)
    torch.testing.assert_close(t, fused_targets(ce_logits(PROBS), COS, 0.5), atol=1e-5, rtol=0)
    # A row whose scores are all equal contributes zeros (no division by a zero spread).
    flat = fused_targets(torch.zeros(1, 3), torch.ones(1, 3), 0.5)
    assert torch.equal(flat, torch.zeros(1, 3))


def test_targets_are_not_flat():
    targets = fused_targets(ce_logits(PROBS[1:]), COS[1:], 0.5, temperature=0.25)
    p = torch.softmax(targets, -1)
    entropy = float(-(p * p.log()).sum())
    assert entropy < 0.6 * math.log(4) and p[0, 0] > 0.6  # the positive gets most of the mass


def test_the_weight_and_temperature_come_from_the_gate_or_the_config(tmp_path, capsys):
    from embedray.pipeline.cross_encoder import gate

    job = build_config(TrainJobConfig, {"data": {"path": "data/x"}, "model": {"name_or_path": "tiny-bert"},
                                        "cross_encoder": {"base_model": "tiny-bert"}})
    t03 = {"value": 0.25, "nll": {0.25: 0.4, 1.0: 0.6}, "queries": 8}
    report = {"before": {"ndcg@10": 0.60}, "after": {"ndcg@10": 0.55}, "depth": 5,
              "fused": {"alpha": 0.3, "ndcg@10": {0.0: 0.60, 0.3: 0.64, 1.0: 0.55}, "queries": 8,
                        "temperature": {0.0: {"value": 1.0, "nll": {0.25: 0.9, 1.0: 0.7}, "queries": 8}, 0.3: t03,
                                        1.0: {"value": 2.0, "nll": {0.25: 0.9, 1.0: 0.8}, "queries": 8}}}}
    verdict = gate(job, json.loads(json.dumps(report)))  # read back from JSON: string keys
    assert verdict["passed"] and verdict["fusion"] == {"alpha": 0.3, "dev": {"": 0.64}, "temperature": 0.25}
    (tmp_path / GATE_FILE).write_text(json.dumps(verdict))
    chosen = resolve_fusion(DistillConfig(teacher="tiny-bert", score_source="fused"), tmp_path)
    assert (chosen.fusion_alpha, chosen.fusion_temperature) == (0.3, 0.25)
    assert "(0.3 z(cross-encoder logit) + 0.7 z(teacher cosine)) / 0.25 (weight: chosen on dev)" in capsys.readouterr().out
    given = resolve_fusion(DistillConfig(teacher="tiny-bert", score_source="fused", fusion_alpha=0.6), tmp_path)
    assert (given.fusion_alpha, given.fusion_temperature) == (0.6, 1.0)  # the dev temperature was for 0.3
    fixed = DistillConfig(teacher="tiny-bert", score_source="fused", fusion_temperature=2.0)
    assert resolve_fusion(fixed, tmp_path).fusion_temperature == 2.0
    # A gate that passed the cross-encoder alone chose no weight: say what to set.
    (tmp_path / GATE_FILE).write_text(json.dumps({"checked": True, "passed": True, "why": "reranks dev better"}))
    with pytest.raises(ValueError, match="set distill.fusion_alpha.*this run's gate: reranks dev better"):
        resolve_fusion(DistillConfig(teacher="tiny-bert", score_source="fused"), tmp_path)
    with pytest.raises(ValueError, match="no gate verdict in"):
        resolve_fusion(DistillConfig(teacher="tiny-bert", score_source="fused"), tmp_path / "none")
    for bad in (1.5, -0.1, True):
        with pytest.raises(ValueError, match="fusion_alpha: must be a number in \\[0, 1\\]"):
            DistillConfig(fusion_alpha=bad)
    with pytest.raises(ValueError, match="fusion_temperature: must be a number > 0"):
        DistillConfig(fusion_temperature=0)


def test_the_fused_temperature_is_chosen_on_logits():
    """The dev check's temperature for fused scores reads them as logits (not as probabilities)."""
    qrels = {f"q{i}": {"rel": 1} for i in range(10)}
    run = {q: {"rel": 1.5, "a": -0.5, "b": -1.0} for q in qrels}  # always right, by ~2 logits
    as_logits = choose_temperature(qrels, run, logits=True)
    assert as_logits["value"] == min(as_logits["nll"])  # right every time: the sharpest
    # Read as probabilities these would be clipped at 1 - 1e-6 / 1e-6: another answer altogether.
    assert choose_temperature(qrels, run)["nll"] != as_logits["nll"]


def test_a_run_distils_from_the_fused_scores(topic_beir, tmp_path, capsys, monkeypatch):
    """score_source: fused end to end, no Ray, at a weight and temperature the recipe sets: the
    loop's KL targets are the gate's fusion of the pool's cross-encoder scores with the teacher's
    cosines of the same candidates, over the temperature. (The pool is denoised by the
    cross-encoder alone at a margin that keeps every negative: a random tiny model's fused rule
    would drop most of them.)"""
    import embedray.training.loop as loop
    from embedray.losses.kl_distill import KLDistillLoss
    from embedray.mining.store import PoolStore
    from embedray.pipeline.runtime import run_local

    seen, calls = [], []
    forward, real_fused, real_pool = KLDistillLoss.forward, loop.fused_targets, loop.pool_scores

    def spy_loss(self, q, d_pos, d_neg, teacher_scores):
        seen.append(teacher_scores.detach().clone())
        return forward(self, q, d_pos, d_neg, teacher_scores)

    def spy_pool(query_ids, pos_ids, neg_ids, scores, *args, **kw):
        calls.append({"ids": (list(query_ids), list(pos_ids), [list(n) for n in neg_ids])})
        return real_pool(query_ids, pos_ids, neg_ids, scores, *args, **kw)

    def spy_fused(ce, cos, alpha, temperature):
        out = real_fused(ce, cos, alpha, temperature)
        calls[-1].update(cos=cos.detach().clone(), alpha=alpha, temperature=temperature, out=out)
        return out

    monkeypatch.setattr(KLDistillLoss, "forward", spy_loss)
    monkeypatch.setattr(loop, "pool_scores", spy_pool)
    monkeypatch.setattr(loop, "fused_targets", spy_fused)
    run = tmp_path / "fused"
    run.mkdir()
    (run / GATE_FILE).write_text(json.dumps({"checked": False, "passed": True, "why": "cross_encoder.gate: false"}))
    job = build_config(TrainJobConfig, {
        "data": {"path": str(topic_beir)}, "model": {"name_or_path": "tiny-bert"},
        "loss": {"name": "infonce", "distill_score": "kl"},
        "distill": {"teacher": "tiny-bert", "score_source": "fused", "fusion_alpha": 0.4, "fusion_temperature": 0.5},
        "train": {"max_steps": 3, "batch_size": 4, "num_negatives": 2, "eval_every": 0, "log_every": 1,
                  "max_doc_length": 48, "precision": "fp32", "checkpoint_every": 0},
        "mining": {"k": 10, "num_negatives": 2, "range_min": 0}, "refresh": {"mode": "static"},
        "cross_encoder": {"base_model": "tiny-bert", "max_steps": 2, "batch_size": 4, "negatives_per_query": 1,
                          "max_length": 48, "dev_rerank_depth": 0, "denoise_margin": -1.0},
        "cluster": {"storage_path": str(tmp_path), "run_name": "fused"}})
    run_local(job)
    assert "(0.4 z(cross-encoder logit) + 0.6 z(teacher cosine)) / 0.5 (weight: distill.fusion_alpha)" in capsys.readouterr().out
    assert len(seen) == 3 and len(calls) == 3
    pool = PoolStore(run / "pools").load(1)
    by_query = {q: {**{d: s for d, s in negs}, **pool.positive_scores.get(q, {})} for q, negs in pool.negatives.items()}
    for targets, call in zip(seen, calls):
        assert call["alpha"] == 0.4 and call["temperature"] == 0.5 and torch.equal(targets, call["out"])
        assert float(call["cos"].abs().max()) <= 1 + 1e-5  # the teacher's cosines
        for i, (q, p, negs) in enumerate(zip(*call["ids"])):
            docs = [p, *negs]
            want = fuse({d: float(c) for d, c in zip(docs, call["cos"][i])}, {d: by_query[q][d] for d in docs}, 0.4)
            torch.testing.assert_close(targets[i], torch.tensor([want[d] / 0.5 for d in docs]), atol=1e-4, rtol=0)


def test_fused_targets_need_a_weight_and_a_passed_gate(topic_beir, tmp_path):
    from embedray.pipeline.refresh import prepare_negatives
    from embedray.training.data import load_training_data

    raw = {"data": {"path": str(topic_beir)}, "model": {"name_or_path": "tiny-bert"},
           "loss": {"name": "infonce", "distill_score": "kl"},
           "distill": {"teacher": "tiny-bert", "score_source": "fused"}, "refresh": {"mode": "static"},
           "cross_encoder": {"base_model": "tiny-bert"}}
    job = build_config(TrainJobConfig, raw)
    data = load_training_data(job.data)
    (tmp_path / "cross-encoder").mkdir()
    (tmp_path / "cross-encoder" / "config.json").write_text("{}")
    (tmp_path / GATE_FILE).write_text(json.dumps({"checked": True, "passed": True, "why": "reranks dev better"}))
    with pytest.raises(ValueError, match="no fusion weight was chosen on dev \\(reranks dev better\\); set "
                                         "distill.fusion_alpha"):
        prepare_negatives(job, data, tmp_path)
    (tmp_path / GATE_FILE).write_text(json.dumps({"checked": True, "passed": False, "why": "worse"}))
    with pytest.raises(ValueError, match="score_source: fused, but the cross-encoder gate failed"):
        prepare_negatives(job, data, tmp_path)
    with pytest.raises(ValueError, match="score_source: fused needs cross-encoder-scored pools"):
        build_config(TrainJobConfig, {**raw, "refresh": {"mode": "off"}})
    with pytest.raises(ValueError, match="distill_in_batch needs distill.score_source: teacher"):
        build_config(TrainJobConfig, {**raw, "loss": {"name": "infonce", "distill_score": "kl",
                                                      "distill_in_batch": True}})
