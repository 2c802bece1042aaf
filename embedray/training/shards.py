"""The training data of a Ray run as each worker reads it: its own shard of rows, texts by id.

Before the workers start, the driver writes the rows it validated and the texts they name into
the run's storage (``<run>/train_data/``, one atomic folder), all as Arrow IPC files that every
worker memory-maps: the pages are the operating system's file cache, shared by the processes of
a node, and only the pages a worker touches are read. Nothing per row is held in a worker's
Python heap but a length and a permutation slot (numpy), so a worker's memory stays flat as the
data grows:

- ``docs.arrow`` and ``queries.arrow``: ``id`` (sorted) and text, looked up by binary search;
- ``rank-R-of-W.arrow``: worker R's rows (row ``i`` of the canonical order goes to rank ``i % W``,
  so the rows stay in canonical order, each task's contiguous) with each positive's length;
- ``rank-R-of-W.queries.arrow``: every known positive of that worker's queries (their judgements,
  else their rows' positives; sorted ids), which the negative sampler never draws;
- ``dev.json``: the dev split's judgements (its texts are in the two stores);
- ``manifest.json``, written last: row counts, per-task totals and a digest of the rows, which a
  checkpoint records so that a resume on other rows is refused rather than silently training on
  different batches.

Shard membership is a function of the rows and the number of workers only (not of which worker
asked first), which is what an exact resume needs: each worker's batches are a pure function of
(seed, batch index, its shard). Ray Data's ``streaming_split`` hands a restarted worker other
rows, hence one file per rank.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from embedray.atomic import atomic_dir
from embedray.memory import peak_rss_mib
from embedray.data.beir import Document, RetrievalData
from embedray.training.batches import Example, canonical_order
from embedray.training.data import TrainingData

STORE_DIR = "train_data"
_ROW_TYPES = {"query_id": pa.string(), "pos_id": pa.string(), "neg_ids": pa.list_(pa.string()),
              "scores": pa.list_(pa.float64()), "label": pa.string(), "task": pa.string(), "pos_chars": pa.int64()}


def shard_name(rank: int, world_size: int) -> str:
    return f"rank-{rank}-of-{world_size}.arrow"


def write_store(run_dir: str | Path, data: TrainingData, examples: Sequence[Example], world_size: int) -> dict:
    """Write ``data``'s texts and ``examples`` (one shard per worker) to ``run_dir/train_data``;
    return the manifest. Replaces an earlier store in one rename."""
    rows = canonical_order(examples)
    ids = sorted(data.corpus)
    qids = sorted(data.queries)
    with atomic_dir(Path(run_dir) / STORE_DIR, overwrite=True) as tmp:
        docs = [data.corpus[i] for i in ids]
        _write_arrow(tmp / "docs.arrow", {"id": ids, "title": [d.title for d in docs], "text": [d.text for d in docs]})
        _write_arrow(tmp / "queries.arrow", {"id": qids, "text": [data.queries[q] for q in qids]})
        # Every known positive of a query: its judgements, else the positives of all its rows.
        row_positives: dict[str, set[str]] = {}
        for e in rows:
            if e.query_id:
                row_positives.setdefault(e.query_id, set()).add(e.pos_id)
        digest = hashlib.sha256()
        counts = []
        for rank in range(world_size):
            mine = rows[rank::world_size]
            _write_arrow(tmp / shard_name(rank, world_size), _row_columns(mine, data), _ROW_TYPES)
            own = sorted({e.query_id for e in mine if e.query_id})
            _write_arrow(tmp / shard_name(rank, world_size).replace(".arrow", ".queries.arrow"),
                         {"id": own, "judged": [sorted(data.positives.get(q) or row_positives[q]) for q in own]},
                         {"id": pa.string(), "judged": pa.list_(pa.string())})
            for e in mine:
                digest.update(repr((rank, e)).encode())
            counts.append(len(mine))
        dev = data.dev
        (tmp / "dev.json").write_text(json.dumps(None if dev is None else {
            "split": dev.split, "path": str(dev.path) if dev.path else None, "qrels": dev.qrels,
            "missing_doc_judgements": dev.missing_doc_judgements}))
        manifest = {"world_size": world_size, "rows": len(rows), "rows_per_rank": counts, "docs": len(ids),
                    "queries": len(qids), "digest": digest.hexdigest(), "tasks": task_totals(rows)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def task_totals(rows: Sequence[Example]) -> dict[str, dict]:
    """Per task (``""`` for a single-task run): its row count and its sorted class labels. What
    every rank must agree on although it sees only its shard: the task schedule's default weights
    are the row counts, and a classifier head has one output per label of the whole task."""
    out: dict[str, dict] = {}
    for e in rows:
        t = out.setdefault(e.task, {"rows": 0, "labels": set()})
        t["rows"] += 1
        if e.label is not None:
            t["labels"].add(e.label)
    return {name: {"rows": t["rows"], "labels": sorted(t["labels"])} for name, t in sorted(out.items())}


def _write_arrow(path: Path, columns: dict[str, list], types: dict[str, pa.DataType] | None = None) -> None:
    table = pa.table({k: pa.array(v, type=(types or {}).get(k, pa.string())) for k, v in columns.items()})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=max(1, table.num_rows))  # one batch: O(1) row access
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _row_columns(rows: Sequence[Example], data: TrainingData) -> dict[str, list]:
    return {"query_id": [e.query_id for e in rows], "pos_id": [e.pos_id for e in rows],
            "neg_ids": [list(e.neg_ids) for e in rows], "scores": [list(e.scores or ()) for e in rows],
            "label": [e.label or "" for e in rows], "task": [e.task for e in rows],
            "pos_chars": [len(data.doc_text(e.pos_id)) for e in rows]}  # the loop's length proxy


def _open_arrow(path: Path) -> dict[str, pa.Array]:
    table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()  # zero-copy
    # Written as one batch: its single chunk is the mapped file itself (combine_chunks would copy).
    return {name: (col.chunk(0) if col.num_chunks == 1 else col.combine_chunks())
            for name, col in zip(table.column_names, table.columns)}


class _Window(Sequence):
    """Rows ``start:stop`` of memory-mapped Arrow data, each built on demand by ``_at(row)``."""

    def __init__(self, size: int, start: int = 0, stop: int | None = None):
        self.start, self.stop = start, size if stop is None else stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self._at(self.start + (int(i) % len(self)))

    def _at(self, row: int):
        raise NotImplementedError


class _Column(_Window):
    """Strings of one Arrow column, read on demand (``self[i]``); ``start:stop`` narrows it."""

    def __init__(self, array: pa.Array, start: int = 0, stop: int | None = None):
        super().__init__(len(array), start, stop)
        self.array = array

    def _at(self, row: int) -> str:
        return self.array[row].as_py()

    def __iter__(self) -> Iterator[str]:
        for chunk in range(self.start, self.stop, 4096):  # a slice at a time: as_py per scalar is slow
            yield from self.array.slice(chunk, min(4096, self.stop - chunk)).to_pylist()


class ArrowTexts(Mapping):
    """``id → value`` over a memory-mapped Arrow file sorted by ``id`` (binary search)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._cols = _open_arrow(self.path)
        self.ids = _Column(self._cols["id"])

    def _index(self, key) -> int:
        i = bisect.bisect_left(self.ids, key) if isinstance(key, str) else len(self.ids)
        if i == len(self.ids) or self.ids[i] != key:
            raise KeyError(key)
        return i

    def __contains__(self, key) -> bool:
        try:
            self._index(key)
            return True
        except KeyError:
            return False

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def with_prefix(self, prefix: str) -> Sequence[str]:
        """The sorted ids that start with ``prefix`` (contiguous in a sorted column)."""
        lo = bisect.bisect_left(self.ids, prefix)
        hi = bisect.bisect_left(self.ids, prefix + "\U0010ffff", lo)
        return _Column(self._cols["id"], lo, hi)

    def _value(self, i: int):
        return self._cols["text"][i].as_py()

    def __getitem__(self, key):
        return self._value(self._index(key))


