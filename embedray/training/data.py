"""Training data by id: a BEIR corpus/queries plus (query_id, pos_id, neg_ids) rows."""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from embedray.data.beir import Document, RetrievalData, beir_file, iter_corpus, iter_qrels, iter_queries, judged_split
from embedray.data.errors import DataError, SkipReport, handle
from embedray.data.jsonl import iter_jsonl, require_list, require_str
from embedray.data.parquet import iter_pair_rows
from embedray.training.batches import Example
from embedray.training.config import DataConfig


@dataclass
class TrainingData:
    """Texts by id, every known positive per query, and the dev split for evaluation."""

    corpus: dict[str, Document]
    queries: dict[str, str]
    positives: dict[str, set[str]]
    dev: RetrievalData | None
    report: SkipReport = field(default_factory=SkipReport)
    """Rows skipped under ``on_error: skip``; :func:`training_examples` adds the training pairs' to it."""
    test_queries: frozenset[str] = frozenset()
    """Ids of the queries judged in the test split: a training row may not name one."""
    test_qrels: str = ""
    """The file ``test_queries`` come from, for the error that names one."""

    def doc_text(self, doc_id: str) -> str:
        return self.corpus[doc_id].text_for_model


def load_training_data(cfg: DataConfig) -> TrainingData:
    """Load corpus and queries of ``cfg.path`` and the positives of every non-test split.

    Each file is read once; bad rows raise ``file:line: field`` or are counted in ``report``.
    """
    root = Path(cfg.path).expanduser().resolve()
    report = SkipReport()
    corpus = {d.id: d for d in iter_corpus(beir_file(root, "corpus"), cfg.on_error, report)}
    queries = dict(iter_queries(beir_file(root, "queries"), cfg.on_error, report))
    positives: dict[str, set[str]] = {}
    dev = None
    for split in dict.fromkeys(s for s in (cfg.train_split, cfg.dev_split) if s):
        qrels = root / "qrels" / f"{split}.tsv"
        if not qrels.exists():
            continue
        rows = list(iter_qrels(qrels, cfg.on_error, report))
        for _, qid, did, rel in rows:
            if rel > 0:
                positives.setdefault(qid, set()).add(did)
        if split == cfg.dev_split:
            dev = judged_split(rows, corpus, queries, qrels, split, cfg.on_error, "keep", report)
    test = root / "qrels" / f"{cfg.test_split}.tsv"
    # only ids: the test split's own bad lines are for its evaluation to report
    test_queries = frozenset(qid for _, qid, _, _ in iter_qrels(test, "skip", None)) if test.exists() else frozenset()
    return TrainingData(corpus, queries, positives, dev, report, test_queries, f"qrels/{cfg.test_split}.tsv")


def pairs_source(cfg: DataConfig) -> Path:
    """The file the training pairs come from: ``train_pairs``, else ``qrels/<train_split>.tsv``."""
    if cfg.train_pairs:
        return Path(cfg.train_pairs).expanduser().resolve()
    return Path(cfg.path).expanduser().resolve() / "qrels" / f"{cfg.train_split}.tsv"


def _training_rows(cfg: DataConfig, report: SkipReport | None) -> Iterator[tuple[Path, int | str, dict]]:
    """``(file, line, row)`` of each training row: JSONL lines, Parquet rows (``"row N"``) or the
    positive judgements of the train qrels."""
    path = pairs_source(cfg)
    if cfg.train_pairs:
        rows = iter_pair_rows(path) if path.suffix.lower() == ".parquet" else iter_jsonl(path, cfg.on_error, report)
        for where, row in rows:
            yield path, where, row
        return
    # load_training_data read this qrels file already and raised or counted its bad lines.
    for line, qid, did, rel in iter_qrels(path, cfg.on_error, None):
        if rel > 0:
            yield path, line, {"query_id": qid, "pos_id": did}


def pair_rows(cfg: DataConfig) -> list[dict]:
    """The first ``cfg.max_train_pairs`` training rows as plain dicts, ids unchecked (for callers
    that only need texts and check ids themselves; a run trains on :func:`training_examples`)."""
    return [row for _, _, row in islice(_training_rows(cfg, None), cfg.max_train_pairs)]


