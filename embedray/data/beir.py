"""BEIR folders: ``corpus.jsonl`` {_id,title,text}, ``queries.jsonl`` {_id,text},
``qrels/<split>.tsv`` (header ``query-id corpus-id score``)."""
from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from embedray.data.errors import DataError, OnError, SkipReport, handle
from embedray.data.jsonl import iter_jsonl, require_str, write_jsonl_atomic

log = logging.getLogger(__name__)
MissingDocs = Literal["raise", "skip", "keep"]


@dataclass(frozen=True)
class Document:
    """One corpus entry. ``text_for_model`` is BEIR/MTEB's ``title + " " + text``."""

    id: str
    text: str
    title: str = ""

    @property
    def text_for_model(self) -> str:
        return f"{self.title} {self.text}".strip() if self.title else self.text


@dataclass
class RetrievalData:
    """A corpus, its queries and the relevance judgements of one split."""

    corpus: dict[str, Document]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    split: str = "test"
    path: Path | None = None
    report: SkipReport = field(default_factory=SkipReport)
    missing_doc_judgements: int = 0

    def split_queries(self) -> dict[str, str]:
        """The queries that have at least one judgement in this split."""
        return {qid: self.queries[qid] for qid in self.qrels}


def iter_corpus(path: str | Path, on_error: OnError = "raise",
                report: SkipReport | None = None) -> Iterator[Document]:
    """Stream ``corpus.jsonl`` as :class:`Document`; duplicate ids are errors."""
    seen: set[str] = set()
    for lineno, obj in iter_jsonl(path, on_error, report):
        try:
            doc_id = require_str(obj, "_id", path, lineno)
            text = require_str(obj, "text", path, lineno)
            title = obj.get("title", "") or ""
            if not isinstance(title, str):
                raise DataError(path, lineno, "title", f"expected a string, got {type(title).__name__}")
            if doc_id in seen:
                raise DataError(path, lineno, "_id", f"duplicate id {doc_id!r}")
        except DataError as e:
            handle(e, on_error, report)
            continue
        seen.add(doc_id)
        yield Document(doc_id, text, title)


def iter_queries(path: str | Path, on_error: OnError = "raise",
                 report: SkipReport | None = None) -> Iterator[tuple[str, str]]:
    """Stream ``queries.jsonl`` as ``(id, text)``; duplicate ids are errors."""
    seen: set[str] = set()
    for lineno, obj in iter_jsonl(path, on_error, report):
        try:
            qid = require_str(obj, "_id", path, lineno)
            text = require_str(obj, "text", path, lineno)
            if qid in seen:
                raise DataError(path, lineno, "_id", f"duplicate id {qid!r}")
        except DataError as e:
            handle(e, on_error, report)
            continue
        seen.add(qid)
        yield qid, text