class ArrowDocuments(ArrowTexts):
    """``id → Document`` over ``docs.arrow``."""

    def _value(self, i: int) -> Document:
        return Document(self.ids[i], self._cols["text"][i].as_py(), self._cols["title"][i].as_py())

    def items(self):
        return ((d.id, d) for d in self.values())

    def values(self):
        for chunk in range(0, len(self.ids), 4096):
            n = min(4096, len(self.ids) - chunk)
            cols = [self._cols[k].slice(chunk, n).to_pylist() for k in ("id", "text", "title")]
            yield from (Document(i, t, ti) for i, t, ti in zip(*cols))


class ArrowPositives(ArrowTexts):
    """``query id → set of judged document ids`` over a shard's ``.queries.arrow``."""

    def _value(self, i: int) -> set[str]:
        return set(self._cols["judged"][i].as_py())


class ShardRows(_Window):
    """A rank's training rows as :class:`Example`\\ s, built on demand from the memory-mapped
    ``rank-R-of-W.arrow``; ``task(name)`` is one task's (contiguous) rows, ``pos_chars`` their
    positives' lengths."""

    def __init__(self, cols: dict[str, pa.Array], start: int = 0, stop: int | None = None):
        super().__init__(len(cols["pos_id"]), start, stop)
        self._cols = cols

    def _at(self, j: int) -> Example:
        c = self._cols
        scores = c["scores"][j].as_py()
        return Example(c["query_id"][j].as_py(), c["pos_id"][j].as_py(), tuple(c["neg_ids"][j].as_py()),
                       tuple(scores) if scores else None, c["label"][j].as_py() or None, c["task"][j].as_py())

    def __iter__(self) -> Iterator[Example]:
        for chunk in range(self.start, self.stop, 4096):
            n = min(4096, self.stop - chunk)
            cols = {k: self._cols[k].slice(chunk, n).to_pylist() for k in _ROW_TYPES if k != "pos_chars"}
            for q, p, negs, scores, label, task in zip(*(cols[k] for k in ("query_id", "pos_id", "neg_ids", "scores",
                                                                              "label", "task"))):
                yield Example(q, p, tuple(negs), tuple(scores) if scores else None, label or None, task)

    def task(self, name: str) -> ShardRows:
        """The rows of task ``name`` (canonical order sorts by task first, so they are contiguous)."""
        tasks = _Column(self._cols["task"], self.start, self.stop)
        lo = bisect.bisect_left(tasks, name)
        return ShardRows(self._cols, self.start + lo, self.start + bisect.bisect_right(tasks, name, lo))

    @property
    def pos_chars(self) -> np.ndarray:
        return self._cols["pos_chars"].slice(self.start, len(self)).to_numpy()


