"""FlagEmbedding training JSONL: one object per line,
``{"query", "pos": [...], "neg": [...], "pos_scores": [...], "neg_scores": [...], "prompt"}``.

Only ``query`` and a non-empty ``pos`` are required. Other keys (e.g. ``type``) are ignored.
:func:`flag_to_beir` turns the text-based rows into the id-based corpus/queries/qrels the
trainer and the negative miner work on; :func:`flag_train_rows` keeps what each row carries
for training (its ``neg`` as the query's given negatives, its scores as distillation targets);
:func:`write_flag_folder` does both for train/dev/test files and reports queries that leak from
train into a held-out split. A row's ``prompt`` is its query instruction: the query text is
``prompt + query`` everywhere (training, mining, evaluation).
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from embedray.data.beir import Document
from embedray.data.errors import DataError, OnError, SkipReport, handle
from embedray.data.jsonl import iter_jsonl, require_list, require_str, write_jsonl_atomic


@dataclass
class FlagExample:
    """One FlagEmbedding training row.

    Attributes:
        query: the query text.
        pos: relevant passages (at least one).
        neg: hard-negative passages (may be empty).
        pos_scores: teacher scores for ``pos`` (same length), or None.
        neg_scores: teacher scores for ``neg`` (same length), or None.
        prompt: an instruction prepended to the query by the model, or None.
    """

    query: str
    pos: list[str]
    neg: list[str] = field(default_factory=list)
    pos_scores: list[float] | None = None
    neg_scores: list[float] | None = None
    prompt: str | None = None

    def to_json(self) -> dict:
        """The JSONL object; absent optional fields are left out."""
        row: dict = {"query": self.query, "pos": list(self.pos), "neg": list(self.neg)}
        for key in ("pos_scores", "neg_scores", "prompt"):
            if getattr(self, key) is not None:
                row[key] = getattr(self, key)
        return row


def _parse(obj: dict, path: Path, lineno: int) -> FlagExample:
    query = require_str(obj, "query", path, lineno)
    pos = require_list(obj, "pos", path, lineno, str, min_len=1)
    neg = require_list(obj, "neg", path, lineno, str, required=False) or []
    scores = {}
    for key, texts in (("pos_scores", pos), ("neg_scores", neg)):
        values = require_list(obj, key, path, lineno, float, required=False)
        if values is not None:
            if len(values) != len(texts):
                side = key.split("_")[0]
                raise DataError(path, lineno, key, f"has {len(values)} score(s) for "
                                f"{len(texts)} '{side}' text(s); give one score per text")
            for i, v in enumerate(values):
                if not math.isfinite(v):
                    raise DataError(path, lineno, f"{key}[{i}]", f"expected a finite number, got {v}")
            values = [float(v) for v in values]
        scores[key] = values
    prompt = obj.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise DataError(path, lineno, "prompt", f"expected a string, got {type(prompt).__name__}")
    return FlagExample(query, pos, neg, scores["pos_scores"], scores["neg_scores"], prompt or None)


def iter_flag_jsonl(path: str | Path, on_error: OnError = "raise",
                    report: SkipReport | None = None) -> Iterator[FlagExample]:
    """Stream and validate a FlagEmbedding JSONL file.

    Args:
        path: the ``.jsonl`` file.
        on_error: ``raise`` stops at the first bad row with ``file:line: field 'x': what``;
            ``skip`` drops the row and counts it in ``report``.
        report: where skipped rows are counted (``skip`` mode).

    Yields:
        One :class:`FlagExample` per valid line.
    """
    path = Path(path)
    for lineno, obj in iter_jsonl(path, on_error, report):
        try:
            example = _parse(obj, path, lineno)
        except DataError as e:
            handle(e, on_error, report)
            continue
        yield example


def write_flag_jsonl(examples: Iterable[FlagExample], path: str | Path) -> int:
    """Write examples as FlagEmbedding JSONL atomically (temp file + rename); return the count."""
    return write_jsonl_atomic((ex.to_json() for ex in examples), path)


def text_id(text: str, prefix: str = "d:") -> str:
    """A stable id for a text: ``prefix`` + the first 16 hex digits of its SHA-1 (64 bits)."""
    return prefix + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def flag_query(ex: FlagExample) -> tuple[str, str]:
    """``(query_id, text)`` of a row: its instruction (``prompt``) and query, as one text."""
    text = (ex.prompt or "") + ex.query
    return text_id(text, "q:"), text


def flag_train_rows(examples: Iterable[FlagExample]) -> Iterator[dict]:
    """One id-based training row per positive of each example: ``query_id``, ``pos_id``, the
    example's ``neg`` as ``neg_ids`` and, when it has both ``pos_scores`` and ``neg_scores``,
    ``pos_score`` and ``neg_scores`` (teacher scores for ``distill.score_source: data``)."""
    for ex in examples:
        qid, _ = flag_query(ex)
        negs = [text_id(t) for t in ex.neg]
        scored = ex.pos_scores is not None and ex.neg_scores is not None
        for i, text in enumerate(ex.pos):
            row: dict = {"query_id": qid, "pos_id": text_id(text), "neg_ids": negs}
            if scored:
                row.update(pos_score=ex.pos_scores[i], neg_scores=list(ex.neg_scores))
            yield row


def flag_to_beir(examples: Iterable[FlagExample]
                 ) -> tuple[list[Document], list[tuple[str, str]], dict[str, dict[str, int]]]:
    """Turn text rows into an id-based corpus, queries and qrels.

    Every distinct ``pos`` and ``neg`` text becomes one corpus document with id
    ``text_id(text, "d:")`` (identical texts share one id); every distinct query text (with its
    ``prompt``) gets ``text_id(text, "q:")``, and rows repeating a query merge their positives. Negatives enter
    the corpus (as distractors) but not the qrels. Ids depend only on the text, so the same data
    gives the same ids on every machine and run.

    Returns:
        ``(corpus_docs, [(query_id, query_text)], {query_id: {doc_id: 1}})``, in first-seen order.
    """
    corpus: dict[str, Document] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for ex in examples:
        qid, qtext = flag_query(ex)
        queries.setdefault(qid, qtext)
        judged = qrels.setdefault(qid, {})
        for text in ex.pos:
            did = text_id(text)
            corpus.setdefault(did, Document(did, text))
            judged[did] = 1
        for text in ex.neg:
            did = text_id(text)
            corpus.setdefault(did, Document(did, text))
    return list(corpus.values()), list(queries.items()), qrels


Leakage = Literal["drop", "keep", "error"]


@dataclass
class FlagFolderStats:
    """What :func:`write_flag_folder` wrote and what it found."""

    queries: dict[str, int] = field(default_factory=dict)
    """Judged queries per split (after ``leakage: drop``)."""
    documents: int = 0
    train_pairs: int = 0
    given_negatives: int = 0
    """Training rows that carry the user's own negatives (``neg``)."""
    scored_pairs: int = 0
    """Training rows that carry teacher scores (``pos_scores`` and ``neg_scores``)."""
    prompted_queries: int = 0
    """Queries whose text starts with the row's ``prompt``."""
    leaked: dict[str, list[str]] = field(default_factory=dict)
    """Per held-out split, the query texts that are also training queries."""
    leakage: str = "drop"

    def as_dict(self) -> dict:
        return {"queries": self.queries, "documents": self.documents, "train_pairs": self.train_pairs,
                "given_negatives": self.given_negatives, "scored_pairs": self.scored_pairs,
                "prompted_queries": self.prompted_queries, "leakage": self.leakage,
                "leaked_queries": {s: len(v) for s, v in self.leaked.items()},
                "leaked_examples": {s: v[:5] for s, v in self.leaked.items()}}

    def summary(self) -> str:
        lines = [f"{self.documents} documents; queries " + ", ".join(f"{s} {n}" for s, n in self.queries.items())
                 + f"; {self.train_pairs} training pairs ({self.given_negatives} with their own negatives, "
                 f"{self.scored_pairs} with teacher scores); {self.prompted_queries} queries with a prompt"]
        for split, texts in self.leaked.items():
            what = {"drop": f"dropped from {split}", "keep": f"kept in {split} (its figures include them)"}
            lines.append(f"leakage: {len(texts)} {split} quer{'y' if len(texts) == 1 else 'ies'} also in train, "
                         f"{what.get(self.leakage, '')}; e.g. " + "; ".join(repr(t[:80]) for t in texts[:3]))
        return "\n".join(lines)


