"""Offline mining in one call: encode → index → search → select → rescore → denoise.

The pieces are separate functions so that the refresher actor (embedray/cluster) can swap
any of them: :func:`encode_queries_and_corpus` (cache-aware, pluggable encoder — e.g. Ray
Data), :func:`mine_negatives` (index + search + selection), and
:func:`embedray.mining.rescore.rescore_and_denoise`. :func:`mine` chains them and returns the
pool with per-phase timings and counts (the refresh telemetry).
"""
from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from embedray.data.beir import Document
from embedray.mining.cache import (EncodeResult, doc_key, encode_with_cache, folder_fingerprint,
                                   model_fingerprint, query_key, with_precision)
from embedray.mining.config import CrossEncoderConfig, MiningConfig
from embedray.mining.index import VectorIndex
from embedray.mining.pool import NegativePool
from embedray.mining.rescore import cross_encoder_fingerprint, rescore_and_denoise, score_cache
from embedray.mining.select import Selection, select_negatives

log = logging.getLogger(__name__)

Kind = Literal["query", "doc"]
#: ``encode_fn(texts, kind) -> (len(texts), dim)`` L2-normalised float32 embeddings.
EncodeFn = Callable[[list[str], Kind], np.ndarray]
Positives = Mapping[str, set[str] | Sequence[str] | Mapping[str, int]]


def st_encode_fn(model, batch_size: int = 32, query_prompt: str = "", doc_prompt: str = "",
                 show_progress: bool = False) -> EncodeFn:
    """Wrap a ``SentenceTransformer`` as an :data:`EncodeFn` (normalised embeddings).

    ``encode_query`` / ``encode_document`` apply the model's own ``query``/``document`` prompts
    unless an explicit prompt is given; sentence-transformers sorts each call by length.
    """
    def encode(texts: list[str], kind: Kind) -> np.ndarray:
        fn = model.encode_query if kind == "query" else model.encode_document
        prompt = (query_prompt if kind == "query" else doc_prompt) or None
        return np.asarray(fn(texts, batch_size=batch_size, prompt=prompt, normalize_embeddings=True,
                             convert_to_numpy=True, show_progress_bar=show_progress), np.float32)
    return encode


def doc_text(doc: Document | str) -> str:
    """The text a model reads for a corpus entry (``title + " " + text`` for a Document)."""
    return doc.text_for_model if isinstance(doc, Document) else str(doc)


@dataclass
class EncodedSplit:
    """Query and corpus embeddings of one mining round plus what the cache saved."""

    query_ids: list[str]
    query_emb: np.ndarray  # (num_queries, dim)
    doc_ids: list[str]
    doc_emb: np.ndarray  # (num_docs, dim)
    counts: dict[str, int] = field(default_factory=dict)


def encode_queries_and_corpus(encode_fn: EncodeFn, queries: Mapping[str, str],
                              corpus: Mapping[str, Document | str], cfg: MiningConfig,
                              weights_fp: str | None = None, cache_dir: str | os.PathLike | None = None,
                              encode_corpus: Callable[[list[str]], np.ndarray] | None = None) -> EncodedSplit:
    """Encode queries and corpus, through the embedding cache when ``weights_fp`` and ``cache_dir``.

    Args:
        encode_fn: the bi-encoder (see :data:`EncodeFn`).
        queries: query id → text (only these are encoded).
        corpus: doc id → :class:`Document` or text.
        cfg: prompts (part of the cache key).
        weights_fp: fingerprint of the weights; ``None`` disables the cache.
        cache_dir: cache root; ``None`` disables the cache.
        encode_corpus: optional replacement for encoding documents (e.g. Ray Data actors); it
            receives only the documents missing from the cache.
    """
    cache = cache_dir if weights_fp else None
    if cache_dir and not weights_fp:
        log.warning("no weights fingerprint: the embedding cache is not used")
    doc_ids = list(corpus)
    doc_fn = encode_corpus or (lambda texts: encode_fn(texts, "doc"))
    docs: EncodeResult = encode_with_cache([doc_text(corpus[d]) for d in doc_ids], doc_fn,
                                           weights_fp or "", cache, prompt=doc_key(cfg.doc_prompt))
    query_ids = list(queries)
    qs: EncodeResult = encode_with_cache([queries[q] for q in query_ids],
                                         lambda texts: encode_fn(texts, "query"), weights_fp or "",
                                         cache, prompt=query_key(cfg.query_prompt))
    counts = {"docs": len(doc_ids), "docs_encoded": docs.n_encoded, "docs_cached": docs.n_cached,
              "queries_encoded": qs.n_encoded, "queries_cached": qs.n_cached}
    return EncodedSplit(query_ids, qs.embeddings, doc_ids, docs.embeddings, counts)


