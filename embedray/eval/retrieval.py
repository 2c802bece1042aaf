"""Evaluate an embedding model on a BEIR split: encode, exact search, nDCG/Recall/MRR.

This follows the conventions behind published BEIR/MTEB figures, so that a bundled model
reproduces them (all-MiniLM-L6-v2: SciFact nDCG@10 0.645, ArguAna 0.502):

- document text is ``title + " " + text`` (:attr:`Document.text_for_model`);
- the model's own max sequence length (256 for all-MiniLM-L6-v2) unless told otherwise;
- cosine similarity (L2-normalized embeddings, exact inner product);
- ArguAna-style sets, whose queries are themselves corpus documents, drop each query's own id
  from its ranking (BEIR's ``ignore_identical_ids``); k+1 are retrieved so k remain.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from embedray.data.beir import RetrievalData
from embedray.eval.metrics import compute_metrics
from embedray.mining.index import VectorIndex
from embedray.models.prompts import model_prompts, role_prompt

log = logging.getLogger(__name__)

Kind = Literal["query", "doc"]
EncodeFn = Callable[[list[str], Kind], np.ndarray]
IgnoreIdentical = bool | Literal["auto", "on", "off"]


@runtime_checkable
class Encoder(Protocol):
    """Anything with a sentence-transformers-style ``encode`` (a ``SentenceTransformer`` is one)."""

    def encode(self, texts: list[str], batch_size: int, show_progress_bar: bool,
               **kwargs: Any) -> np.ndarray:
        """Embed ``texts`` as a float ``(len(texts), dim)`` array."""
        ...


@dataclass
class Timings:
    """Wall-clock seconds and sizes of one evaluation."""

    encode_docs_s: float
    encode_queries_s: float
    search_s: float
    num_docs: int
    num_queries: int
    #: documents encoded per second; ``None`` when ``corpus_embeddings`` were given
    docs_per_s: float | None


@dataclass
class EvalResult:
    """What :func:`evaluate_retrieval` measured.

    Attributes:
        metrics: ``ndcg@10``, ``recall@10``, ``recall@100``, ``mrr@10``, … and ``num_queries``.
        run: ``query id -> {doc id: score}``, the top-k ranking of each evaluated query.
        timings: encode and search times, corpus size, docs/s.
        settings: how the evaluation ran (k, prefixes, whether identical ids were dropped, …).
        doc_embeddings: ``(num_docs, dim)`` in ``data.corpus`` order, when asked for with
            ``return_embeddings=True`` (to reuse for mining or another evaluation).
    """

    metrics: dict[str, float]
    run: dict[str, dict[str, float]]
    timings: Timings
    settings: dict[str, Any] = field(default_factory=dict)
    doc_embeddings: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self, include_run: bool = False) -> dict[str, Any]:
        """JSON-ready view; the run is left out unless asked for (it is large)."""
        out = {"metrics": self.metrics, "timings": asdict(self.timings), "settings": self.settings}
        if include_run:
            out["run"] = self.run
        return out


def resolve_ignore_identical(flag: IgnoreIdentical, query_ids: Sequence[str],
                             corpus_ids: Sequence[str] | dict) -> bool:
    """Whether to drop each query's own id from its ranking; ``on``/``off`` force it.

    ``"auto"`` is on when at least half of the query ids are also corpus ids: then queries and
    documents share one id space and a query is its own document (ArguAna: 1,298 of 1,406 test
    queries, each with identical text). A few coincidental overlaps (numeric ids) leave it off.
    """
    if flag in (True, "on"):
        return True
    if flag in (False, "off"):
        return False
    if flag != "auto":
        raise ValueError(f"ignore_identical_ids must be 'auto', 'on', 'off', True or False, got {flag!r}")
    corpus = corpus_ids if isinstance(corpus_ids, (dict, set, frozenset)) else set(corpus_ids)
    shared = sum(q in corpus for q in query_ids)
    on = bool(query_ids) and 2 * shared >= len(query_ids)
    if shared:
        log.info("%d of %d query ids are corpus ids: ignore_identical_ids=auto is %s",
                 shared, len(query_ids), "on" if on else "off")
    return on


def encode_texts(model_or_encode_fn: Encoder | EncodeFn, texts: list[str], kind: Kind,
                 batch_size: int = 64, show_progress: bool = True,
                 normalize: bool = True) -> np.ndarray:
    """Embed ``texts`` with a sentence-transformers-style model or an ``encode_fn(texts, kind)``.

    Returns:
        float32 ``(len(texts), dim)``, L2-normalized when ``normalize``.
    """
    if not texts:
        raise ValueError(f"no {kind} texts to encode")
    if isinstance(model_or_encode_fn, Encoder):
        kwargs = {"normalize_embeddings": normalize, "convert_to_numpy": True}
        if hasattr(model_or_encode_fn, "prompts"):  # texts carry their prompt: none of the model's default
            kwargs["prompt"] = ""
        emb = model_or_encode_fn.encode(texts, batch_size=batch_size,
                                        show_progress_bar=show_progress, **kwargs)
    elif callable(model_or_encode_fn):
        emb = _encode_with_fn(model_or_encode_fn, texts, kind, batch_size, show_progress)
    else:
        raise TypeError("expected a model with .encode(...) or a callable encode_fn(texts, kind), "
                        f"got {type(model_or_encode_fn).__name__}")
    emb = np.asarray(_to_numpy(emb), dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(texts):
        raise ValueError(f"encoder returned shape {emb.shape} for {len(texts)} {kind} texts; "
                         "expected (num_texts, dim)")
    if normalize:
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return emb


def _encode_with_fn(fn: EncodeFn, texts: list[str], kind: Kind, batch_size: int,
                    show_progress: bool) -> np.ndarray:
    """Batch a bare ``encode_fn`` ourselves (sentence-transformers only does this for its models).

    Texts go longest first, as sentence-transformers does, so batches pad little.
    """
    from tqdm.auto import tqdm

    order = np.argsort([-len(t) for t in texts], kind="stable")
    chunks = []
    for start in tqdm(range(0, len(texts), batch_size), desc=f"encode {kind}s",
                      disable=not show_progress):
        batch = [texts[i] for i in order[start:start + batch_size]]
        emb = np.asarray(_to_numpy(fn(batch, kind)), dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(batch):
            raise ValueError(f"encode_fn returned shape {emb.shape} for {len(batch)} {kind} texts; "
                             "expected (num_texts, dim)")
        chunks.append(emb)
    emb = np.concatenate(chunks, axis=0)
    out = np.empty_like(emb)
    out[order] = emb
    return out


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor from an in-memory training encoder
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def evaluate_retrieval(model_or_encode_fn: Encoder | EncodeFn, data: RetrievalData, k: int = 100,
                       batch_size: int = 64, query_prompt: str = "", doc_prompt: str = "",
                       ignore_identical_ids: IgnoreIdentical = "auto", show_progress: bool = True,
                       corpus_embeddings: np.ndarray | None = None,
                       truncate_dim: int | None = None,
                       return_embeddings: bool = False) -> EvalResult:
    """Encode the corpus and the split's queries, search exactly, and score the ranking.

    Args:
        model_or_encode_fn: a ``SentenceTransformer`` (or any :class:`Encoder`), or a callable
            ``encode_fn(texts, kind)`` with ``kind`` ``"query"`` or ``"doc"`` returning ``(n, dim)``
            (numpy or torch), e.g. the training loop's in-memory encoder.
        data: from :func:`embedray.data.beir.load_beir`; its ``qrels`` pick the queries.
        k: documents retrieved per query (Recall@100 needs ``k >= 100``).
        batch_size: texts per encoder call.
        query_prompt: prepended to every query (e.g. ``"query: "`` for E5-style models); empty:
            a sentence-transformers model's own ``query`` prompt (what ``encode_query`` uses).
        doc_prompt: prepended to every document; empty: the model's ``document`` prompt.
        ignore_identical_ids: drop a query's own id from its ranking: ``"auto"`` (when at
            least half of the query ids are corpus ids), ``True``/``"on"`` or ``False``/``"off"``.
        show_progress: progress bars while encoding.
        corpus_embeddings: precomputed ``(num_docs, dim)`` document embeddings in
            ``data.corpus`` order (skips encoding the corpus, e.g. to compare query prefixes);
            normalized like encoded ones.
        truncate_dim: keep the first ``truncate_dim`` dimensions (Matryoshka), renormalized.
        return_embeddings: keep the document embeddings in :attr:`EvalResult.doc_embeddings`.

    Returns:
        An :class:`EvalResult`.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    doc_ids = list(data.corpus)
    if not doc_ids:
        raise ValueError(f"{data.path or 'data'}: the corpus is empty")
    queries = data.split_queries()
    query_ids = list(queries)
    if not query_ids:
        raise ValueError(f"{data.path or 'data'}: split {data.split!r} has no judged queries")
    drop_self = resolve_ignore_identical(ignore_identical_ids, query_ids, data.corpus)
    prompts, default_name = model_prompts(model_or_encode_fn)
    query_prompt = query_prompt or role_prompt(prompts, default_name, "query")
    doc_prompt = doc_prompt or role_prompt(prompts, default_name, "document")

    t0 = time.perf_counter()
    if corpus_embeddings is None:
        doc_texts = [doc_prompt + data.corpus[d].text_for_model for d in doc_ids]
        doc_emb = encode_texts(model_or_encode_fn, doc_texts, "doc", batch_size, show_progress)
    else:
        doc_emb = np.array(_to_numpy(corpus_embeddings), dtype=np.float32)  # a copy: normalized below
        if doc_emb.ndim != 2 or doc_emb.shape[0] != len(doc_ids):
            raise ValueError(f"corpus_embeddings has shape {doc_emb.shape}; expected "
                             f"({len(doc_ids)}, dim) in data.corpus order")
        doc_emb /= np.maximum(np.linalg.norm(doc_emb, axis=1, keepdims=True), 1e-12)
    encode_docs_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    query_emb = encode_texts(model_or_encode_fn, [query_prompt + queries[q] for q in query_ids],
                             "query", batch_size, show_progress)
    encode_queries_s = time.perf_counter() - t0
    if query_emb.shape[1] != doc_emb.shape[1]:
        raise ValueError(f"query embeddings have dim {query_emb.shape[1]} but document "
                         f"embeddings have dim {doc_emb.shape[1]}")
    if truncate_dim is not None:
        doc_emb, query_emb = _truncate(doc_emb, truncate_dim), _truncate(query_emb, truncate_dim)

    t0 = time.perf_counter()
    index = VectorIndex.build(doc_emb, doc_ids, "Flat", metric="ip", use_gpu="auto")
    scores, hits = index.search(query_emb, k + 1 if drop_self else k)  # (m, k[+1])
    run: dict[str, dict[str, float]] = {}
    for qid, row_scores, row_ids in zip(query_ids, scores, hits):
        ranked = [(d, float(s)) for d, s in zip(row_ids, row_scores) if not (drop_self and d == qid)]
        run[qid] = dict(ranked[:k])
    search_s = time.perf_counter() - t0

    ks = sorted({c for c in (10, 100) if c <= k} | {k})
    metrics = compute_metrics(data.qrels, run, ks)
    timings = Timings(encode_docs_s=encode_docs_s, encode_queries_s=encode_queries_s,
                      search_s=search_s, num_docs=len(doc_ids), num_queries=len(query_ids),
                      docs_per_s=len(doc_ids) / encode_docs_s if corpus_embeddings is None else None)
    settings = {"split": data.split, "k": k, "batch_size": batch_size, "query_prompt": query_prompt,
                "doc_prompt": doc_prompt, "ignore_identical_ids": drop_self,
                "dim": int(doc_emb.shape[1]),
                "missing_doc_judgements": data.missing_doc_judgements}
    return EvalResult(metrics, run, timings, settings, doc_emb if return_embeddings else None)


def _truncate(emb: np.ndarray, dim: int) -> np.ndarray:
    if not 1 <= dim <= emb.shape[1]:
        raise ValueError(f"truncate_dim must be in 1..{emb.shape[1]}, got {dim}")
    out = np.ascontiguousarray(emb[:, :dim])  # (n, dim)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
