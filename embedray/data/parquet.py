"""Parquet tables with ids: corpus (``_id``, ``title``?, ``text``), queries (``_id``, ``text``)
and training pairs (``query_id``, ``pos_id``, ``neg_ids``? list<string>).

Reads stream record batches (``ParquetFile.iter_batches``) and validate each row like the JSONL
readers do; errors name ``file:row N`` (0-based, the pyarrow/pandas row index) and the field.
Writes go through a temp file + rename. Training pairs are also read from JSONL
(``{"query_id", "pos_id", "neg_ids"?}``, what ``embedray data debian`` writes) by :func:`iter_pairs`.
"""
from __future__ import annotations

from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from embedray.atomic import atomic_path
from embedray.data.beir import Document
from embedray.data.errors import DataError, OnError, SkipReport, handle
from embedray.data.jsonl import iter_jsonl, require_list, require_str

BATCH_ROWS = 8192


@dataclass(frozen=True)
class TrainPair:
    """One id-based training row: a query, one relevant document, optional given negatives."""

    query_id: str
    pos_id: str
    neg_ids: tuple[str, ...] = field(default_factory=tuple)


def _iter_rows(path: Path, required: list[str], optional: list[str]) -> Iterator[tuple[str, dict]]:
    """Yield ``("row N", {column: value})``; a missing required column is an error for the file."""
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    for col in required:
        if col not in names:
            raise DataError(path, None, col, f"missing column (columns here: {', '.join(names) or 'none'})")
    columns = required + [c for c in optional if c in names]
    row = 0
    for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=columns):
        for values in batch.to_pylist():
            yield f"row {row}", values
            row += 1


def _str(values: dict, key: str, path: Path, where: str) -> str:
    if values.get(key) is None:
        raise DataError(path, where, key, "missing value (null)")
    return require_str(values, key, path, where)  # also turns integer ids into strings


def iter_corpus_parquet(path: str | Path, on_error: OnError = "raise",
                        report: SkipReport | None = None) -> Iterator[Document]:
    """Stream a corpus Parquet file as :class:`Document`; duplicate ids are errors.

    Args:
        path: a ``.parquet`` file with columns ``_id``, ``text`` and optionally ``title``.
        on_error: ``raise`` at the first bad row, or ``skip`` it and count it in ``report``.
        report: where skipped rows are counted.
    """
    path = Path(path)
    seen: set[str] = set()
    for where, values in _iter_rows(path, ["_id", "text"], ["title"]):
        try:
            doc_id = _str(values, "_id", path, where)
            text = _str(values, "text", path, where)
            title = values.get("title") or ""
            if not isinstance(title, str):
                raise DataError(path, where, "title", f"expected a string, got {type(title).__name__}")
            if doc_id in seen:
                raise DataError(path, where, "_id", f"duplicate id {doc_id!r}")
        except DataError as e:
            handle(e, on_error, report)
            continue
        seen.add(doc_id)
        yield Document(doc_id, text, title)


def iter_queries_parquet(path: str | Path, on_error: OnError = "raise",
                         report: SkipReport | None = None) -> Iterator[tuple[str, str]]:
    """Stream a queries Parquet file (``_id``, ``text``) as ``(id, text)``; duplicate ids are errors."""
    path = Path(path)
    seen: set[str] = set()
    for where, values in _iter_rows(path, ["_id", "text"], []):
        try:
            qid = _str(values, "_id", path, where)
            text = _str(values, "text", path, where)
            if qid in seen:
                raise DataError(path, where, "_id", f"duplicate id {qid!r}")
        except DataError as e:
            handle(e, on_error, report)
            continue
        seen.add(qid)
        yield qid, text


