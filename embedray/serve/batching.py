"""Token-budget batching: split requests into parts, group texts of similar length.

``@serve.batch`` (in ``embedray/cluster/serve_app.py``) groups *calls*; with
``batch_size_fn=batch_tokens`` its ``max_batch_size`` becomes a token budget. This module is the
part no library does for us (TEI and infinity do it in Rust / their own queue):

* :func:`split_by_token_budget` cuts one request into :class:`Part` s that each fit the budget,
  so an oversized request is split, never refused (TEI #378), and memory stays bounded
  (infinity #517);
* :func:`padded_chunks` sorts the texts of one batch by length and cuts them into forward
  passes whose *padded* size (rows x longest row) fits the budget and wastes little on padding;
* :func:`reassemble` puts the parts' results back in request order;
* :class:`ModelRunQueue` merges batches that wait for the model into one run.

Everything here is plain Python, testable without Ray or a model.
"""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Part:
    """A slice of one request that fits the token budget.

    Attributes:
        texts: the texts of this part.
        lengths: their token counts (special tokens included, after truncation).
        index: positions of ``texts`` in the original request.
    """

    texts: list[str]
    lengths: list[int]
    index: list[int] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(self.lengths)


def batch_tokens(parts: Sequence[Part]) -> int:
    """The size of a batch of parts for ``@serve.batch(batch_size_fn=...)``: their total tokens."""
    return sum(p.tokens for p in parts)


def split_by_token_budget(texts: Sequence[str], lengths: Sequence[int], budget: int) -> list[Part]:
    """Cut a request into parts of at most ``budget`` tokens each.

    Texts are grouped by length (shortest first) so that each part pads little; the
    original positions travel in ``Part.index``.

    Args:
        texts: the request's texts.
        lengths: token count of each text; each must be ``<= budget``.
        budget: most tokens in one part.

    Returns:
        Parts covering every text exactly once (empty list for no texts).

    Raises:
        ValueError: a single text longer than ``budget`` (the server makes the budget at least
            the model's max sequence length, so this means a caller skipped truncation).
    """
    if len(texts) != len(lengths):
        raise ValueError(f"{len(texts)} texts but {len(lengths)} lengths")
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    parts: list[Part] = []
    current = Part([], [], [])
    for i in order:
        if lengths[i] > budget:
            raise ValueError(f"text {i} has {lengths[i]} tokens, more than the batch budget {budget}")
        if current.texts and current.tokens + lengths[i] > budget:
            parts.append(current)
            current = Part([], [], [])
        current.texts.append(texts[i])
        current.lengths.append(lengths[i])
        current.index.append(i)
    if current.texts:
        parts.append(current)
    return parts


#: Fixed cost of one forward pass, in tokens: a MiniLM forward on CPU costs about 25 ms plus
#: 0.5 ms per (padded) token, so a new pass pays off once merging would pad ~50 tokens more.
PASS_OVERHEAD_TOKENS = 48