def iter_qrels(path: str | Path, on_error: OnError = "raise",
               report: SkipReport | None = None) -> Iterator[tuple[int, str, str, int]]:
    """Stream ``qrels/<split>.tsv`` rows as ``(line, query_id, doc_id, score)``."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: tolerate a BOM before the header
        rows = csv.reader(f, delimiter="\t")
        header = next(rows, None)
        if header is None or [h.strip() for h in header[:2]] != ["query-id", "corpus-id"]:
            raise DataError(path, 1, "header", "expected the header 'query-id<TAB>corpus-id<TAB>score', "
                            f"got {chr(9).join(header or [])!r}")
        for lineno, row in enumerate(rows, start=2):
            if not row or not "".join(row).strip():
                continue
            try:
                if len(row) < 3:
                    raise DataError(path, lineno, None, f"expected 3 tab-separated columns, got {len(row)}")
                qid, did, score = (c.strip() for c in row[:3])
                for name, value in (("query-id", qid), ("corpus-id", did)):
                    if not value:
                        raise DataError(path, lineno, name, "empty id")
                try:
                    rel = int(float(score))
                except (ValueError, OverflowError):  # "abc", "nan", "inf"
                    raise DataError(path, lineno, "score", f"expected a number, got {score!r}") from None
            except DataError as e:
                handle(e, on_error, report)
                continue
            yield lineno, qid, did, rel


def load_beir(path: str | Path, split: str = "test", on_error: OnError = "raise",
              missing_docs: MissingDocs = "raise") -> RetrievalData:
    """Load a BEIR folder and the judgements of ``split``.

    Args:
        path: folder with ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.
        split: which qrels file to read.
        on_error: ``raise`` stops at the first bad row (file:line: field); ``skip`` counts it.
        missing_docs: what to do with a judgement whose document is not in the corpus:
            ``raise``/``skip`` as above, or ``keep`` it as relevant-but-unretrievable, the BEIR/MTEB
            convention that published figures use (ArguAna has 5 such judgements). Kept ones are
            counted in ``missing_doc_judgements``.
    """
    root = Path(path).expanduser().resolve()
    files = {"corpus": root / "corpus.jsonl", "queries": root / "queries.jsonl",
             "qrels": root / "qrels" / f"{split}.tsv"}
    for what, file in files.items():
        if not file.is_file():
            hint = ""
            if what == "qrels" and (root / "qrels").is_dir():
                have = sorted(p.stem for p in (root / "qrels").glob("*.tsv"))
                hint = f" (splits here: {', '.join(have) or 'none'})"
            raise FileNotFoundError(f"{file}: not found; a BEIR folder needs corpus.jsonl, "
                                    f"queries.jsonl and qrels/{split}.tsv{hint}")
    report = SkipReport()
    corpus = {d.id: d for d in iter_corpus(files["corpus"], on_error, report)}
    queries = dict(iter_queries(files["queries"], on_error, report))
    qrels: dict[str, dict[str, int]] = {}
    missing = 0
    for lineno, qid, did, rel in iter_qrels(files["qrels"], on_error, report):
        try:
            if qid not in queries:
                raise DataError(files["qrels"], lineno, "query-id",
                                f"unknown query id {qid!r} (not in queries.jsonl)")
            if did not in corpus:
                if missing_docs == "keep":
                    missing += 1
                else:
                    raise DataError(files["qrels"], lineno, "corpus-id",
                                    f"unknown document id {did!r} (not in corpus.jsonl)")
        except DataError as e:
            handle(e, on_error if e.field == "query-id" else _policy(missing_docs, on_error), report)
            continue
        qrels.setdefault(qid, {})[did] = rel
    if missing:
        log.warning("%s: %d judgement(s) name documents missing from corpus.jsonl; kept as "
                    "relevant-but-unretrievable (BEIR/MTEB convention)", files["qrels"], missing)
    if report.total:
        log.warning("%s: %s", root, report.summary())
    return RetrievalData(corpus, queries, qrels, split, root, report, missing)


def _policy(missing_docs: MissingDocs, on_error: OnError) -> OnError:
    return "skip" if missing_docs == "skip" else on_error


def write_beir(path: str | Path, corpus: Iterable[Document], queries: Iterable[tuple[str, str]],
               qrels: dict[str, dict[str, dict[str, int]]]) -> Path:
    """Write a BEIR folder atomically per file; ``qrels`` maps split → query → doc → score."""
    root = Path(path)
    write_jsonl_atomic(({"_id": d.id, "title": d.title, "text": d.text} for d in corpus),
                       root / "corpus.jsonl")
    write_jsonl_atomic(({"_id": q, "text": t} for q, t in queries), root / "queries.jsonl")
    for split, judgements in qrels.items():
        out = root / "qrels" / f"{split}.tsv"
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for qid, docs in judgements.items():
                for did, score in docs.items():
                    f.write(f"{qid}\t{did}\t{score}\n")
        tmp.replace(out)
    return root
