"""Several tasks in one run: merged data with task-prefixed ids, and which task each batch is.

Each task keeps its own corpus, queries and judgements; merged, its ids are prefixed with
``<task>::`` so that one :class:`~embedray.training.data.TrainingData` serves every lookup of the
loop and ids of two tasks never meet. Every batch holds one task's rows (in-batch negatives from
another task would be trivially easy or falsely negative), drawn by :class:`TaskSchedule`: a pure
function of (seed, batch index), so the task cursor after a resume is the one an uninterrupted
run has, and each task walks its own epochs (its own :class:`~embedray.training.batches.BatchPlan`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from embedray.data.errors import SkipReport
from embedray.training.batches import Example
from embedray.training.data import TrainingData, load_training_data, training_examples

SEP = "::"


def prefixed(task: str, id_: str) -> str:
    """The merged data's id of a task's own id."""
    return f"{task}{SEP}{id_}"


def unprefixed(id_: str) -> str:
    """A task's own id of a merged id (a single-task id is returned as it is)."""
    return id_.split(SEP, 1)[1] if SEP in id_ else id_


def load_tasks(tasks, rows: bool = True) -> tuple[TrainingData, dict[str, TrainingData], list[Example]]:
    """Read every task's data and (``rows``) its training rows.

    Returns:
        ``(merged, per_task, examples)``: the merged data (prefixed ids, no dev split), each
        task's own data (its ids, its dev split) by name, and every task's examples with prefixed
        ids and ``task`` set. Bad rows raise ``file:line`` or are counted in ``merged.report``.
    """
    merged = TrainingData({}, {}, {}, None, SkipReport())
    per_task: dict[str, TrainingData] = {}
    examples: list[Example] = []
    for t in tasks:
        data = load_training_data(t.data)
        own = training_examples(t.data, data, data.report) if rows else []
        per_task[t.name] = data
        merged.corpus.update({prefixed(t.name, k): v for k, v in data.corpus.items()})
        merged.queries.update({prefixed(t.name, k): v for k, v in data.queries.items()})
        merged.positives.update({prefixed(t.name, q): {prefixed(t.name, d) for d in ds}
                                 for q, ds in data.positives.items()})
        merged.report.merge(data.report)
        examples.extend(replace(e, task=t.name, query_id=prefixed(t.name, e.query_id) if e.query_id else "",
                                pos_id=prefixed(t.name, e.pos_id),
                                neg_ids=tuple(prefixed(t.name, n) for n in e.neg_ids)) for e in own)
    return merged, per_task, examples


class TaskSchedule:
    """The task of every micro-batch of a run, and that task's own batch counter (its cursor).

    ``weighted``: each micro-batch's task is drawn with probability proportional to ``weights``
    from a generator seeded by ``seed``; ``round_robin``: the tasks in turn. One task: always it,
    its cursor the global index (a single-task run is unchanged).
    """

    def __init__(self, weights: Sequence[float], seed: int, sampling: str, total: int):
        n = len(weights)
        if n == 1:
            self.task = np.zeros(total, dtype=np.int64)
        elif sampling == "round_robin":
            self.task = np.arange(total, dtype=np.int64) % n
        elif sampling == "weighted":
            p = np.asarray(weights, dtype=np.float64)
            self.task = np.random.default_rng([seed, 23]).choice(n, size=total, p=p / p.sum())
        else:
            raise ValueError(f"train.task_sampling: {sampling!r} is not weighted or round_robin")
        self.cursor = np.empty(total, dtype=np.int64)
        for t in range(n):
            where = np.flatnonzero(self.task == t)
            self.cursor[where] = np.arange(len(where))
        self.n = n

    def at(self, index: int) -> tuple[int, int]:
        """``(task number, the task's own batch index)`` of global micro-batch ``index``."""
        return int(self.task[index]), int(self.cursor[index])

    def cursors(self, done: int) -> list[int]:
        """Batches each task has trained on after ``done`` micro-batches (the checkpointed cursor)."""
        return [int((self.task[:done] == t).sum()) for t in range(self.n)]


def task_prompts(tasks) -> dict[str, str]:
    """Each task's instructions as the exported model's named prompts: ``<task>-query`` (the text
    before a classification task's texts, too) and ``<task>-document`` for a retrieval task."""
    out: dict[str, str] = {}
    for t in tasks or []:
        out[f"{t.name}-query"] = t.query_prompt or ""
        if t.loss.name != "classification":
            out[f"{t.name}-document"] = t.doc_prompt or ""
    return out
