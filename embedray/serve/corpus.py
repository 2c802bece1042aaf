"""The corpus behind ``/search``: loading it, its FAISS index, and highlighted snippets."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedray.data.beir import Document, beir_file, iter_corpus

log = logging.getLogger(__name__)

# Words too common to be worth highlighting.
_STOPWORDS = frozenset(
    "a an and are as at be by for from has have how i in is it its of on or that the this to was "
    "what when where which who why will with you your".split())
_WORD = re.compile(r"\w+", re.UNICODE)


def load_corpus(path: str | Path) -> list[Document]:
    """Read a corpus: a BEIR folder (its ``corpus.jsonl`` or ``corpus.parquet``), or a JSONL or
    Parquet file of ``{_id, title, text}``.

    Raises:
        DataError: a malformed row (file:line: field), including duplicate ids.
        ValueError: the path holds no corpus or the corpus is empty.
    """
    path = Path(path).expanduser().resolve()
    file = beir_file(path, "corpus") if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"{path}: no corpus here (expected a BEIR folder with corpus.jsonl or "
                         "corpus.parquet, or a .jsonl / .parquet file of {_id, title, text})")
    docs = list(iter_corpus(file))
    if not docs:
        raise ValueError(f"{file}: the corpus is empty")
    return docs


def has_index(path: str | Path) -> bool:
    """Whether ``path`` holds a saved index (a ``VectorIndex`` folder or an ``IndexStore`` root)."""
    path = Path(path).expanduser()
    return (path / "meta.json").is_file() or (path / "LATEST").is_file()


def load_index(path: str | Path, docs: list[Document], dim: int, model: str | None = None,
               doc_prompt: str | None = None):
    """Load a saved index (a ``VectorIndex`` folder or an ``IndexStore`` root with ``LATEST``).

    The index must have been built with the served model over this corpus: its ids must all be
    corpus ids, its dimension the model's and, where its ``meta.json`` records them (every index
    embedray builds does), the weights it was encoded with must be ``model`` (a weights
    fingerprint; a precision suffix such as ``.bf16`` is ignored) and its document prompt
    ``doc_prompt``. An index from other weights (e.g. a refresher's, of a training snapshot) has
    the right shape and would return wrong rankings without an error.
    """
    from embedray.mining.index import IndexStore, VectorIndex

    path = Path(path).expanduser().resolve()
    index = IndexStore(path).latest(use_gpu=False) if (path / "LATEST").is_file() \
        else VectorIndex.load(path, use_gpu=False)
    if index is None:
        raise ValueError(f"{path}: no published index")
    if index.dim != dim:
        raise ValueError(f"{path}: index dimension {index.dim} != model dimension {dim}; "
                         "was it built with another model?")
    known = {d.id for d in docs}
    unknown = [i for i in index.ids if i not in known]
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} index ids are not in the corpus (e.g. {unknown[0]!r})")
    recorded = index.meta.get("model")
    fix = ("give --index a new folder instead: the server builds an index for this model at its first "
           "start, saves it there and loads it at the next")
    if model is not None and recorded is not None and recorded.split(".")[0] != model.split(".")[0]:
        raise ValueError(f"{path}: built with other weights (fingerprint {recorded[:12]}…) than the served "
                         f"model's ({model[:12]}…), e.g. a training snapshot's: its rankings would not match "
                         f"this model's queries; {fix}")
    if recorded is not None and doc_prompt is not None and index.meta.get("doc_prompt", "") != doc_prompt:
        raise ValueError(f"{path}: its documents were encoded with the prompt {index.meta.get('doc_prompt', '')!r}, "
                         f"the served model's document prompt is {doc_prompt!r}; {fix}")
    if recorded is None:
        log.warning("%s records no model it was built with: served unchecked (it must come from the "
                    "served model's weights)", path)
    return index


@dataclass
class Hit:
    """One search result."""

    id: str
    score: float
    title: str
    text: str


class CorpusIndex:
    """Documents and their embeddings in an inner-product FAISS index (exact by default).

    Args:
        docs: the corpus.
        embeddings: ``(len(docs), dim)`` float32, normalized for cosine similarity.
        index: an already built ``VectorIndex`` to use instead of building one.
        index_type: ``flat``, ``int8`` or ``binary`` (see :mod:`embedray.mining.index`) for an
            index built from ``embeddings``.
    """

    def __init__(self, docs: list[Document], embeddings: np.ndarray | None = None, index=None,
                 index_type: str = "flat"):
        from embedray.mining.index import VectorIndex

        self.docs = {d.id: d for d in docs}
        if index is None:
            if embeddings is None:
                raise ValueError("CorpusIndex needs embeddings or a built index")
            index = VectorIndex.build(np.asarray(embeddings, dtype=np.float32), [d.id for d in docs],
                                      factory="Flat", metric="ip", use_gpu=False, index_type=index_type)
        self.index = index

    @property
    def index_type(self) -> str:
        """The served index's type: ``flat``, ``int8`` or ``binary``."""
        return self.index.index_type

    def __len__(self) -> int:
        return len(self.index)

    def search(self, query: np.ndarray, k: int) -> list[Hit]:
        """Top-``k`` documents for one ``(dim,)`` query vector, best first."""
        scores, ids = self.index.search(np.asarray(query, dtype=np.float32)[None, :], k)  # (1, k)
        return [Hit(i, float(s), self.docs[i].title, self.docs[i].text) for i, s in zip(ids[0], scores[0])]


#: Most query terms highlighted: a query's first distinct terms are the ones a reader looks for,
#: and the cap keeps highlighting linear in the text whatever the query's size.
MAX_HIGHLIGHT_TERMS = 32


def query_terms(query: str, limit: int = MAX_HIGHLIGHT_TERMS) -> list[str]:
    """The first ``limit`` distinct lower-cased words of ``query`` worth highlighting
    (no stopwords, 2+ characters)."""
    seen: dict[str, None] = {}
    for m in _WORD.finditer(query.lower()):
        w = m.group()
        if len(w) >= 2 and w not in _STOPWORDS:
            seen.setdefault(w, None)
            if len(seen) >= limit:
                break
    return list(seen)


def find_highlights(text: str, terms: list[str]) -> list[tuple[int, int]]:
    """Character spans of whole words in ``text`` that start with one of ``terms``.

    Prefix matching lets ``index`` highlight ``indexing``; spans are sorted and disjoint. Each
    word is looked up once per distinct term length, so the work is linear in ``text``.
    """
    if not terms:
        return []
    wanted, lengths = set(terms), sorted({len(t) for t in terms})
    spans = []
    for m in _WORD.finditer(text.lower()):
        word = m.group()
        if any(word[:n] in wanted for n in lengths if n <= len(word)):
            spans.append((m.start(), m.end()))
    return spans


def make_snippet(text: str, query: str | list[str], width: int) -> tuple[str, list[tuple[int, int]]]:
    """A window of about ``width`` characters of ``text`` around the first query-term match.

    Args:
        text: the document text.
        query: the query, or its :func:`query_terms` (computed once per request by the caller).
        width: snippet length in characters.

    Returns:
        ``(snippet, spans)``: the snippet (with ``…`` where text was cut) and the character spans
        within it to highlight.
    """
    terms = query_terms(query) if isinstance(query, str) else query
    spans = find_highlights(text, terms)
    if len(text) <= width:
        return text, spans
    start = max(0, spans[0][0] - width // 4) if spans else 0
    if start > 0:  # begin at a word boundary
        space = text.rfind(" ", 0, start)
        start = space + 1 if space >= 0 and start - space < 20 else start
    end = min(len(text), start + width)
    if end < len(text):
        space = text.rfind(" ", start, end)
        end = space if space > start + width // 2 else end
    prefix = "…" if start > 0 else ""
    suffix = "…" if end < len(text) else ""
    snippet = prefix + text[start:end] + suffix
    shift = len(prefix) - start
    inside = [(a + shift, b + shift) for a, b in spans if a >= start and b <= end]
    return snippet, inside