@dataclass
class Candidates:
    """What :func:`mine_negatives` found.

    Attributes:
        negatives: query id → ``[(doc id, bi-encoder score)]``, hardest first.
        pos_scores: query id → {positive id: bi-encoder score} (positives found in the corpus).
        skipped: candidates removed per selection rule.
        timings: ``index_s``, ``search_s``, ``select_s``.
        index: the index that was searched (built here unless one was passed).
    """

    negatives: dict[str, list[tuple[str, float]]]
    pos_scores: dict[str, dict[str, float]]
    skipped: Counter
    timings: dict[str, float]
    index: VectorIndex | None = None

    def bi_scores(self) -> dict[str, dict[str, float]]:
        """Query id → {doc id: bi-encoder score} of its selected negatives and its positives."""
        return {q: {**{d: s for d, s in negs}, **self.pos_scores.get(q, {})} for q, negs in self.negatives.items()}

    def to_pool(self, version: int = 0, meta: dict | None = None) -> NegativePool:
        """A pool without cross-encoder scores (score slots are ``None``)."""
        return NegativePool(version, {q: [(d, None) for d, _ in negs] for q, negs in self.negatives.items()},
                            {}, dict(meta or {}))


def mine_negatives(query_ids: Sequence[str], query_emb: np.ndarray, positives: Positives,
                   cfg: MiningConfig, *, index: VectorIndex | None = None,
                   doc_ids: Sequence[str] | None = None, doc_emb: np.ndarray | None = None,
                   n: int | None = None, version: int = 0) -> Candidates:
    """Search the corpus for each query and select its hard negatives.

    Args:
        query_ids: ids of the queries to mine (rows of ``query_emb``).
        query_emb: ``(num_queries, dim)`` normalised query embeddings.
        positives: query id → known positive doc ids; all of them are excluded.
        cfg: retrieval depth and selection rules.
        index: a built index to search; otherwise one is built from ``doc_emb`` with
            ``cfg.index_factory`` and ``cfg.index_type``.
        doc_ids: ids of the rows of ``doc_emb``.
        doc_emb: ``(num_docs, dim)`` normalised corpus embeddings; also gives the positives'
            scores for the margin rules (else the scores of positives found by the search).
        n: negatives to select per query (default ``cfg.num_negatives``; a denoising cross-encoder
            gets ``cfg.candidates_per_query``, to replace the ones it drops).
        version: version number stored in a newly built index.

    Returns:
        :class:`Candidates`.
    """
    timings = {"index_s": 0.0}
    if index is None:
        if doc_emb is None or doc_ids is None:
            raise ValueError("mine_negatives needs an index or doc_ids + doc_emb")
        t = time.perf_counter()
        index = VectorIndex.build(doc_emb, list(doc_ids), factory=cfg.index_factory, version=version,
                                  index_type=cfg.index_type)
        timings["index_s"] = time.perf_counter() - t
    pos_sets = {q: set(positives.get(q, ())) for q in query_ids}
    room = max((len(p) for p in pos_sets.values()), default=0)
    t = time.perf_counter()
    scores, cand_ids = index.search(np.asarray(query_emb, np.float32), cfg.k + room)  # (m, k+room)
    timings["search_s"] = time.perf_counter() - t

    t = time.perf_counter()
    pos_scores = _positive_scores(query_ids, query_emb, pos_sets, scores, cand_ids, doc_ids, doc_emb)
    selection: Selection = select_negatives(scores, cand_ids, pos_sets, query_ids, cfg,
                                            pos_scores=pos_scores, n=n or cfg.num_negatives)
    negatives = {}
    for row, qid in enumerate(query_ids):
        row_scores = dict(zip(cand_ids[row], scores[row].tolist()))
        negatives[qid] = [(d, float(row_scores[d])) for d in selection[qid]]
    timings["select_s"] = time.perf_counter() - t
    return Candidates(negatives, pos_scores, selection.skipped, timings, index)


def _positive_scores(query_ids, query_emb, pos_sets, scores, cand_ids, doc_ids, doc_emb):
    """Bi-encoder score of every positive: exact from ``doc_emb``, else from the search hits."""
    out: dict[str, dict[str, float]] = {}
    row_of = {d: i for i, d in enumerate(doc_ids)} if doc_emb is not None and doc_ids is not None else {}
    for i, qid in enumerate(query_ids):
        found = {}
        hits = dict(zip(cand_ids[i], scores[i].tolist()))
        for d in pos_sets[qid]:
            if d in row_of:
                found[d] = float(np.dot(query_emb[i], doc_emb[row_of[d]]))
            elif d in hits:
                found[d] = float(hits[d])
        if found:
            out[qid] = found
    return out


