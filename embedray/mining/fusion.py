"""A cross-encoder's score fused with the bi-encoder's: a reranker no worse on dev than the ranking
it reranks.

Over one query's candidates, ``fused = α · z(logit of the cross-encoder) + (1 − α) · z(bi-encoder
score)``, where ``z`` standardises a score over those candidates (mean 0, standard deviation 1),
so neither scale dominates. ``α = 0`` is the bi-encoder's own order and ``α = 1`` the
cross-encoder's; :func:`embedray.training.cross_encoder.choose_alpha` picks ``α`` on dev (the
highest nDCG@10; a tie goes to the smaller ``α``, the bi-encoder's side). A cross-encoder trained briefly from a fresh head often
orders candidates worse than the bi-encoder alone yet still knows something the bi-encoder does
not: fusion keeps that part (the interpolation RocketQA and most rerank pipelines tune on dev).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

#: The weights of the cross-encoder tried on dev.
ALPHAS = tuple(round(i / 10, 1) for i in range(11))

Run = Mapping[str, Mapping[str, float]]


def ce_logit(p: float, eps: float = 1e-6) -> float:
    """The logit of a one-label cross-encoder's sigmoid probability (clipped away from 0 and 1)."""
    p = min(max(float(p), eps), 1 - eps)
    return math.log(p / (1 - p))


def zscores(scores: Mapping[str, float]) -> dict[str, float]:
    """Scores standardised over their own list (all 0.0 when they are all equal)."""
    values = list(scores.values())
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return {d: (v - mean) / std if std > 0 else 0.0 for d, v in scores.items()}


def fuse(bi: Mapping[str, float], ce: Mapping[str, float], alpha: float) -> dict[str, float]:
    """The fused scores of one query's candidates ``ce`` (cross-encoder probabilities); ``bi``
    holds the bi-encoder's score of each of them."""
    missing = [d for d in ce if d not in bi]
    if missing:
        raise KeyError(f"no bi-encoder score for candidate {missing[0]!r}")
    z_ce = zscores({d: ce_logit(p) for d, p in ce.items()})
    z_bi = zscores({d: bi[d] for d in ce})
    return {d: alpha * z_ce[d] + (1 - alpha) * z_bi[d] for d in ce}


def fuse_run(bi_run: Run, ce_run: Run, alpha: float) -> dict[str, dict[str, float]]:
    """:func:`fuse` for every query of ``ce_run`` (the reranked candidates)."""
    return {q: fuse(bi_run[q], docs, alpha) for q, docs in ce_run.items() if docs}
