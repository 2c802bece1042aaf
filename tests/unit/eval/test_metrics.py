"""compute_metrics against values worked out by hand with the textbook formulas."""
from __future__ import annotations

import math

import pytest

from embedray.eval.metrics import compute_metrics


def dcg(gains: list[float]) -> float:
    """Linear-gain DCG (trec_eval's): sum of rel_i / log2(i + 1), ranks i from 1."""
    return sum(g / math.log2(i + 1) for i, g in enumerate(gains, start=1))


def ranked(*doc_ids: str) -> dict[str, float]:
    """A run row with strictly decreasing scores in the given order."""
    return {d: float(len(doc_ids) - i) for i, d in enumerate(doc_ids)}


def test_single_query_graded_relevance():
    qrels = {"q": {"a": 2, "b": 1, "z": 1}}  # z is never retrieved
    run = {"q": ranked("x", "a", "y", "b")}
    m = compute_metrics(qrels, run, ks=(10,))
    ideal = dcg([2, 1, 1])
    assert m["ndcg@10"] == pytest.approx(dcg([0, 2, 0, 1]) / ideal, abs=1e-6)
    assert m["recall@10"] == pytest.approx(2 / 3)
    assert m["mrr@10"] == pytest.approx(1 / 2)
    assert m["num_queries"] == 1


def test_cutoffs_apply_to_every_metric():
    qrels = {"q": {"r": 1}}
    run = {"q": ranked(*[f"n{i}" for i in range(12)], "r")}  # relevant doc at rank 13
    m = compute_metrics(qrels, run, ks=(10, 100))
    assert m["ndcg@10"] == 0 and m["recall@10"] == 0 and m["mrr@10"] == 0
    assert m["recall@100"] == 1
    assert m["ndcg@100"] == pytest.approx(1 / math.log2(14), abs=1e-6)
    assert m["mrr@100"] == pytest.approx(1 / 13)


def test_mean_over_qrels_queries_missing_run_counts_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 1}, "q4": {"d": 0}}
    run = {"q1": ranked("a", "x"),              # perfect
           "q2": ranked("x", "y", "b"),         # relevant at rank 3
           # q3 has no run entry; q4's only judgement is non-relevant
           "q4": ranked("d"),
           "q_extra": ranked("a")}              # not judged: ignored
    m = compute_metrics(qrels, run, ks=(10,))
    assert m["num_queries"] == 4
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4)) / 4, abs=1e-6)
    assert m["recall@10"] == pytest.approx(2 / 4)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 3) / 4)


def test_ranking_uses_scores_not_dict_order():
    qrels = {"q": {"a": 1}}
    m = compute_metrics(qrels, {"q": {"b": 0.9, "c": 0.1, "a": 0.5}}, ks=(10,))
    assert m["mrr@10"] == pytest.approx(1 / 2)
    assert m["ndcg@10"] == pytest.approx(1 / math.log2(3), abs=1e-6)


def test_mrr_cutoff_truncates_the_run():
    qrels = {"q": {"r": 1}}
    run = {"q": ranked(*[f"n{i}" for i in range(10)], "r")}  # rank 11: outside the top 10
    assert compute_metrics(qrels, run, ks=(10,))["mrr@10"] == 0
    assert compute_metrics(qrels, run, ks=(11,))["mrr@11"] == pytest.approx(1 / 11)


def test_empty_and_bad_inputs():
    assert compute_metrics({}, {}, ks=(10,)) == {"ndcg@10": 0.0, "recall@10": 0.0, "mrr@10": 0.0,
                                                 "num_queries": 0}
    with pytest.raises(ValueError, match="positive"):
        compute_metrics({"q": {"a": 1}}, {}, ks=(0,))


def test_per_query_ndcg_and_paired_bootstrap():
    from embedray.eval.metrics import compute_metrics, paired_bootstrap, per_query_ndcg

    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 1}}
    good = {"q1": {"a": 2.0, "x": 1.0}, "q2": {"b": 2.0, "x": 1.0}, "q3": {"x": 2.0, "c": 1.0}}
    bad = {"q1": {"x": 2.0, "a": 1.0}, "q2": {"x": 2.0}}
    pq = per_query_ndcg(qrels, good)
    assert pq["q1"] == 1.0 and pq["q3"] < 1.0
    assert sum(pq.values()) / 3 == pytest.approx(compute_metrics(qrels, good)["ndcg@10"])
    assert per_query_ndcg(qrels, bad)["q3"] == 0.0  # missing from the run
    out = paired_bootstrap(per_query_ndcg(qrels, bad), pq, rounds=500)
    assert out["queries"] == 3 and out["low"] <= out["diff"] <= out["high"] and out["diff"] > 0
    same = paired_bootstrap(pq, pq)
    assert same["diff"] == same["low"] == same["high"] == 0.0