@dataclass
class MineResult:
    """A mined (and, with a cross-encoder, rescored and denoised) pool plus its telemetry.

    Attributes:
        pool: the negative pool.
        timings: seconds per phase: ``encode_s``, ``index_s``, ``search_s``, ``select_s``,
            ``rescore_s`` and ``total_s``.
        counts: ``queries``, ``queries_mined`` (with at least one negative), ``negatives_kept``,
            ``negatives_removed`` (dropped by the cross-encoder), ``docs``, ``docs_encoded``,
            ``docs_cached``, ``queries_encoded``, ``pairs_scored``, ``pairs_total`` and
            ``skipped_<rule>`` per selection rule.
        index: the index built in this round (publish it with an ``IndexStore``).
        doc_ids, doc_emb: the corpus embeddings this round searched (rows in ``doc_ids`` order).
        near: the queries' current candidates (the negatives selected before any denoising) and
            their positives.
    """

    pool: NegativePool
    timings: dict[str, float]
    counts: dict[str, int]
    index: VectorIndex | None = None
    doc_ids: list[str] = field(default_factory=list)
    doc_emb: np.ndarray | None = None
    near: frozenset = frozenset()

    def telemetry(self) -> dict:
        """``{"timings": ..., "counts": ...}``, JSON-ready."""
        return {"timings": dict(self.timings), "counts": dict(self.counts)}


def mine(corpus: Mapping[str, Document | str], queries: Mapping[str, str], positives: Positives,
         model, cfg: MiningConfig, *, cross_encoder=None, ce_cfg: CrossEncoderConfig | None = None,
         cache_dir: str | os.PathLike | None = None, weights_fp: str | None = None,
         version: int = 0, encode_corpus: Callable[[list[str]], np.ndarray] | None = None,
         show_progress: bool = False, cache_embeddings: bool = True,
         fusion_alpha: float | None = None, denoise: bool = True) -> MineResult:
    """Mine hard negatives for every query with a positive: the whole offline pipeline.

    Args:
        corpus: doc id → :class:`Document` (or text).
        queries: query id → text; only queries with at least one positive are mined.
        positives: query id → positive doc ids (a qrels mapping works: judgements ``<= 0`` are
            not positives).
        model: a ``SentenceTransformer``, a model folder / bundled name, or an :data:`EncodeFn`.
        cfg: mining rules.
        cross_encoder: a loaded ``CrossEncoder`` (or folder) to rescore and denoise; ``None``
            skips that phase (negatives then carry no scores).
        ce_cfg: cross-encoder settings (``denoise_margin``, ``fusion_margin``, ``score_batch_size``).
        cache_dir: embedding and score cache root (``None``: no cache).
        weights_fp: fingerprint of the bi-encoder weights; computed when ``model`` is a folder or
            a ``SentenceTransformer`` and this is ``None``.
        version: the pool version to write.
        encode_corpus: optional document encoder for cache misses (e.g. Ray Data actors).
        show_progress: show progress bars while encoding.
        cache_embeddings: read and write the embedding cache (off when ``encode_corpus`` returns
            embeddings that are not all the live weights', e.g. a budgeted refresh's; the
            cross-encoder's score cache is used either way).
        fusion_alpha: denoise by the cross-encoder's score fused with the bi-encoder's at this
            weight (:mod:`embedray.mining.fusion`) instead of by the cross-encoder's alone.
        denoise: ``False``: the cross-encoder scores the negatives and positives (distillation
            targets) but drops none.

    Returns:
        :class:`MineResult` (pool + timings + counts).
    """
    total = time.perf_counter()
    ce_cfg = ce_cfg or CrossEncoderConfig()
    encode_fn, weights_fp = _as_encode_fn(model, cfg, weights_fp, show_progress)
    pos = {q: _positive_ids(p) for q, p in positives.items()}
    mined_queries = {q: queries[q] for q in pos if pos[q] and q in queries}
    if not mined_queries:
        raise ValueError("no query has both a text and a positive: nothing to mine")

    t = time.perf_counter()
    enc = encode_queries_and_corpus(encode_fn, mined_queries, corpus, cfg, weights_fp,
                                    cache_dir if cache_embeddings else None, encode_corpus)
    encode_s = time.perf_counter() - t
    # A denoising cross-encoder scores extra candidates, to replace the negatives it drops.
    n = cfg.candidates_per_query if cross_encoder is not None and denoise else cfg.num_negatives
    cands = mine_negatives(enc.query_ids, enc.query_emb, pos, cfg, doc_ids=enc.doc_ids,
                           doc_emb=enc.doc_emb, n=n, version=version)
    meta = {"config": asdict(cfg), "weights_fingerprint": weights_fp, "k": cfg.k}
    if cands.index is not None:  # what a server checks before it searches with a saved index
        cands.index.meta.update(model=weights_fp, doc_prompt=cfg.doc_prompt)
    pool = cands.to_pool(version, meta)
    stats = {"negatives_removed": 0, "pairs_scored": 0, "pairs_total": 0, "rescore_s": 0.0}
    if cross_encoder is not None:
        ce = _load_ce(cross_encoder, ce_cfg)
        # The loaded model's fingerprint covers its weights and max length (a folder's does not).
        cache = score_cache(cache_dir, cross_encoder_fingerprint(ce)) if cache_dir is not None else None
        texts = {d: doc_text(corpus[d]) for d in corpus}
        pool, stats = rescore_and_denoise(pool, ce, mined_queries, texts, pos, ce_cfg.denoise_margin,
                                          max_negatives=cfg.num_negatives,
                                          batch_size=ce_cfg.score_batch_size, cache=cache,
                                          fusion=None if fusion_alpha is None else (fusion_alpha, cands.bi_scores()),
                                          fusion_margin=ce_cfg.fusion_margin, drop=denoise)
        pool.meta["denoise_margin"] = ce_cfg.denoise_margin if denoise else None
        if fusion_alpha is not None:
            pool.meta.update(fusion_alpha=fusion_alpha, fusion_margin=ce_cfg.fusion_margin)
    else:
        pool.negatives = {q: negs[:cfg.num_negatives] for q, negs in pool.negatives.items()}
    timings = {"encode_s": encode_s, **cands.timings, "rescore_s": stats["rescore_s"]}
    timings["total_s"] = time.perf_counter() - total
    counts = {"queries": len(mined_queries),
              "queries_mined": sum(1 for v in pool.negatives.values() if v),
              "negatives_kept": pool.num_negatives,
              "negatives_removed": stats["negatives_removed"],
              "pairs_scored": stats["pairs_scored"], "pairs_total": stats["pairs_total"],
              **enc.counts, **{f"skipped_{k}": v for k, v in sorted(cands.skipped.items())}}
    pool.meta.update({"timings": timings, "counts": counts})
    near = frozenset({d for negs in cands.negatives.values() for d, _ in negs}
                     | {d for q in mined_queries for d in pos[q]})
    return MineResult(pool, timings, counts, cands.index, enc.doc_ids, enc.doc_emb, near)


