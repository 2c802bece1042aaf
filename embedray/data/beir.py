"""BEIR folders: ``corpus.jsonl`` {_id,title,text}, ``queries.jsonl`` {_id,text},
``qrels/<split>.tsv`` (header ``query-id corpus-id score``). The corpus and the queries may
be Parquet tables with the same columns instead (``corpus.parquet``, ``queries.parquet``)."""
from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from embedray.atomic import atomic_open
from embedray.data.errors import DataError, OnError, SkipReport, handle
from embedray.data.jsonl import decode_utf8, iter_jsonl, require_str, write_jsonl_atomic

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
    """Stream ``corpus.jsonl`` (or a ``.parquet`` table) as :class:`Document`; duplicate ids are errors."""
    if Path(path).suffix.lower() == ".parquet":
        from embedray.data.parquet import iter_corpus_parquet

        yield from iter_corpus_parquet(path, on_error, report)
        return
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


def beir_file(root: str | Path, name: str) -> Path:
    """``root/<name>.jsonl`` or ``root/<name>.parquet``, whichever is there (``.jsonl`` when
    neither is, for the caller's not-found message); both at once is ambiguous and an error."""
    root = Path(root)
    jsonl, parquet = root / f"{name}.jsonl", root / f"{name}.parquet"
    if jsonl.is_file() and parquet.is_file():
        raise ValueError(f"{root}: holds both {jsonl.name} and {parquet.name}; keep one")
    return parquet if parquet.is_file() else jsonl


def iter_queries(path: str | Path, on_error: OnError = "raise",
                 report: SkipReport | None = None) -> Iterator[tuple[str, str]]:
    """Stream ``queries.jsonl`` (or a ``.parquet`` table) as ``(id, text)``; duplicate ids are errors."""
    if Path(path).suffix.lower() == ".parquet":
        from embedray.data.parquet import iter_queries_parquet

        yield from iter_queries_parquet(path, on_error, report)
        return
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


QRELS_HEADER = "query-id\tcorpus-id\tscore"
_SCORE = re.compile(r"[0-9]+(?:\.0*)?")  # "2" or "2.0"; not "1.5", "-1", "nan", "1e3"


def iter_qrels(path: str | Path, on_error: OnError = "raise",
               report: SkipReport | None = None) -> Iterator[tuple[int, str, str, int]]:
    """Stream ``qrels/<split>.tsv`` rows as ``(line, query_id, doc_id, score)``.

    Lines are split on tabs only, without CSV quoting (a ``"`` is part of an id; with quoting a
    stray one would swallow the following lines into one field), and decoded strictly as UTF-8
    (a BOM before the header is fine). Line numbers are the file's lines.
    A line that is not UTF-8, has fewer than 3 columns or an empty id, a score that is not a
    non-negative integer, or a second judgement of the same (query-id, corpus-id) pair is a
    :class:`DataError` at ``file:line``: raised, or skipped and counted in ``report``. A bad
    header always raises. Blank lines are ignored.
    """
    path = Path(path)
    first_line: dict[tuple[str, str], int] = {}
    with open(path, "rb") as f:
        lines = enumerate(f, start=1)
        _check_qrels_header(path, next(lines, (1, b""))[1])
        for lineno, raw in lines:
            try:
                row = _qrels_row(path, lineno, raw)
                if row is None:
                    continue
                qid, did, rel = row
                if (qid, did) in first_line:
                    raise DataError(path, lineno, "corpus-id",
                                    f"duplicate judgement of query {qid!r} and document {did!r} "
                                    f"(first on line {first_line[qid, did]}; keep one line per pair)")
            except DataError as e:
                handle(e, on_error, report)
                continue
            first_line[qid, did] = lineno
            yield lineno, qid, did, rel


def _check_qrels_header(path: Path, raw: bytes) -> None:
    try:
        header = raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8").rstrip("\r\n").split("\t")
    except UnicodeDecodeError:
        header = [raw.decode("utf-8", "replace").rstrip("\r\n")]
    if [h.strip() for h in header[:2]] != ["query-id", "corpus-id"]:
        raise DataError(path, 1, "header", f"expected the header {QRELS_HEADER!r}, got {chr(9).join(header)!r}")