def label_examples(cfg: DataConfig, data: TrainingData, report: SkipReport | None = None) -> list[Example]:
    """Classification rows of ``cfg.train_labels`` (``_id``, ``label``, ``split``?) of the train
    split, as examples whose document is the labelled text; bad rows raise ``file:line`` or are
    counted; at most ``cfg.max_train_pairs``."""
    path = Path(cfg.train_labels).expanduser().resolve()
    out: list[Example] = []
    for lineno, row in iter_jsonl(path, cfg.on_error, report):
        try:
            did = require_str(row, "_id", path, lineno)
            label = require_str(row, "label", path, lineno)
            split = row.get("split")
            if split is not None and not isinstance(split, str):
                raise DataError(path, lineno, "split", f"expected a string, got {type(split).__name__}")
            if did not in data.corpus:
                raise DataError(path, lineno, "_id", f"unknown document id {did!r} (not in the corpus)")
        except DataError as e:
            handle(e, cfg.on_error, report)
            continue
        if split in (None, cfg.train_split):
            out.append(Example("", did, label=label))
        if cfg.max_train_pairs is not None and len(out) >= cfg.max_train_pairs:
            break
    if len({e.label for e in out}) < 2:
        raise ValueError(f"{path}: classification needs at least 2 labels among the {cfg.train_split} rows, "
                         f"got {sorted({e.label for e in out})}")
    return out


def training_examples(cfg: DataConfig, data: TrainingData, report: SkipReport | None = None) -> list[Example]:
    """The examples a run trains on: the first ``cfg.max_train_pairs`` valid rows (all when None).

    Rows are checked against ``data`` (fields, unknown query/document ids); a bad row raises
    ``file:line: field: what`` (the file's line, or ``row N`` of a Parquet file) or, with
    ``on_error: skip``, is counted in ``report``. Raises ValueError when no row is usable.
    With ``cfg.train_labels``, the classification rows (:func:`label_examples`).
    """
    if cfg.train_labels:
        return label_examples(cfg, data, report)
    out: list[Example] = []
    for source, where, row in _training_rows(cfg, report):
        try:
            out.append(_example(row, data, source, where))
        except DataError as e:
            handle(e, cfg.on_error, report)
            continue
        if cfg.max_train_pairs is not None and len(out) >= cfg.max_train_pairs:
            break
    if not out:
        raise ValueError(f"{pairs_source(cfg)}: no usable training pairs"
                         + (f" ({report.summary()})" if report is not None else "")
                         + "; fix the file or point data.train_pairs / data.train_split at another one")
    return out


def _example(row: dict, data: TrainingData, source: Path, where: int | str) -> Example:
    qid = require_str(row, "query_id", source, where)
    pid = require_str(row, "pos_id", source, where)
    negs = require_list(row, "neg_ids", source, where, str, required=False) or []
    scores = _row_scores(row, negs, source, where)
    if qid not in data.queries:
        raise DataError(source, where, "query_id", f"unknown query id {qid!r} (not in queries.jsonl)")
    if qid in data.test_queries:
        raise DataError(source, where, "query_id",
                        f"query {qid!r} is judged in the test split ({data.test_qrels}): training on it would "
                        "make the test figures meaningless")
    for field_name, did in [("pos_id", pid), *((f"neg_ids[{j}]", n) for j, n in enumerate(negs))]:
        if did not in data.corpus:
            raise DataError(source, where, field_name, f"unknown document id {did!r} (not in corpus.jsonl)")
    return Example(qid, pid, tuple(negs), scores)


def _row_scores(row: dict, negs: list[str], source: Path, where: int | str) -> tuple[float, ...] | None:
    """``(pos_score, *neg_scores)`` of a row that carries both (teacher scores for distillation)."""
    pos, neg = row.get("pos_score"), row.get("neg_scores")
    if pos is None and neg is None:
        return None
    if pos is None or neg is None:
        raise DataError(source, where, "pos_score" if pos is None else "neg_scores",
                        "missing: a row's scores come as pos_score and neg_scores together")
    if isinstance(pos, bool) or not isinstance(pos, (int, float)) or not math.isfinite(pos):
        raise DataError(source, where, "pos_score", f"expected a finite number, got {pos!r}")
    neg = require_list(row, "neg_scores", source, where, float)
    if len(neg) != len(negs):
        raise DataError(source, where, "neg_scores", f"has {len(neg)} score(s) for {len(negs)} neg_ids")
    for i, v in enumerate(neg):
        if not math.isfinite(v):
            raise DataError(source, where, f"neg_scores[{i}]", f"expected a finite number, got {v}")
    return (float(pos), *(float(v) for v in neg))
