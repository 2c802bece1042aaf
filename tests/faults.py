"""Fault injection for the tests; the package has none.

``crash_at`` is an ``on_step`` hook of an in-process run that raises; ``kill_once_at`` is an ``on_step`` hook of the training loop, ``kill_refresher_once_at`` a
``before_publish`` hook of the refresher: each SIGKILLs its process once (a marker file
remembers it across Ray's restarts). Both are closures, so Ray ships them to its workers and
actors by value: no worker needs to import this module.

``python tests/faults.py --kill-teacher-at N RECIPE [key=value ...]`` runs ``embedray pipeline``
with rank 1 of the teacher killed once after step N (what a test submits with ``ray job submit``).
"""
from __future__ import annotations

import sys
from pathlib import Path


class Crash(RuntimeError):
    """What :func:`crash_at` raises."""


def crash_at(step: int):
    """An ``on_step`` hook of the training loop (in-process runs) that raises :class:`Crash` after
    ``step``: the run stops there as a crash would, its checkpoints left as written."""
    def hook(done, log):
        if done == step:
            raise Crash()
    return hook


def kill_once_at(step: int, marker: Path, rank: int = 1, pause_s: float = 3.0):
    """Rank ``rank`` SIGKILLs itself once, after ``step``; first it waits ``pause_s``, past Ray
    Train's 2 s checkpoint poll, so the kill exercises "resume from the last checkpoint" rather
    than "restart from scratch"."""
    marker = Path(marker)

    def hook(done, log):
        import os
        import signal
        import time

        import ray.train
        if done == step and ray.train.get_context().get_world_rank() == rank and not marker.exists():
            time.sleep(pause_s)
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
    return hook


def kill_refresher_once_at(nth: int, run_dir: Path):
    """The refresher SIGKILLs itself once, halfway through its ``nth`` refresh (counted from 1
    over the run; the preparation's pool v1 is not one), leaving what a crash leaves: a
    half-written index folder aside in ``indexes/``."""
    run_dir = Path(run_dir)

    def hook(step, version):
        import os
        import signal

        if step == 0:
            return
        counter = run_dir / ".refreshes"
        count = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(count))
        marker = run_dir / f".refresher-killed-{nth}"
        if count == nth and not marker.exists():
            marker.write_text(str(version))
            partial = run_dir / "indexes" / f".v{version}.tmp-killed"
            partial.mkdir(parents=True, exist_ok=True)
            (partial / "index.faiss").write_bytes(b"half an index")
            os.kill(os.getpid(), signal.SIGKILL)
    return hook


class KillTeacherRuntime:
    """:class:`embedray.cluster.train.RayRuntime` with rank 1 of the teacher run killed once."""

    def __init__(self, step: int):
        from embedray.cluster.train import RayRuntime
        self.inner, self.step = RayRuntime(), step

    def train(self, job, on_step=None):
        hooks = list(on_step or [])
        if job.cluster.run_name == "teacher":
            run_dir = Path(job.cluster.storage_path).expanduser().resolve() / job.cluster.run_name
            hooks.append(kill_once_at(self.step, run_dir / f".killed-at-{self.step}"))
        return self.inner.train(job, on_step=hooks)

    def call(self, label, fn, *args, cluster, run_dir):
        return self.inner.call(label, fn, *args, cluster=cluster, run_dir=run_dir)

    def check(self, jobs, cluster):
        return self.inner.check(jobs, cluster)


def main(argv: list[str]) -> int:
    from embedray.config import load_config
    from embedray.pipeline.config import PipelineConfig
    from embedray.pipeline.stages import Pipeline

    if len(argv) < 3 or argv[0] != "--kill-teacher-at":
        print("usage: tests/faults.py --kill-teacher-at N RECIPE [key=value ...]", file=sys.stderr)
        return 2
    cfg = load_config(PipelineConfig, argv[2], argv[3:])
    Pipeline(cfg, KillTeacherRuntime(int(argv[1]))).run_all()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