def _pair(values: dict, path: Path, where, query_ids: Container[str] | None,
          doc_ids: Container[str] | None) -> TrainPair:
    qid = require_str(values, "query_id", path, where)
    pid = require_str(values, "pos_id", path, where)
    negs = require_list(values, "neg_ids", path, where, str, required=False) or []
    if query_ids is not None and qid not in query_ids:
        raise DataError(path, where, "query_id", f"unknown query id {qid!r} (not in the queries)")
    if doc_ids is not None:
        for key, did in [("pos_id", pid)] + [(f"neg_ids[{i}]", d) for i, d in enumerate(negs)]:
            if did not in doc_ids:
                raise DataError(path, where, key, f"unknown document id {did!r} (not in the corpus)")
    return TrainPair(qid, pid, tuple(negs))


def iter_pair_rows(path: str | Path) -> Iterator[tuple[str, dict]]:
    """Yield ``("row N", row)`` of a training-pairs Parquet file, unchecked (null values left out),
    so that callers validate them like JSONL rows; a missing ``query_id``/``pos_id`` column raises."""
    for where, values in _iter_rows(Path(path), ["query_id", "pos_id"], ["neg_ids"]):
        yield where, {k: v for k, v in values.items() if v is not None}


def iter_pairs(path: str | Path, on_error: OnError = "raise", report: SkipReport | None = None,
               query_ids: Container[str] | None = None,
               doc_ids: Container[str] | None = None) -> Iterator[TrainPair]:
    """Stream id-based training pairs from ``.parquet`` or ``.jsonl``.

    Args:
        path: a Parquet file (columns ``query_id``, ``pos_id``, optional ``neg_ids``) or a JSONL
            file with the same keys.
        on_error: ``raise`` at the first bad row, or ``skip`` it and count it in ``report``.
        report: where skipped rows are counted.
        query_ids, doc_ids: when given, ids not in them are errors ("unknown query id").
    """
    path = Path(path)
    if path.suffix == ".parquet":
        rows = iter_pair_rows(path)
    else:
        rows = iter_jsonl(path, on_error, report)
    for where, values in rows:
        try:
            pair = _pair(values, path, where, query_ids, doc_ids)
        except DataError as e:
            handle(e, on_error, report)
            continue
        yield pair


def _write_atomic(rows: Iterable[dict], schema: pa.Schema, path: str | Path) -> int:
    """Write dict rows in batches to ``path`` atomically; return the row count."""
    n, batch = 0, []
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for row in rows:
            batch.append(row)
            if len(batch) == BATCH_ROWS:
                writer.write_batch(pa.RecordBatch.from_pylist(batch, schema=schema))
                n, batch = n + len(batch), []
        if batch or n == 0:
            writer.write_batch(pa.RecordBatch.from_pylist(batch, schema=schema))
            n += len(batch)
    return n


CORPUS_SCHEMA = pa.schema([("_id", pa.string()), ("title", pa.string()), ("text", pa.string())])
QUERIES_SCHEMA = pa.schema([("_id", pa.string()), ("text", pa.string())])
PAIRS_SCHEMA = pa.schema([("query_id", pa.string()), ("pos_id", pa.string()),
                          ("neg_ids", pa.list_(pa.string()))])


def write_corpus_parquet(docs: Iterable[Document], path: str | Path) -> int:
    """Write documents as a corpus Parquet file (``_id``, ``title``, ``text``); return the count."""
    return _write_atomic(({"_id": d.id, "title": d.title, "text": d.text} for d in docs),
                         CORPUS_SCHEMA, path)


def write_queries_parquet(queries: Iterable[tuple[str, str]], path: str | Path) -> int:
    """Write ``(id, text)`` queries as a Parquet file (``_id``, ``text``); return the count."""
    return _write_atomic(({"_id": q, "text": t} for q, t in queries), QUERIES_SCHEMA, path)


def write_pairs_parquet(pairs: Iterable[TrainPair], path: str | Path) -> int:
    """Write training pairs as Parquet (``query_id``, ``pos_id``, ``neg_ids``); return the count."""
    return _write_atomic(({"query_id": p.query_id, "pos_id": p.pos_id, "neg_ids": list(p.neg_ids)}
                          for p in pairs), PAIRS_SCHEMA, path)