@dataclass
class Shard:
    """What one worker trains on: the data (texts through the stores, positives of its own queries,
    the dev split), its rows, the run's total row count and the rows' digest."""

    data: TrainingData
    examples: ShardRows
    total: int
    digest: str
    stats: dict
    tasks: dict[str, dict]
    """:func:`task_totals` of all the rows, every shard's."""


def open_shard(run_dir: str | Path, rank: int, world_size: int) -> Shard:
    """Worker ``rank``'s shard of the store the driver wrote (:func:`write_store`)."""
    t0, rss0 = time.perf_counter(), peak_rss_mib()
    root = Path(run_dir) / STORE_DIR
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise RuntimeError(f"{manifest_path}: missing; the driver writes the run's training data there before "
                           "the workers start, and every node must see cluster.storage_path")
    manifest = json.loads(manifest_path.read_text())
    if manifest["world_size"] != world_size:
        raise RuntimeError(f"{root}: written for {manifest['world_size']} workers, this run has {world_size}")
    docs, queries = ArrowDocuments(root / "docs.arrow"), ArrowTexts(root / "queries.arrow")
    rows = ShardRows(_open_arrow(root / shard_name(rank, world_size)))
    positives = ArrowPositives(root / shard_name(rank, world_size).replace(".arrow", ".queries.arrow"))
    dev_spec = json.loads((root / "dev.json").read_text())
    dev = None
    if dev_spec is not None:
        dev = RetrievalData(docs, {q: queries[q] for q in dev_spec["qrels"]}, dev_spec["qrels"], dev_spec["split"],
                            Path(dev_spec["path"]) if dev_spec["path"] else None,
                            missing_doc_judgements=dev_spec["missing_doc_judgements"])
    stats = {"rows": len(rows), "rows_total": manifest["rows"], "docs": manifest["docs"],
             "open_s": round(time.perf_counter() - t0, 3), "peak_rss_mib_delta": round(peak_rss_mib() - rss0, 1)}
    return Shard(TrainingData(docs, queries, positives, dev), rows, manifest["rows"], manifest["digest"], stats,
                 manifest["tasks"])


def doc_ids(corpus: Mapping, prefix: str = "") -> Sequence[str]:
    """The sorted ids of ``corpus`` (starting with ``prefix``): a view for a store, a list for a dict."""
    if isinstance(corpus, ArrowTexts):
        return corpus.with_prefix(prefix) if prefix else corpus.ids
    return sorted(d for d in corpus if d.startswith(prefix))