def _qrels_row(path: Path, lineno: int, raw: bytes) -> tuple[str, str, int] | None:
    """``(query_id, doc_id, score)`` of one qrels line, None for a blank line; errors are DataErrors."""
    text = decode_utf8(raw, path, lineno).rstrip("\r\n")
    if not text.strip():
        return None
    cells = text.split("\t")
    if len(cells) < 3:
        raise DataError(path, lineno, None, f"expected 3 tab-separated columns (query-id, corpus-id, score), "
                        f"got {len(cells)}")
    qid, did, score = (c.strip() for c in cells[:3])
    for name, value in (("query-id", qid), ("corpus-id", did)):
        if not value:
            raise DataError(path, lineno, name, "empty id")
    if not _SCORE.fullmatch(score):
        what = "a negative score" if score.startswith("-") else "not an integer"
        raise DataError(path, lineno, "score", f"expected a non-negative integer, got {score!r} ({what}; "
                        "0 = not relevant, higher = more relevant)")
    return qid, did, int(score.split(".")[0])


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
    files = {"corpus": beir_file(root, "corpus"), "queries": beir_file(root, "queries"),
             "qrels": root / "qrels" / f"{split}.tsv"}
    for what, file in files.items():
        if not file.is_file():
            hint = ""
            if what == "qrels" and (root / "qrels").is_dir():
                have = sorted(p.stem for p in (root / "qrels").glob("*.tsv"))
                hint = f" (splits here: {', '.join(have) or 'none'})"
            raise FileNotFoundError(f"{file}: not found; a BEIR folder needs corpus.jsonl, "
                                    f"queries.jsonl (or .parquet) and qrels/{split}.tsv{hint}")
    report = SkipReport()
    corpus = {d.id: d for d in iter_corpus(files["corpus"], on_error, report)}
    queries = dict(iter_queries(files["queries"], on_error, report))
    rows = iter_qrels(files["qrels"], on_error, report)
    data = judged_split(rows, corpus, queries, files["qrels"], split, on_error, missing_docs, report)
    if report.total:
        log.warning("%s: %s", root, report.summary())
    return data


def judged_split(rows: Iterable[tuple[int, str, str, int]], corpus: dict[str, Document],
                 queries: dict[str, str], qrels_path: Path, split: str, on_error: OnError = "raise",
                 missing_docs: MissingDocs = "raise", report: SkipReport | None = None) -> RetrievalData:
    """Check the :func:`iter_qrels` rows of ``split`` against a loaded corpus and queries (see
    :func:`load_beir` for ``on_error`` and ``missing_docs``); unknown ids name the qrels line."""
    report = SkipReport() if report is None else report
    qrels: dict[str, dict[str, int]] = {}
    missing = 0
    for lineno, qid, did, rel in rows:
        try:
            if qid not in queries:
                raise DataError(qrels_path, lineno, "query-id",
                                f"unknown query id {qid!r} (not in queries.jsonl)")
            if did not in corpus:
                if missing_docs == "keep":
                    missing += 1
                else:
                    raise DataError(qrels_path, lineno, "corpus-id",
                                    f"unknown document id {did!r} (not in corpus.jsonl)")
        except DataError as e:
            handle(e, on_error if e.field == "query-id" else _policy(missing_docs, on_error), report)
            continue
        qrels.setdefault(qid, {})[did] = rel
    if missing:
        log.warning("%s: %d judgement(s) name documents missing from corpus.jsonl; kept as "
                    "relevant-but-unretrievable (BEIR/MTEB convention)", qrels_path, missing)
    return RetrievalData(corpus, queries, qrels, split, qrels_path.parent.parent, report, missing)


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
        with atomic_open(root / "qrels" / f"{split}.tsv", newline="") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for qid, docs in judgements.items():
                for did, score in docs.items():
                    f.write(f"{qid}\t{did}\t{score}\n")
    return root


def held_out_leakage(path: str | Path, train_split: str, held_out: Iterable[str]) -> dict[str, list[str]]:
    """Per held-out split, the texts of its judged queries that are also judged training
    queries (same text, whatever the ids; compared after stripping and case folding)."""
    root = Path(path).expanduser().resolve()
    queries = dict(iter_queries(beir_file(root, "queries"), "skip"))

    def judged(split: str) -> set[str]:
        file = root / "qrels" / f"{split}.tsv"
        return {q for _, q, _, rel in iter_qrels(file, "skip") if rel > 0} if file.is_file() else set()

    train = {queries[q].strip().casefold(): q for q in judged(train_split) if q in queries}
    out = {}
    for split in held_out:
        if split == train_split:
            continue
        leaked = sorted(queries[q] for q in judged(split) if q in queries and queries[q].strip().casefold() in train)
        if leaked:
            out[split] = leaked
    return out


#: ``(query_id, query_text, positive_doc_id)``.
JudgedPair = tuple[str, str, str]


def pairs_from_data(data: RetrievalData) -> list[JudgedPair]:
    """Every judged (query, positive document) of a split as :data:`JudgedPair` rows."""
    return [(q, data.queries[q], d) for q, docs in data.qrels.items() if q in data.queries
            for d, rel in docs.items() if rel > 0 and d in data.corpus]
