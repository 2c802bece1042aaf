"""Training pairs from what users have: NLI triples, search logs, raw text, sentences.

Each builder reads its input (bad rows raise ``file:line: field`` or are skipped and counted),
returns FlagEmbedding rows (:class:`~embedray.data.flag.FlagExample`) and a :class:`BuildStats`
that counts every input row it did not turn into a pair, by reason. Output depends only on the
input and the seed. ``embedray data build KIND INPUT --output OUT.jsonl`` runs them.

- :func:`build_nli` — premise → entailed hypotheses (positives), contradicted ones (hard negatives);
- :func:`build_logs` — query → clicked documents, shown-but-not-clicked as hard negatives;
- :func:`build_nsp` — sentence → the next sentence of the same document (next-sentence pairs);
- :func:`build_span` — two span-corrupted views of one passage (unsupervised positives);
- :func:`build_simcse` — sentence → itself (the SimCSE objective makes the two views);
- :func:`find_near_duplicates` — rows whose query is a near-duplicate (cosine) of an earlier one.
"""
from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedray.data.errors import DataError, OnError, SkipReport, handle
from embedray.data.flag import FlagExample
from embedray.data.jsonl import decode_utf8, iter_jsonl, require_str

KINDS = ("nli", "logs", "nsp", "span", "simcse", "dedup")


@dataclass
class BuildStats:
    """What a builder read, wrote and left out (by reason)."""

    kind: str
    read: int = 0
    """Input rows (documents for ``nsp`` / ``span``) read without error."""
    written: int = 0
    """FlagEmbedding rows produced."""
    dropped: Counter = field(default_factory=Counter)
    """Valid input left out, by reason (e.g. ``neutral``, ``duplicate``)."""
    report: SkipReport = field(default_factory=SkipReport)
    """Bad input rows skipped under ``on_error: skip``."""

    def summary(self) -> str:
        out = f"{self.kind}: {self.written} rows from {self.read} input rows"
        if self.dropped:
            out += "; left out: " + ", ".join(f"{n} {why}" for why, n in self.dropped.most_common())
        if self.report.total:
            out += f"; {self.report.summary()}"
        return out

    def as_dict(self) -> dict:
        return {"kind": self.kind, "read": self.read, "written": self.written,
                "dropped": dict(self.dropped.most_common()), "skipped": self.report.as_dict()}


# -- readers -----------------------------------------------------------------------------

