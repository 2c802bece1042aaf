"""FlagEmbedding training JSONL: one object per line,
``{"query", "pos": [...], "neg": [...], "pos_scores": [...], "neg_scores": [...], "prompt"}``.

Only ``query`` and a non-empty ``pos`` are required. Other keys (e.g. ``type``) are ignored.
:func:`flag_to_beir` turns the text-based rows into the id-based corpus/queries/qrels the
trainer and the negative miner work on.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

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


def flag_to_beir(examples: Iterable[FlagExample]
                 ) -> tuple[list[Document], list[tuple[str, str]], dict[str, dict[str, int]]]:
    """Turn text rows into an id-based corpus, queries and qrels.

    Every distinct ``pos`` and ``neg`` text becomes one corpus document with id
    ``text_id(text, "d:")`` (identical texts share one id); every distinct query text gets
    ``text_id(query, "q:")``, and rows repeating a query merge their positives. Negatives enter
    the corpus (as distractors) but not the qrels. Ids depend only on the text, so the same data
    gives the same ids on every machine and run.

    Returns:
        ``(corpus_docs, [(query_id, query_text)], {query_id: {doc_id: 1}})``, in first-seen order.
    """
    corpus: dict[str, Document] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for ex in examples:
        qid = text_id(ex.query, "q:")
        queries.setdefault(qid, ex.query)
        judged = qrels.setdefault(qid, {})
        for text in ex.pos:
            did = text_id(text)
            corpus.setdefault(did, Document(did, text))
            judged[did] = 1
        for text in ex.neg:
            did = text_id(text)
            corpus.setdefault(did, Document(did, text))
    return list(corpus.values()), list(queries.items()), qrels
