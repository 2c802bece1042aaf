"""Retrieval metrics (nDCG@k, Recall@k, MRR@k) with pytrec_eval, the trec_eval that BEIR and MTEB use.

Conventions (the ones published BEIR/MTEB figures follow):

- nDCG uses trec_eval's linear gain: ``DCG@k = sum_i rel_i / log2(i + 1)`` over ranks ``i = 1..k``.
- A document is relevant when its judgement is ``>= 1``; Recall@k divides by every relevant
  judgement of the query, including ones whose document is missing from the corpus.
- Scores are averaged over every query of ``qrels``. A query without a run entry scores 0
  (pytrec_eval alone would leave it out and inflate the mean); so does a query whose
  judgements are all 0, as in BEIR and MTEB.
- Ties in score are broken as trec_eval does (document id, descending).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import pytrec_eval

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]


def compute_metrics(qrels: Qrels, run: Run, ks: Iterable[int] = (10, 100)) -> dict[str, float]:
    """Mean nDCG@k, Recall@k and MRR@k over the judged queries.

    Args:
        qrels: ``query id -> {doc id: relevance}``; relevance ``>= 1`` is relevant.
        run: ``query id -> {doc id: score}``, higher is better. Extra queries are ignored.
        ks: cutoffs; each gives ``ndcg@k``, ``recall@k`` and ``mrr@k``.

    Returns:
        ``{"ndcg@10": ..., "recall@10": ..., "mrr@10": ..., ..., "num_queries": n}`` where ``n``
        counts the queries of ``qrels`` (those with no judgements at all are left out).
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive cutoffs, got {ks}")
    qrels = {str(q): {str(d): int(r) for d, r in docs.items()}
             for q, docs in qrels.items() if docs}
    run = {str(q): {str(d): float(s) for d, s in docs.items()}
           for q, docs in run.items() if str(q) in qrels and docs}
    n = len(qrels)
    out: dict[str, float] = {}
    if n == 0:
        return {**{f"{m}@{k}": 0.0 for k in ks for m in ("ndcg", "recall", "mrr")}, "num_queries": 0}
    measures = {f"ndcg_cut.{','.join(map(str, ks))}", f"recall.{','.join(map(str, ks))}"}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    for k in ks:
        out[f"ndcg@{k}"] = sum(r[f"ndcg_cut_{k}"] for r in per_query.values()) / n
        out[f"recall@{k}"] = sum(r[f"recall_{k}"] for r in per_query.values()) / n
    # trec_eval's recip_rank has no cutoff: it looks at the whole ranking. MRR@k is the reciprocal
    # rank of the first relevant document within the top k, so evaluate a run cut to its top k.
    mrr_eval = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"})
    for k in ks:
        per_query = mrr_eval.evaluate(_top_k(run, k))
        out[f"mrr@{k}"] = sum(r["recip_rank"] for r in per_query.values()) / n
    out["num_queries"] = n
    return out


def _top_k(run: dict[str, dict[str, float]], k: int) -> dict[str, dict[str, float]]:
    """Keep each query's k best documents, ordered as trec_eval orders them (score, then id desc)."""
    return {q: dict(sorted(docs.items(), key=lambda x: (x[1], x[0]), reverse=True)[:k])
            for q, docs in run.items()}


def per_query_ndcg(qrels: Qrels, run: Run, k: int = 10) -> dict[str, float]:
    """nDCG@k of each judged query (0 for a query the run lacks), as :func:`compute_metrics` averages it."""
    qrels = {str(q): {str(d): int(r) for d, r in docs.items()} for q, docs in qrels.items() if docs}
    run = {str(q): {str(d): float(s) for d, s in docs.items()} for q, docs in run.items() if str(q) in qrels and docs}
    scores = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut.{k}"}).evaluate(run)
    return {q: scores[q][f"ndcg_cut_{k}"] if q in scores else 0.0 for q in qrels}


def paired_bootstrap(a: Mapping[str, float], b: Mapping[str, float], rounds: int = 2000,
                     seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Mean of ``b - a`` over the queries both score, with a percentile bootstrap interval
    (queries resampled with replacement ``rounds`` times): ``{"diff", "low", "high", "queries"}``."""
    import numpy as np

    queries = sorted(set(a) & set(b))
    if not queries:
        raise ValueError("paired_bootstrap: the two runs share no query")
    diff = np.array([b[q] - a[q] for q in queries])  # (n,)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(rounds, len(diff)))].mean(axis=1)  # (rounds,)
    tail = (1 - level) / 2 * 100
    return {"diff": float(diff.mean()), "low": float(np.percentile(means, tail)),
            "high": float(np.percentile(means, 100 - tail)), "queries": len(queries)}
