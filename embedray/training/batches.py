"""Deterministic, length-bucketed batches of id-based training examples.

A batch is a pure function of (seed, micro-batch index, rank): resuming at any step, on any
restart of the worker group, yields exactly the batches an uninterrupted run would have seen, so
the checkpoint's "data cursor" is just the optimizer step.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

#: How a row's own negatives meet a mined pool (``train.given_negatives``).
GIVEN_NEGATIVES = ("fallback", "mix", "instead")


@dataclass(frozen=True)
class Example:
    """One training row: texts are looked up in the corpus, so a negative refresh only swaps ids."""

    query_id: str
    pos_id: str
    neg_ids: tuple[str, ...] = ()
    #: The row's own teacher scores of ``(pos_id, *neg_ids)`` (FlagEmbedding ``pos_scores`` /
    #: ``neg_scores``), for distillation with ``distill.score_source: data``; None when it has none.
    scores: tuple[float, ...] | None = None
    #: The class of ``pos_id``'s text (the classification objective; its rows have no query).
    label: str | None = None
    #: The task of a multi-task run the row belongs to (its ids carry the ``<task>::`` prefix).
    task: str = ""


@dataclass
class Batch:
    """The ids of one micro-batch on one worker: ``neg_ids[i]`` are the negatives of example ``i``."""

    query_ids: list[str]
    pos_ids: list[str]
    neg_ids: list[list[str]] = field(default_factory=list)


def canonical_order(examples: Sequence[Example]) -> list[Example]:
    """Sort and de-duplicate examples so every worker agrees on one order, whatever Ray Data's
    block order was."""
    return sorted(set(examples), key=lambda e: (e.task, e.query_id, e.pos_id, e.neg_ids, e.scores or (), e.label or ""))


class BatchPlan:
    """Maps a global micro-batch index to each rank's slice of examples.

    Each epoch is a seeded permutation; with ``bucket_batches > 1`` every run of
    ``bucket_batches`` global batches is sorted by document length before being cut, and the
    batches are then shuffled, so padding shrinks while the batch order stays random.
    """

    def __init__(self, examples: Sequence[Example], doc_lengths: Callable[[str], int] | np.ndarray, *,
                 batch_size: int, world_size: int, seed: int, bucket_batches: int = 1):
        """``doc_lengths``: a positive's length by document id, or each example's, precomputed."""
        self.examples = examples if isinstance(examples, Sequence) else list(examples)  # a store's view stays one
        self.batch_size, self.world_size, self.seed = batch_size, world_size, seed
        self.global_batch = batch_size * world_size
        if len(self.examples) < self.global_batch:
            raise ValueError(f"{len(self.examples)} training examples cannot fill one global batch of "
                             f"{self.global_batch} (batch_size {batch_size} × {world_size} workers)")
        self.batches_per_epoch = len(self.examples) // self.global_batch
        self.bucket_batches = bucket_batches
        self._lengths = (np.asarray(doc_lengths) if not callable(doc_lengths)
                         else np.array([doc_lengths(e.pos_id) for e in self.examples]))
        self._epoch_cache: tuple[int, np.ndarray] | None = None

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """(batches_per_epoch, global_batch) example indices for one epoch."""
        if self._epoch_cache and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(len(self.examples))[: self.batches_per_epoch * self.global_batch]
        if self.bucket_batches > 1:
            span = self.bucket_batches * self.global_batch
            chunks = [perm[i:i + span] for i in range(0, len(perm), span)]
            perm = np.concatenate([c[np.argsort(self._lengths[c], kind="stable")] for c in chunks])
        batches = perm.reshape(self.batches_per_epoch, self.global_batch)
        batches = batches[rng.permutation(self.batches_per_epoch)]
        self._epoch_cache = (epoch, batches)
        return batches

    def epoch_of(self, index: int) -> int:
        return index // self.batches_per_epoch

    def rank_indices(self, index: int, rank: int) -> np.ndarray:
        """Example indices of global micro-batch ``index`` for worker ``rank``."""
        row = self._epoch_order(self.epoch_of(index))[index % self.batches_per_epoch]
        return row[rank * self.batch_size:(rank + 1) * self.batch_size]


class NegativeSampler:
    """Chooses each example's hard negatives: from a mined pool, the row's own (given) ones, at
    random, or none; too few candidates are topped up with random corpus documents.

    ``given`` says how a row's own negatives meet a mined pool (mode ``pool``): ``fallback`` uses
    them only for a query the pool lacks, ``mix`` samples from both, ``instead`` prefers them.
    A given negative that is a judged positive of the query is never used.
    Choices depend only on (seed, micro-batch index, example), so they are reproducible.
    """

    def __init__(self, doc_ids: Sequence[str], positives: dict[str, set[str]], *,
                 num_negatives: int, mode: str, seed: int, given: str = "fallback",
                 queries: set[str] | None = None):
        if given not in GIVEN_NEGATIVES:
            raise ValueError(f"train.given_negatives: {given!r} is not one of {', '.join(GIVEN_NEGATIVES)}")
        self.doc_ids = doc_ids if isinstance(doc_ids, Sequence) else list(doc_ids)  # a store's view stays one
        self.queries = queries  # the queries this worker trains on (a shard): a pool keeps only theirs
        self.positives, self.k, self.mode, self.seed, self.given = positives, num_negatives, mode, seed, given
        self.pool: dict[str, list[str]] = {}
        self.scores: dict[str, dict[str, float]] = {}
        self.pool_version = 0

    def set_pool(self, negatives: dict[str, list[str]], version: int,
                 scores: dict[str, dict[str, float]] | None = None) -> None:
        """Switch to a newer pool (called at a step boundary); ``scores`` are its cross-encoder
        scores by query and document (positives included), for distillation."""
        if self.queries is not None:
            negatives = {q: v for q, v in negatives.items() if q in self.queries}
            scores = {q: v for q, v in (scores or {}).items() if q in self.queries}
        self.pool, self.pool_version, self.scores = negatives, version, scores or {}

    def sample(self, ex: Example, index: int, slot: int) -> list[str]:
        if self.k == 0 or self.mode == "none":
            return []
        rng = np.random.default_rng([self.seed, index, slot, 7])
        cands = self.candidates(ex)
        if cands:
            if len(cands) >= self.k:
                return [cands[i] for i in rng.choice(len(cands), self.k, replace=False)]
            return list(cands) + self._random(ex, rng, self.k - len(cands), exclude=set(cands))
        return self._random(ex, rng, self.k, exclude=set())

    def candidates(self, ex: Example) -> list[str]:
        """The hard negatives ``ex`` samples from (before any random top-up)."""
        if self.mode not in ("pool", "given"):
            return []
        judged = self.positives.get(ex.query_id, {ex.pos_id})
        given = [d for d in ex.neg_ids if d not in judged]
        if self.mode == "given":
            return given
        mined = list(self.pool.get(ex.query_id) or [])
        if self.given == "mix":
            return list(dict.fromkeys(mined + given))
        return (given or mined) if self.given == "instead" else (mined or given)

    def _random(self, ex: Example, rng: np.random.Generator, n: int, exclude: set[str]) -> list[str]:
        banned = self.positives.get(ex.query_id, {ex.pos_id}) | exclude
        out: list[str] = []
        while len(out) < n:
            cand = self.doc_ids[int(rng.integers(len(self.doc_ids)))]
            if cand not in banned and cand not in out:
                out.append(cand)
        return out