def _stripped_lines(path: Path, on_error: OnError, report: SkipReport | None) -> Iterator[tuple[int, str]]:
    """``(line, stripped text)`` of every UTF-8 line of a text file, blank ones included."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                yield lineno, decode_utf8(raw, path, lineno).strip()
            except DataError as e:
                handle(e, on_error, report)


def iter_texts(path: str | Path, field_name: str = "text", on_error: OnError = "raise",
               report: SkipReport | None = None) -> Iterator[tuple[int, str]]:
    """``(line, text)`` of a ``.jsonl`` file (its ``field_name``) or of a text file (one text per
    non-blank line)."""
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        for lineno, obj in iter_jsonl(path, on_error, report):
            try:
                yield lineno, require_str(obj, field_name, path, lineno)
            except DataError as e:
                handle(e, on_error, report)
        return
    yield from ((lineno, text) for lineno, text in _stripped_lines(path, on_error, report) if text)


def iter_documents(path: str | Path, field_name: str = "text", on_error: OnError = "raise",
                   report: SkipReport | None = None) -> Iterator[tuple[int, str]]:
    """``(first line, document)``: rows of a ``.jsonl`` file, or blocks of a text file separated
    by blank lines (lines of a block are joined with spaces)."""
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        yield from iter_texts(path, field_name, on_error, report)
        return
    block: list[str] = []
    start = 0
    for lineno, text in _stripped_lines(path, on_error, report):
        if text:
            start = start or lineno
            block.append(text)
        elif block:
            yield start, " ".join(block)
            block, start = [], 0
    if block:
        yield start, " ".join(block)


# -- nli -----------------------------------------------------------------------------------

#: Label spellings: SNLI/MNLI strings and the Hugging Face integers (0, 1, 2).
_NLI_LABELS = {"entailment": "entailment", "neutral": "neutral", "contradiction": "contradiction",
               "0": "entailment", "1": "neutral", "2": "contradiction"}
_NLI_FIELDS = (("premise", "hypothesis", "label"), ("sentence1", "sentence2", "gold_label"))


def _nli_rows(path: Path, on_error: OnError, report: SkipReport) -> Iterator[tuple[int, dict]]:
    if path.suffix.lower() == ".jsonl":
        yield from iter_jsonl(path, on_error, report)
        return
    with open(path, "rb") as f:
        lines = [decode_utf8(raw, path, n) for n, raw in enumerate(f, start=1)]
    reader = csv.DictReader(io.StringIO("".join(lines)), delimiter="\t", quoting=csv.QUOTE_NONE)
    for lineno, row in enumerate(reader, start=2):
        yield lineno, row


def build_nli(path: str | Path, on_error: OnError = "raise") -> tuple[list[FlagExample], BuildStats]:
    """SNLI/MNLI premise/hypothesis/label rows (JSONL, or TSV with a header) → one row per
    premise: its entailed hypotheses as ``pos``, its contradicted ones as ``neg``.

    Fields are ``premise``/``hypothesis``/``label`` or ``sentence1``/``sentence2``/``gold_label``;
    labels are ``entailment``/``neutral``/``contradiction`` or 0/1/2. Neutral pairs, pairs without
    a gold label (SNLI's ``-``) and premises with no entailment are left out and counted.
    """
    path, stats = Path(path), BuildStats("nli")
    by_premise: dict[str, tuple[list[str], list[str]]] = {}
    for lineno, row in _nli_rows(path, on_error, stats.report):
        try:
            names = next((n for n in _NLI_FIELDS if n[0] in row), None)
            if names is None:
                raise DataError(path, lineno, "premise", "missing field (or sentence1)")
            premise = require_str(row, names[0], path, lineno).strip()
            hypothesis = require_str(row, names[1], path, lineno).strip()
            raw = row.get(names[2])
            if raw is None or isinstance(raw, bool):
                raise DataError(path, lineno, names[2], "missing field")
            label = str(raw).strip().lower()
            if label not in _NLI_LABELS and label not in ("-", "-1"):
                raise DataError(path, lineno, names[2], f"expected entailment, neutral, contradiction or 0/1/2, "
                                                        f"got {raw!r}")
        except DataError as e:
            handle(e, on_error, stats.report)
            continue
        stats.read += 1
        kind = _NLI_LABELS.get(label)
        if kind is None:
            stats.dropped["without a gold label"] += 1
        elif kind == "neutral":
            stats.dropped["neutral"] += 1
        else:
            pos, neg = by_premise.setdefault(premise, ([], []))
            (pos if kind == "entailment" else neg).append(hypothesis)
    out = []
    for premise, (pos, neg) in by_premise.items():
        if not pos:
            stats.dropped["premises without an entailment"] += 1
            continue
        out.append(FlagExample(premise, list(dict.fromkeys(pos)), list(dict.fromkeys(neg))))
    stats.written = len(out)
    return out, stats


# -- logs ----------------------------------------------------------------------------------

def build_logs(path: str | Path, random_negatives: int = 1, seed: int = 0,
               on_error: OnError = "raise") -> tuple[list[FlagExample], BuildStats]:
    """Search-log JSONL rows ``{"query", "clicked": str | [str], "shown": [str]?}`` → one row per
    query: its clicked documents as ``pos``; documents it was shown but never clicked as hard
    negatives, or, when it has none, ``random_negatives`` documents clicked for other queries.

    Repeated queries (after stripping) merge; repeated clicks collapse (counted).
    """
    path, stats = Path(path), BuildStats("logs")
    clicked: dict[str, list[str]] = {}
    shown: dict[str, list[str]] = {}
    for lineno, row in iter_jsonl(path, on_error, stats.report):
        try:
            query = require_str(row, "query", path, lineno).strip()
            clicks = _str_or_list(row, "clicked", path, lineno, required=True)
            seen = _str_or_list(row, "shown", path, lineno, required=False)
        except DataError as e:
            handle(e, on_error, stats.report)
            continue
        stats.read += 1
        have = clicked.setdefault(query, [])
        for doc in clicks:
            if doc in have:
                stats.dropped["repeated clicks"] += 1
            else:
                have.append(doc)
        shown.setdefault(query, []).extend(seen)
    every_doc = sorted({d for docs in clicked.values() for d in docs})
    rng = np.random.default_rng(seed)
    out = []
    for query, pos in clicked.items():
        neg = list(dict.fromkeys(d for d in shown[query] if d not in pos))
        if not neg and random_negatives:
            others = [d for d in every_doc if d not in pos]
            picks = rng.choice(len(others), min(random_negatives, len(others)), replace=False) if others else []
            neg = [others[i] for i in sorted(picks)]
        out.append(FlagExample(query, pos, neg))
    stats.written = len(out)
    return out, stats


def _str_or_list(row: dict, key: str, path: Path, lineno: int, required: bool) -> list[str]:
    value = row.get(key)
    if value is None:
        if required:
            raise DataError(path, lineno, key, "missing field")
        return []
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise DataError(path, lineno, key, f"expected a string or a list of strings, got {type(value).__name__}")
    values = [v.strip() for v in values]
    if any(not v for v in values) or (required and not values):
        raise DataError(path, lineno, key, "empty text")
    return values


# -- nsp, span, simcse ----------------------------------------------------------------------

def sentence_splitter(language: str = "en") -> Callable[[str], list[str]]:
    """Sentences of a text by pysbd's rule-based segmenter (abbreviations, decimals, …)."""
    import pysbd

    seg = pysbd.Segmenter(language=language, clean=False)
    return lambda text: [s.strip() for s in seg.segment(text) if s.strip()]


def build_nsp(path: str | Path, field_name: str = "text", min_chars: int = 20, language: str = "en",
              on_error: OnError = "raise", progress: bool = False) -> tuple[list[FlagExample], BuildStats]:
    """Documents (JSONL rows or blank-line-separated blocks) → (sentence, next sentence) pairs
    within each document; sentences shorter than ``min_chars`` are left out (counted), and so are
    documents with fewer than two sentences."""
    from tqdm.auto import tqdm

    stats, split = BuildStats("nsp"), sentence_splitter(language)
    out = []
    docs = iter_documents(path, field_name, on_error, stats.report)
    for _, doc in tqdm(docs, desc="nsp", unit=" docs", disable=not progress):
        stats.read += 1
        sentences = split(doc)
        kept = [s for s in sentences if len(s) >= min_chars]
        stats.dropped["short sentences"] += len(sentences) - len(kept)
        if len(kept) < 2:
            stats.dropped["documents with fewer than two sentences"] += 1
            continue
        out.extend(FlagExample(a, [b]) for a, b in zip(kept, kept[1:]))
    stats.dropped = +stats.dropped
    stats.written = len(out)
    return out, stats


def corrupt_span(words: list[str], rng: np.random.Generator, ratio: float) -> list[str]:
    """``words`` without one contiguous span of ``ratio`` of them (at least one word), at a
    random position."""
    n = max(1, round(len(words) * ratio))
    start = int(rng.integers(0, len(words) - n + 1))
    return words[:start] + words[start + n:]


def build_span(path: str | Path, field_name: str = "text", ratio: float = 0.15, min_words: int = 8,
               seed: int = 0, on_error: OnError = "raise") -> tuple[list[FlagExample], BuildStats]:
    """Passages → two views of each, with a different span of ``ratio`` of its words removed in
    each view (span corruption): the views are each other's unsupervised positive. Passages under
    ``min_words`` words are left out (counted)."""
    if not 0 < ratio < 0.5:
        raise ValueError(f"span ratio must be in (0, 0.5), got {ratio}")
    stats = BuildStats("span")
    out = []
    for lineno, doc in iter_documents(path, field_name, on_error, stats.report):
        stats.read += 1
        words = doc.split()
        if len(words) < min_words:
            stats.dropped["short passages"] += 1
            continue
        rng = np.random.default_rng([seed, lineno])  # per passage: the same views whatever else the file holds
        a, b = corrupt_span(words, rng, ratio), corrupt_span(words, rng, ratio)
        out.append(FlagExample(" ".join(a), [" ".join(b)]))
    stats.written = len(out)
    return out, stats


def build_simcse(path: str | Path, field_name: str = "text", min_chars: int = 1,
                 on_error: OnError = "raise") -> tuple[list[FlagExample], BuildStats]:
    """Sentences (JSONL rows or lines) → ``(sentence, same sentence)`` rows for the SimCSE
    objective; repeated sentences collapse and short ones are left out (both counted)."""
    stats = BuildStats("simcse")
    seen: set[str] = set()
    out = []
    for _, text in iter_texts(path, field_name, on_error, stats.report):
        stats.read += 1
        if len(text) < min_chars:
            stats.dropped["short sentences"] += 1
        elif text in seen:
            stats.dropped["duplicates"] += 1
        else:
            seen.add(text)
            out.append(FlagExample(text, [text]))
    stats.written = len(out)
    return out, stats


# -- dedup ---------------------------------------------------------------------------------

def find_near_duplicates(texts: list[str], encode: Callable[[list[str]], np.ndarray], threshold: float = 0.95,
                         ) -> list[tuple[int, int, float]]:
    """``(i, j, cosine)`` for each text ``j`` whose cosine to an earlier, kept text ``i`` is at
    least ``threshold`` (FAISS range search over L2-normalised embeddings; first occurrences are
    kept, so a chain of near-duplicates keeps only its first text)."""
    import faiss

    if not texts:
        return []
    emb = np.ascontiguousarray(encode(texts), dtype=np.float32)
    faiss.normalize_L2(emb)
    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(emb)
    lims, dist, ids = index.range_search(emb, float(threshold) - 1e-6)
    removed: set[int] = set()
    found = []
    for j in range(len(texts)):
        if j in removed:
            continue
        for k in range(lims[j], lims[j + 1]):
            other = int(ids[k])
            if other > j and other not in removed:
                removed.add(other)
                found.append((j, other, float(dist[k])))
    return sorted(found, key=lambda t: t[1])


def dedup_examples(examples: list[FlagExample], encode: Callable[[list[str]], np.ndarray], threshold: float = 0.95,
                   ) -> tuple[list[FlagExample], list[tuple[int, int, float]], BuildStats]:
    """Rows whose query (with its prompt) nearly duplicates an earlier row's: ``(kept rows,
    [(kept index, removed index, cosine)], stats)``."""
    stats = BuildStats("dedup", read=len(examples))
    pairs = find_near_duplicates([(e.prompt or "") + e.query for e in examples], encode, threshold)
    gone = {j for _, j, _ in pairs}
    kept = [e for i, e in enumerate(examples) if i not in gone]
    if gone:
        stats.dropped[f"near-duplicate queries (cosine >= {threshold:g})"] = len(gone)
    stats.written = len(kept)
    return kept, pairs, stats


def iter_examples(path: str | Path, on_error: OnError = "raise", report: SkipReport | None = None,
                  ) -> Iterable[FlagExample]:
    """FlagEmbedding rows of ``path`` (the input of ``dedup``)."""
    from embedray.data.flag import iter_flag_jsonl

    return iter_flag_jsonl(path, on_error, report)