def padded_chunks(lengths: Sequence[int], budget: int,
                  overhead_tokens: int = PASS_OVERHEAD_TOKENS) -> list[list[int]]:
    """Sort positions by length and cut them into forward passes that pad little.

    A pass costs its padded size, ``len(chunk) * max(length in chunk)`` tokens, plus a fixed
    ``overhead_tokens``. Walking the lengths in ascending order, a text starts a new pass when
    adding it would exceed ``budget`` or would pad the pass's rows by more than
    ``overhead_tokens`` (one short query beside a long document must not make every row long).
    A single row longer than the budget still gets a pass of its own.

    Returns:
        Lists of positions into ``lengths``; every position appears exactly once.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    chunks: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Sorted ascending, so lengths[i] becomes the pass's longest row once added.
        n, new = len(current), lengths[i]
        if current and ((n + 1) * new > budget or n * (new - lengths[current[-1]]) > overhead_tokens):
            chunks.append(current)
            current = []
        current.append(i)
    if current:
        chunks.append(current)
    return chunks


def reassemble(parts: Sequence[Part], results: Sequence[Any], n: int) -> np.ndarray:
    """Put per-part result rows back in request order.

    Args:
        parts: the parts from :func:`split_by_token_budget`.
        results: one ``(len(part.texts), dim)`` array per part.
        n: number of texts in the request.

    Returns:
        ``(n, dim)`` array, row ``i`` for text ``i``.
    """
    if not parts:
        return np.zeros((0, 0), dtype=np.float32)
    dim = np.asarray(results[0]).shape[1]
    out = np.empty((n, dim), dtype=np.float32)  # (n, dim)
    filled = 0
    for part, rows in zip(parts, results, strict=True):
        rows = np.asarray(rows, dtype=np.float32)
        if rows.shape[0] != len(part.index):
            raise ValueError(f"a part of {len(part.index)} texts came back with {rows.shape[0]} rows")
        out[part.index] = rows
        filled += len(part.index)
    if filled != n:
        raise ValueError(f"parts cover {filled} texts, expected {n}")
    return out


class QueueTimeout(TimeoutError):
    """A part waited longer than the queue timeout for the model to take it."""


@dataclass
class _Pending:
    parts: list[Part]
    future: asyncio.Future
    taken: bool = False


class ModelRunQueue:
    """Runs the model on batches of parts one run at a time, merging the batches that queue up.

    ``@serve.batch`` closes a batch on its timer (``batch_wait_timeout_s``), not when the model
    becomes free: while one forward pass runs for 100 ms, it keeps forming 5 ms batches of one
    or two texts that then wait their turn. Submitting every batch here instead (with
    ``max_concurrent_batches`` > 1) lets the next run take everything that has queued up, up to
    ``max_tokens``: at low load a request waits only the batch timer, under load the model runs
    full batches.

    Args:
        fn: ``fn(parts) -> list of per-part results``; called in a worker thread.
        max_tokens: most tokens merged into one run (a single larger batch still runs alone).
        queue_timeout_s: longest a batch waits to be taken by a run before :class:`QueueTimeout`
            (``None``: no limit). Once taken, a batch runs to the end.
    """

    def __init__(self, fn: Callable[[list[Part]], list[Any]], max_tokens: int,
                 queue_timeout_s: float | None = None):
        self.fn, self.max_tokens, self.queue_timeout_s = fn, max_tokens, queue_timeout_s
        self._queue: deque[_Pending] = deque()
        self._worker: asyncio.Task | None = None

    async def submit(self, parts: list[Part]) -> tuple[list[Any], dict[str, int] | None]:
        """Run ``parts`` (in a merged run); returns their results and, for exactly one submitter
        of each run, the run's size ``{"texts", "tokens"}`` (``None`` for the others).

        Raises:
            QueueTimeout: no run took ``parts`` within ``queue_timeout_s``.
        """
        pending = _Pending(list(parts), asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        try:
            if self.queue_timeout_s is not None:
                await asyncio.wait([pending.future], timeout=self.queue_timeout_s)
                if not pending.taken and not pending.future.done():
                    pending.future.cancel()  # the drain passes over it
                    raise QueueTimeout(f"waited {self.queue_timeout_s:g} s for the model")
            return await pending.future
        except asyncio.CancelledError:  # the request was cancelled: don't run it for nobody
            pending.future.cancel()
            raise

    async def _drain(self) -> None:
        while self._queue:
            taken, tokens = [], 0
            while self._queue and (not taken or tokens + batch_tokens(self._queue[0].parts) <= self.max_tokens):
                pending = self._queue.popleft()
                if pending.future.done():  # the caller went away
                    continue
                pending.taken = True
                taken.append(pending)
                tokens += batch_tokens(pending.parts)
            if not taken:
                continue
            merged = [p for pending in taken for p in pending.parts]
            try:
                results = await asyncio.to_thread(self.fn, merged)
            except Exception as e:  # every caller of this run gets the error
                for pending in taken:
                    if not pending.future.done():
                        pending.future.set_exception(e)
                continue
            stats = {"texts": sum(len(p.texts) for p in merged), "tokens": tokens}
            start = 0
            for pending in taken:
                if not pending.future.done():
                    pending.future.set_result((results[start:start + len(pending.parts)], stats))
                    stats = None  # reported once per run
                start += len(pending.parts)
