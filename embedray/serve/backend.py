"""What the HTTP layer needs from the model side, and an in-process implementation.

The app (:mod:`embedray.serve.app`) talks to a :class:`Backend`. On Ray Serve that is
``RayBackend`` in ``embedray/cluster/serve_app.py`` (deployment handles, ``@serve.batch``);
:class:`LocalBackend` runs the same cores in this process, one part at a time, for tests and
for debugging without a cluster.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from embedray.serve.batching import ModelRunQueue, Part
from embedray.serve.corpus import Hit


@dataclass
class Encoded:
    """The embeddings of one part, and the size of the batch it ran in.

    Attributes:
        rows: ``(len(part.texts), dim)`` float32.
        batch: ``{"texts": n, "tokens": t}`` of the batch, set on exactly one part of each batch
            (so that metrics count every batch once); ``None`` on the others.
    """

    rows: np.ndarray
    batch: dict[str, int] | None = None


class Backend(Protocol):
    """The model side of the server."""

    async def describe(self) -> dict[str, Any]:
        """``dim``, ``max_seq_length``, ``normalized``, ``corpus_size``, ``index_type``, ``max_batch_tokens``,
        ``reranker`` (name or ``None``), ``reranker_max_length``."""

    async def embed_part(self, part: Part) -> Encoded:
        """Embed one part (at most the token budget); may raise ``ApiError`` (e.g. 503)."""

    async def search(self, part: Part, k: int) -> tuple[list[Hit], Encoded]:
        """Embed a one-text part and return the top-``k`` corpus hits."""

    async def rerank(self, query: str, texts: list[str], truncate: bool) -> dict[str, Any]:
        """``{"scores": [...]}``, or ``{"too_long": [indices], "max_length": n}``."""


def rerank_or_report(core, query: str, texts: list[str], truncate: bool) -> dict[str, Any]:
    """Score with a :class:`RerankerCore`, or report the pairs over its max length."""
    if not truncate:
        too_long = core.too_long(query, texts)
        if too_long:
            return {"too_long": too_long, "max_length": core.max_length}
    return {"scores": core.score(query, texts)}


class LocalBackend:
    """In-process backend: an ``EmbedderCore`` (and optional ``RerankerCore``). Parts that arrive
    while the model is busy are merged into its next run (:class:`ModelRunQueue`); the model
    runs in a worker thread, one run at a time."""

    def __init__(self, embedder, reranker=None, reranker_name: str | None = None,
                 queue_timeout_s: float | None = None):
        self.embedder, self.reranker, self.reranker_name = embedder, reranker, reranker_name
        self.runs = ModelRunQueue(embedder.encode_parts, embedder.max_batch_tokens, queue_timeout_s)
        self._lock = asyncio.Lock()

    async def describe(self) -> dict[str, Any]:
        info = self.embedder.describe()
        info["reranker"] = self.reranker_name if self.reranker is not None else None
        info["reranker_max_length"] = self.reranker.max_length if self.reranker is not None else None
        return info

    async def embed_part(self, part: Part) -> Encoded:
        (rows,), stats = await self.runs.submit([part])
        return Encoded(rows, stats)

    async def search(self, part: Part, k: int) -> tuple[list[Hit], Encoded]:
        enc = await self.embed_part(part)
        return self.embedder.search(enc.rows[0], k), enc

    async def rerank(self, query: str, texts: list[str], truncate: bool) -> dict[str, Any]:
        if self.reranker is None:
            raise RuntimeError("no cross-encoder is served")
        async with self._lock:
            return await asyncio.to_thread(rerank_or_report, self.reranker, query, texts, truncate)