def write_flag_folder(files: dict[str, str | Path], out: str | Path, leakage: Leakage = "drop",
                      on_error: OnError = "raise", report: SkipReport | None = None) -> FlagFolderStats:
    """FlagEmbedding JSONL files by split (``train`` required, e.g. ``dev``, ``test``) → one BEIR
    folder (shared corpus, one qrels file per split) and ``train_pairs.jsonl``
    (:func:`flag_train_rows`).

    A query of a held-out split whose text (with its prompt) is also a training query would be
    scored on what the model trained on: ``leakage`` ``drop`` removes it from that split (train
    keeps it), ``keep`` keeps it, ``error`` raises; each case is counted in the stats with examples.
    """
    from embedray.data.beir import write_beir

    if "train" not in files:
        raise ValueError("write_flag_folder needs a train file")
    corpus: dict[str, Document] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, dict[str, int]]] = {}
    stats = FlagFolderStats(leakage=leakage)
    rows: list[dict] = []
    prompted: set[str] = set()
    for split, path in files.items():
        examples = list(iter_flag_jsonl(path, on_error, report))
        docs, qs, judged = flag_to_beir(examples)
        corpus.update({d.id: d for d in docs})
        queries.update(dict(qs))
        qrels[split] = judged
        prompted.update(flag_query(ex)[0] for ex in examples if ex.prompt)
        if split == "train":
            rows = list(flag_train_rows(examples))
    for split in (s for s in qrels if s != "train"):
        leaked = [q for q in qrels[split] if q in qrels["train"]]
        if not leaked:
            continue
        stats.leaked[split] = [queries[q] for q in leaked]
        if leakage == "error":
            raise ValueError(f"{files[split]}: {len(leaked)} quer{'y' if len(leaked) == 1 else 'ies'} also in "
                             f"{files['train']} (e.g. {queries[leaked[0]]!r}); remove them, or set "
                             "prepare.leakage: drop (or keep)")
        if leakage == "drop":
            for q in leaked:
                del qrels[split][q]
    write_beir(out, corpus.values(), queries.items(), qrels)
    write_jsonl_atomic(rows, Path(out) / "train_pairs.jsonl")
    stats.queries = {s: len(j) for s, j in qrels.items()}
    stats.documents, stats.train_pairs, stats.prompted_queries = len(corpus), len(rows), len(prompted)
    stats.given_negatives = sum(1 for r in rows if r["neg_ids"])
    stats.scored_pairs = sum(1 for r in rows if "pos_score" in r)
    return stats
