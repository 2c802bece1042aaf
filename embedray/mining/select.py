"""Negative selection: from a ranked candidate list per query to its hard negatives.

sentence-transformers' ``mine_hard_negatives`` couples selection to its own encoding and
search and returns texts in a ``datasets.Dataset``; embedray needs the same rules over ids and
a score matrix from any index (and from a refresher actor), so the rules are re-implemented
here with the same definitions and one difference, stated in ``select_negatives``.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from embedray.mining.config import MiningConfig


class Selection(dict):
    """``query_id → [doc_id, ...]`` (hardest first) plus ``skipped``: candidates removed per rule."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skipped: Counter = Counter()


def query_rng(seed: int, query_id: str) -> np.random.Generator:
    """A Generator seeded by (seed, query id): a query's sample does not depend on batch order."""
    h = int.from_bytes(hashlib.sha256(query_id.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, h])


def select_negatives(scores: np.ndarray, cand_ids: Sequence[Sequence[str | None]],
                     positives: Mapping[str, set[str] | Mapping[str, object]],
                     query_ids: Sequence[str], cfg: MiningConfig,
                     pos_scores: Mapping[str, Mapping[str, float]] | None = None,
                     n: int | None = None) -> Selection:
    """Pick hard negatives per query from its retrieved candidates.

    Order of the rules: (1) every known positive (and padding: ``None``/``""``/``"-1"`` ids,
    non-finite scores) is removed; (2) the rank window keeps ranks ``[range_min, range_max)`` of
    what is left; (3) the score rules (absolute/relative margin, NV ratio, max/min score) drop
    candidates; (4) ``top`` keeps the first ``n`` survivors, ``random`` samples ``n`` of them
    with :func:`query_rng` and re-sorts them by score. sentence-transformers applies its score
    rules *before* ``range_min``, so its window skips the first survivors rather than the first
    ranks; embedray skips ranks, which is what "the top of the ranking hides false negatives"
    asks for. Without score rules both agree.

    Args:
        scores: ``(num_queries, num_candidates)`` similarity of each candidate, any order.
        cand_ids: doc ids aligned with ``scores`` (a row may be shorter: its trailing scores
            are padding, as :meth:`VectorIndex.search` returns them).
        positives: query id → its known positive doc ids (a set or a qrels-like mapping).
        query_ids: the query id of each row.
        cfg: selection rules.
        pos_scores: query id → {positive id: score} (same scorer as ``scores``); needed when a
            margin or ratio rule is set. The lowest positive score of a query is the reference.
        n: negatives to keep per query (default ``cfg.num_negatives``).

    Returns:
        A :class:`Selection`: query id → doc ids (hardest first, possibly fewer than ``n``).
    """
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim != 2 or scores.shape[0] != len(query_ids) or len(cand_ids) != len(query_ids):
        raise ValueError(f"scores {scores.shape}, cand_ids ({len(cand_ids)} rows) and query_ids "
                         f"({len(query_ids)}) must agree on the number of queries")
    n = cfg.num_negatives if n is None else n
    out = Selection()
    for row, qid in enumerate(query_ids):
        ids = cand_ids[row]
        if len(ids) > scores.shape[1]:
            raise ValueError(f"query {qid!r}: {len(ids)} candidate ids for {scores.shape[1]} scores")
        known = positives.get(qid, ())
        # VectorIndex.search drops unfilled slots from the end of a row: score only len(ids).
        order = np.argsort(-scores[row, :len(ids)], kind="stable")  # (num_ids,)
        cands = [(ids[i], float(scores[row, i])) for i in order
                 if ids[i] not in (None, "", "-1") and ids[i] not in known
                 and np.isfinite(scores[row, i])]
        window = cands[cfg.range_min:cfg.window_end]
        out.skipped["rank_window"] += len(cands) - len(window)
        kept = _apply_score_rules(window, qid, cfg, pos_scores, out.skipped)
        if cfg.sampling_strategy == "random" and len(kept) > n:
            pick = np.sort(query_rng(cfg.seed, qid).choice(len(kept), size=n, replace=False))
            kept = [kept[i] for i in pick]  # sorted indices keep the hardest-first order
        out[qid] = [d for d, _ in kept[:n]]
    return out


def _apply_score_rules(cands: list[tuple[str, float]], qid: str, cfg: MiningConfig,
                       pos_scores: Mapping[str, Mapping[str, float]] | None,
                       skipped: Counter) -> list[tuple[str, float]]:
    """Drop candidates by the margin / ratio / absolute score rules, counting each rule."""
    limits: list[tuple[str, float, bool]] = []  # (rule, bound, is_upper_bound)
    if cfg.uses_positive_score:
        if pos_scores is None or not pos_scores.get(qid):
            raise ValueError(f"query {qid!r}: a margin/ratio rule is set but no positive score "
                             "is known for it; pass pos_scores (query → {positive id: score})")
        pos = min(pos_scores[qid].values())
        if cfg.absolute_margin is not None:
            limits.append(("absolute_margin", pos - cfg.absolute_margin, True))
        if cfg.relative_margin is not None:
            limits.append(("relative_margin", pos - abs(pos) * cfg.relative_margin, True))
        if cfg.max_score_ratio is not None:
            limits.append(("max_score_ratio", pos - abs(pos) * (1 - cfg.max_score_ratio), True))
    if cfg.max_score is not None:
        limits.append(("max_score", cfg.max_score, True))
    if cfg.min_score is not None:
        limits.append(("min_score", cfg.min_score, False))
    kept = []
    for doc, s in cands:
        # A small tolerance so that a candidate exactly on a bound is kept whatever the float
        # rounding of (pos - margin): the rules are written as "<=".
        failed = next((rule for rule, bound, upper in limits
                       if (s > bound + 1e-6 if upper else s < bound - 1e-6)), None)
        if failed:
            skipped[failed] += 1
        else:
            kept.append((doc, s))
    return kept