def _positive_ids(p) -> list[str]:
    if isinstance(p, Mapping):
        return [d for d, rel in p.items() if rel > 0]
    return list(p)


def _as_encode_fn(model, cfg: MiningConfig, weights_fp: str | None,
                  show_progress: bool) -> tuple[EncodeFn, str | None]:
    """Normalise ``model`` (folder, bundled name, SentenceTransformer, callable) to an encode fn."""
    if isinstance(model, (str, os.PathLike)):
        from sentence_transformers import SentenceTransformer

        from embedray.models.bundled import resolve_model
        from embedray.models.precision import use_precision

        path = resolve_model(model)
        model = SentenceTransformer(str(path), device=None, trust_remote_code=False,
                                    local_files_only=True)
        resolved = use_precision(model, cfg.precision)
        weights_fp = weights_fp or with_precision(folder_fingerprint(path), resolved)
    if hasattr(model, "encode_query") and hasattr(model, "encode_document"):
        if weights_fp is None:
            weights_fp = with_precision(model_fingerprint(model), getattr(model, "embedray_precision", "fp32"))
        return st_encode_fn(model, cfg.batch_size, cfg.query_prompt, cfg.doc_prompt,
                            show_progress), weights_fp
    if callable(model):
        return model, weights_fp
    raise TypeError(f"model must be a folder, a bundled name, a SentenceTransformer or an "
                    f"encode_fn(texts, kind); got {type(model).__name__}")


def _load_ce(ce, ce_cfg: CrossEncoderConfig):
    if isinstance(ce, (str, os.PathLike)):
        from embedray.models.cross_encoder import load_cross_encoder

        return load_cross_encoder(ce, max_length=ce_cfg.max_length, precision=ce_cfg.precision)
    return ce
