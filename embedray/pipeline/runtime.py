"""Where a training job runs: the :class:`Runtime` protocol and the in-process one.

The pipeline's stages and ``embedray train`` hand a :class:`TrainJobConfig` to a runtime and
get the training summary back. :class:`LocalRuntime` runs the loop in this process, without
Ray (debugging, small runs, tests); :class:`embedray.cluster.train.RayRuntime` runs it on Ray
Train with the refresher as an actor. Both write the same outputs and follow the same resume
rules, the pattern :mod:`embedray.training.session` follows one level down.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from embedray.config import to_dict
from embedray.pipeline.evaluation import DevEvaluation, TaskDevEvaluation
from embedray.pipeline.refresh import refresh_hooks_in_process
from embedray.training.data import load_training_data, training_examples
from embedray.training.loop import Hooks, train
from embedray.training.session import LocalSession
from embedray.training.tasks import load_tasks

#: ``callback(step, log)`` run after each optimizer step (:attr:`Hooks.on_step`).
OnStep = Callable[[int, Any], None]


class Runtime(Protocol):
    """Where a pipeline's work runs: ``train`` runs (or resumes) one training job and returns its
    summary (``training_summary_report.json``); ``call`` runs one piece of stage work (an
    evaluation, the student's rotation) with the resources of ``cluster`` (``stage_cpus``,
    ``stage_gpus``, ``stage_resources``), names it ``label`` in the run's placement records
    under ``run_dir``, and returns what ``fn(*args)`` returns."""

    def train(self, job, on_step: list[OnStep] | None = None) -> dict: ...

    def call(self, label: str, fn: Callable, *args, cluster, run_dir: Path) -> Any: ...

    def check(self, jobs: dict[str, Any], cluster) -> None:
        """Raise ``ValueError`` now, before any stage runs, for what this runtime cannot place:
        each training stage's job (``jobs``: stage → job) and the stage work of ``cluster``."""


class LocalRuntime:
    """The loop in this process: one worker, refreshes inline at their snapshot steps; stage work
    in this process too."""

    def train(self, job, on_step: list[OnStep] | None = None) -> dict:
        return run_local(job, on_step=on_step)

    def call(self, label: str, fn: Callable, *args, cluster, run_dir: Path) -> Any:
        return fn(*args)

    def check(self, jobs: dict[str, Any], cluster) -> None:
        """Nothing to place: everything runs in this process."""


def run_local(job, hooks: Hooks | None = None, on_step: list[OnStep] | None = None) -> dict:
    """Train ``job`` in one process; same outputs and resume rules as the Ray run."""
    run_dir = Path(job.cluster.storage_path).expanduser().resolve() / job.cluster.run_name
    data, per_task, examples = job_data(job)  # the summary reports data.report
    if data.report.total:
        print(f"[embedray] data: {data.report.summary()}", flush=True)
    session = LocalSession(run_dir, examples, job.cluster.num_to_keep)
    if hooks is None:
        hooks = refresh_hooks_in_process(job, data, run_dir, per_task) if job.refresh.mode != "off" else Hooks()
    hooks.on_step.extend(on_step or [])
    return train_job(job, session, data, run_dir, hooks, per_task)


def job_data(job) -> tuple:
    """``(data, per_task, examples)`` of a train job: its data and rows, or (``tasks``) every task's
    merged under ``<task>::`` ids, each task's own data by name, and all their rows."""
    if job.tasks:
        return load_tasks(job.tasks)
    data = load_training_data(job.data)
    return data, None, training_examples(job.data, data, data.report)


def train_job(job, session, data, run_dir: Path, hooks: Hooks, per_task: dict | None = None) -> dict:
    """The loop on one worker for ``job``: its own sections, dev evaluation through the run's
    cache, and the whole job saved with the final model (the same call on Ray Train's workers)."""
    if job.tasks:
        if hooks.evaluate is None and per_task is not None and (dev := TaskDevEvaluation(job, per_task)):
            hooks.evaluate = dev
    elif data.dev is not None and hooks.evaluate is None:
        hooks.evaluate = DevEvaluation(job, data, run_dir)
    return train(job.model, job.loss, job.train, session, data, run_dir, hooks, distill=job.distill,
                 card=to_dict(job), tasks=job.tasks)
