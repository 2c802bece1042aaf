"""Training data by id: a BEIR corpus/queries plus (query_id, pos_id, neg_ids) rows."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from embedray.data.beir import Document, RetrievalData, iter_corpus, iter_qrels, iter_queries, load_beir
from embedray.data.errors import DataError, SkipReport, handle
from embedray.data.jsonl import iter_jsonl, require_list, require_str
from embedray.training.batches import Example
from embedray.training.config import DataConfig


@dataclass
class TrainingData:
    """Texts by id, every known positive per query, and the dev split for evaluation."""

    corpus: dict[str, Document]
    queries: dict[str, str]
    positives: dict[str, set[str]]
    dev: RetrievalData | None

    def doc_text(self, doc_id: str) -> str:
        return self.corpus[doc_id].text_for_model


def load_training_data(cfg: DataConfig) -> TrainingData:
    """Load corpus and queries of ``cfg.path`` and the positives of every non-test split."""
    root = Path(cfg.path).expanduser().resolve()
    report = SkipReport()
    corpus = {d.id: d for d in iter_corpus(root / "corpus.jsonl", cfg.on_error, report)}
    queries = dict(iter_queries(root / "queries.jsonl", cfg.on_error, report))
    positives: dict[str, set[str]] = {}
    for split in {cfg.train_split, cfg.dev_split} - {None}:
        qrels = root / "qrels" / f"{split}.tsv"
        if qrels.exists():
            for _, qid, did, rel in iter_qrels(qrels, cfg.on_error, report):
                if rel > 0:
                    positives.setdefault(qid, set()).add(did)
    dev = None
    if cfg.dev_split and (root / "qrels" / f"{cfg.dev_split}.tsv").exists():
        dev = load_beir(root, cfg.dev_split, cfg.on_error, missing_docs="keep")
    return TrainingData(corpus, queries, positives, dev)


def pair_rows(cfg: DataConfig) -> list[dict]:
    """Training rows as plain dicts (what Ray Data reads): from ``train_pairs`` or the train qrels."""
    root = Path(cfg.path).expanduser().resolve()
    if cfg.train_pairs:
        path = Path(cfg.train_pairs).expanduser().resolve()
        rows = [obj for _, obj in iter_jsonl(path, cfg.on_error)]
    else:
        qrels = root / "qrels" / f"{cfg.train_split}.tsv"
        rows = [{"query_id": q, "pos_id": d} for _, q, d, rel in iter_qrels(qrels, cfg.on_error) if rel > 0]
    return rows[: cfg.max_train_pairs] if cfg.max_train_pairs else rows


def rows_to_examples(rows: list[dict], data: TrainingData, source: str = "train_pairs",
                     on_error: str = "raise") -> list[Example]:
    """Validate rows against the corpus and queries; unknown ids name the row and field."""
    out, report = [], SkipReport()
    for i, row in enumerate(rows, start=1):
        try:
            qid = require_str(row, "query_id", source, i)
            pid = require_str(row, "pos_id", source, i)
            negs = require_list(row, "neg_ids", source, i, str, required=False) or []
            if qid not in data.queries:
                raise DataError(source, i, "query_id", f"unknown query id {qid!r}")
            for field_name, did in [("pos_id", pid), *((f"neg_ids[{j}]", n) for j, n in enumerate(negs))]:
                if did not in data.corpus:
                    raise DataError(source, i, field_name, f"unknown document id {did!r}")
        except DataError as e:
            handle(e, on_error, report)
            continue
        out.append(Example(qid, pid, tuple(negs)))
    return out
