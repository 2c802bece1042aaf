"""Cross-encoder rescoring of mined negatives and RocketQA-style denoising.

A mined negative that the cross-encoder scores about as high as (or higher than) the query's
known positive is most likely an unlabelled positive: training on it as a negative teaches the
bi-encoder the wrong thing (sentence-transformers #3350, FlagEmbedding #850). ``denoise`` drops
those; the survivors and the positives keep their cross-encoder scores as teacher scores for
distillation.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from embedray.mining.cache import ShardedCache, folder_fingerprint, pair_hash, state_dict_fingerprint
from embedray.mining.fusion import fuse
from embedray.mining.pool import NegativePool

log = logging.getLogger(__name__)


def cross_encoder_fingerprint(ce) -> str:
    """Fingerprint of a cross-encoder (a folder path or a loaded ``CrossEncoder``)."""
    if isinstance(ce, (str, os.PathLike)):
        return folder_fingerprint(ce)
    return state_dict_fingerprint(ce.state_dict(), extra=f"max_length={getattr(ce, 'max_seq_length', None)}")


def score_cache(cache_dir: str | os.PathLike, ce_fp: str) -> ShardedCache:
    """The (query, document) → cross-encoder score cache of one cross-encoder."""
    return ShardedCache(Path(cache_dir) / "ce" / ce_fp)


def rescore(ce, pairs: Sequence[tuple[str, str]], batch_size: int = 32,
            cache: ShardedCache | None = None) -> np.ndarray:
    """Score ``(query, document)`` text pairs with a cross-encoder, in batches.

    ``CrossEncoder.predict`` already sorts the pairs by length so that batches pad little, and
    applies the model's activation (sigmoid for a 1-logit head, so scores lie in [0, 1]).

    Args:
        ce: a ``sentence_transformers.CrossEncoder``.
        pairs: text pairs to score.
        batch_size: pairs per forward pass.
        cache: optional score cache: only pairs it lacks are scored (then added to it).

    Returns:
        float32 ``(len(pairs),)`` scores.
    """
    if not pairs:
        return np.zeros(0, np.float32)
    if cache is None:
        return np.asarray(ce.predict(list(pairs), batch_size=batch_size, show_progress_bar=False),
                          dtype=np.float32).reshape(-1)
    keys = [pair_hash(q, d) for q, d in pairs]
    todo: dict[str, tuple[str, str]] = {}
    for i in cache.missing(keys):
        todo.setdefault(keys[i], pairs[i])
    if todo:
        new = np.asarray(ce.predict(list(todo.values()), batch_size=batch_size,
                                    show_progress_bar=False), dtype=np.float32)
        cache.put(list(todo), new.reshape(-1, 1))
    return cache.get(keys).reshape(-1)


def denoise(pool: NegativePool, ce_scores: Mapping[str, Mapping[str, float]],
            pos_scores: Mapping[str, Mapping[str, float]], margin: float,
            max_negatives: int | None = None, fusion: tuple[float, Mapping] | None = None,
            fusion_margin: float = 0.0, drop: bool = True) -> tuple[NegativePool, int]:
    """Drop likely false negatives: a negative with ``ce >= min(pos ce) - margin`` is removed;
    with ``fusion``, one whose fused score is at or above its query's lowest positive's minus
    ``fusion_margin``.

    Args:
        pool: mined negatives (hardest first by the bi-encoder); their score slots are replaced.
        ce_scores: query id → {negative id: cross-encoder score}; every negative needs one.
        pos_scores: query id → {positive id: cross-encoder score}. The lowest positive of a query
            is the reference, as in sentence-transformers' margins.
        margin: how far below the positive a negative must score to be kept.
        max_negatives: keep at most this many survivors per query (in the pool's order).
        fusion: ``(alpha, bi_scores)``: judge each negative by the cross-encoder's score fused
            with the bi-encoder's (:func:`embedray.mining.fusion.fuse`, over the query's
            positives and negatives); ``bi_scores``: query id → {doc id: bi-encoder score} of
            its positives and negatives.
        fusion_margin: under ``fusion``, how far below the positive's fused score a negative must
            score to be kept, in standard deviations of the query's scores (fused scores are sums
            of z-scores): a copy of the positive scored a hair apart is still dropped.
        drop: ``False`` keeps every negative (scored, none dropped).

    Returns:
        ``(new_pool, removed)``: the pool whose negatives and positives carry cross-encoder scores
        (same version and meta) and the number of negatives dropped as false negatives.
    """
    removed = 0
    negatives: dict[str, list[tuple[str, float | None]]] = {}
    for qid, negs in pool.negatives.items():
        pos = pos_scores.get(qid)
        if not pos:
            raise ValueError(f"query {qid!r}: no cross-encoder score for any positive; "
                             "score the positives with the same cross-encoder first")
        missing = [did for did, _ in negs if did not in ce_scores.get(qid, {})]
        if missing:
            raise ValueError(f"query {qid!r}: negative {missing[0]!r} has no cross-encoder score")
        judge = {did: float(ce_scores[qid][did]) for did, _ in negs}
        threshold = min(pos.values()) - margin
        if fusion is not None and negs:
            alpha, bi = fusion[0], fusion[1].get(qid, {})
            fused = fuse(bi, {**judge, **{d: s for d, s in pos.items() if d in bi}}, alpha)
            judge = {did: fused[did] for did, _ in negs}
            threshold = (min(fused[d] for d in pos if d in fused) - fusion_margin
                         if any(d in fused for d in pos) else float("inf"))
        kept = []
        for did, _ in negs:
            if drop and judge[did] >= threshold:
                removed += 1
            else:
                kept.append((did, float(ce_scores[qid][did])))
        negatives[qid] = kept[:max_negatives] if max_negatives is not None else kept
    positive = {q: {d: float(s) for d, s in pos_scores[q].items()} for q in pool.negatives}
    return NegativePool(pool.version, negatives, positive, dict(pool.meta)), removed


def rescore_and_denoise(pool: NegativePool, ce, queries: Mapping[str, str],
                        doc_texts: Mapping[str, str], positives: Mapping[str, Sequence[str] | Mapping],
                        margin: float, max_negatives: int | None = None, batch_size: int = 32,
                        cache: ShardedCache | None = None,
                        fusion: tuple[float, Mapping] | None = None,
                        fusion_margin: float = 0.0, drop: bool = True) -> tuple[NegativePool, dict]:
    """Score every (query, negative) and (query, positive) pair of ``pool``, then :func:`denoise`.

    Args:
        pool: mined negatives per query.
        ce: a loaded ``CrossEncoder``.
        queries: query id → text.
        doc_texts: doc id → the text the cross-encoder reads (title + text).
        positives: query id → its positive doc ids (positives missing from ``doc_texts`` are
            skipped: they cannot be scored).
        margin: denoising margin (see :func:`denoise`).
        max_negatives: negatives kept per query after denoising.
        batch_size: cross-encoder batch size.
        cache: optional score cache (a refresh then scores only pairs it has not seen).
        fusion, fusion_margin: denoise by the fused score (see :func:`denoise`).
        drop: ``False``: score only, drop nothing.

    Returns:
        ``(pool, stats)`` with stats ``negatives_removed``, ``pairs_scored`` (pairs sent to the
        model), ``pairs_total`` and ``rescore_s``.
    """
    start = time.perf_counter()
    keys: list[tuple[str, str, bool]] = []  # (qid, did, is_positive)
    for qid, negs in pool.negatives.items():
        keys += [(qid, d, True) for d in positives.get(qid, ()) if d in doc_texts]
        keys += [(qid, d, False) for d, _ in negs]
    pairs = [(queries[q], doc_texts[d]) for q, d, _ in keys]
    before = len(cache) if cache is not None else 0
    scores = rescore(ce, pairs, batch_size=batch_size, cache=cache)
    scored = (len(cache) - before) if cache is not None else len(pairs)
    neg_s: dict[str, dict[str, float]] = {}
    pos_s: dict[str, dict[str, float]] = {}
    for (q, d, is_pos), s in zip(keys, scores):
        (pos_s if is_pos else neg_s).setdefault(q, {})[d] = float(s)
    # Queries whose positives are all missing from the corpus cannot be denoised: leave them out.
    unscorable = [q for q in pool.negatives if q not in pos_s]
    if unscorable:
        log.warning("%d queries have no scorable positive (not in the corpus); dropped from the "
                    "pool, e.g. %s", len(unscorable), unscorable[:3])
        pool = NegativePool(pool.version, {q: v for q, v in pool.negatives.items() if q in pos_s},
                            pool.positive_scores, pool.meta)
    new, removed = denoise(pool, neg_s, pos_s, margin, max_negatives, fusion, fusion_margin, drop)
    stats = {"negatives_removed": removed, "pairs_scored": scored, "pairs_total": len(pairs),
             "queries_unscorable": len(unscorable), "rescore_s": time.perf_counter() - start}
    return new, stats
