"""Where the stages of a Ray run go: resource requests from the config, ``auto`` resolved against
what the cluster has, checked up front, and recorded where each process actually ran.

- :func:`resolve` turns ``cluster.use_gpu: auto`` and ``refresh.num_gpus: auto`` into numbers
  from ``ray.cluster_resources()``;
- :func:`check_fits` fails at once, naming the resource and the settings, when the requests
  exceed the cluster (Ray Train would otherwise wait for its worker group forever);
- :func:`where` is what a worker or actor reports about itself (node, GPUs, custom resources,
  CPU priority), :func:`record` writes it under the run's ``placement/`` and :func:`collect` merges the
  reports into ``placement.json``.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from embedray.atomic import write_json_atomic

PLACEMENT_DIR = "placement"
PLACEMENT_FILE = "placement.json"


def _refreshing(job) -> bool:
    return job.refresh.mode in ("async", "sync")


def resolve(job, have: dict[str, float]):
    """A copy of ``job`` with ``cluster.use_gpu`` and ``refresh.num_gpus`` as numbers.

    ``use_gpu: auto`` is on when the cluster has a GPU for every training worker; the refresher's
    ``num_gpus: auto`` is 1 when a whole GPU is left after the workers', else 0 (a ``static`` run's
    refresher mines pool v1 before the workers start and is gone before they do: 1 when the
    cluster has a GPU).
    """
    job = copy.deepcopy(job)
    gpus = have.get("GPU", 0.0)
    if job.cluster.use_gpu == "auto":
        job.cluster.use_gpu = gpus >= job.cluster.num_workers
    if job.refresh.num_gpus == "auto":
        left = gpus - (job.cluster.num_workers if job.cluster.use_gpu else 0)
        alone = job.refresh.mode == "static" and gpus >= 1
        job.refresh.num_gpus = 1.0 if (_refreshing(job) and left >= 1) or alone else 0.0
    return job


def worker_resources(job) -> dict[str, float]:
    """One training worker's request (``resources_per_worker`` of Ray Train's ``ScalingConfig``)."""
    return {"CPU": job.cluster.cpus_per_worker, **({"GPU": 1.0} if job.cluster.use_gpu is True else {}),
            **job.cluster.resources_per_worker}


def refresher_gpus(job) -> tuple[float, float]:
    """``(the refresher actor's GPUs, its Ray Data encoder's)``. With ``refresh.ray_data_encode``
    the two split ``refresh.num_gpus`` in half and share a GPU: the actor holds its share while
    the encoder runs, so an encoder asking for the whole of it would wait forever for the GPU its
    own refresher holds."""
    return _shared_with_encoder(job, float(job.refresh.num_gpus) if job.refresh.num_gpus != "auto" else 0.0)


def refresher_cpus(job) -> tuple[float, float]:
    """``(the refresher actor's CPUs, its Ray Data encoder's)``: ``refresh.num_cpus`` split in half
    with ``refresh.ray_data_encode``, as :func:`refresher_gpus` splits GPUs, so the two together ask
    for what the run's resource check counted; an encoder asking for the whole of it on top of the
    actor's share could wait for CPUs the cluster never frees while the trainers run."""
    return _shared_with_encoder(job, float(job.refresh.num_cpus))


def _shared_with_encoder(job, amount: float) -> tuple[float, float]:
    """``amount`` split in half between the refresher actor and its Ray Data encoder, or all the actor's."""
    return (amount / 2, amount / 2) if job.refresh.ray_data_encode and amount else (amount, 0.0)


def refresher_resources(job) -> dict[str, float]:
    """The refresher's request (its actor's and its Ray Data encoder's CPUs and GPUs together)."""
    gpus = job.refresh.num_gpus if job.refresh.num_gpus != "auto" else 0.0
    return {"CPU": job.refresh.num_cpus, **({"GPU": gpus} if gpus else {}), **job.refresh.resources}


def check_fits(job, have: dict[str, float]) -> None:
    """Raise ``ValueError`` naming each resource the run's requests exceed in ``have``: the
    workers and an ``async``/``sync`` refresher together, a ``static`` run's refresher (which mines
    pool v1 before the workers start) on its own.

    The check is on the cluster's totals; a request larger than any one node still waits, which
    Ray reports as an unschedulable task in its logs.
    """
    need: dict[str, float] = {}
    parts: dict[str, list[str]] = {}

    def add(requests: dict[str, float], times: int = 1, workers: bool = False) -> None:
        for key, amount in requests.items():
            need[key] = need.get(key, 0.0) + amount * times
            if workers:
                setting = {"CPU": f"cluster.cpus_per_worker {amount:g}", "GPU": "cluster.use_gpu"}.get(
                    key, f"cluster.resources_per_worker.{key} {amount:g}")
                parts.setdefault(key, []).append(f"cluster.num_workers {times} × {setting}")
            else:
                setting = {"CPU": "refresh.num_cpus", "GPU": "refresh.num_gpus"}.get(key, f"refresh.resources.{key}")
                parts.setdefault(key, []).append(f"{setting} {amount:g}")

    add(worker_resources(job), job.cluster.num_workers, workers=True)
    if _refreshing(job):
        add(refresher_resources(job))
    short = [key for key, amount in need.items() if amount > have.get(key, 0.0) + 1e-9]
    if job.refresh.mode == "static":
        alone = {k: v for k, v in refresher_resources(job).items() if v > have.get(k, 0.0) + 1e-9 and k not in short}
        for key in alone:  # named alone: the workers do not run beside it
            need.pop(key, None), parts.pop(key, None)
        add(alone)
        short += list(alone)
    if not short:
        return
    lines = [f"{key}: this run needs {need[key]:g} ({' + '.join(parts[key])}) but the Ray cluster has "
             f"{have.get(key, 0.0):g}" for key in short]
    fix = {"CPU": "lower cluster.cpus_per_worker (fractions work) or add nodes",
           "GPU": "set cluster.use_gpu / refresh.num_gpus lower, or add GPU nodes"}
    hints = [fix.get(key, f"start a node with ray start --resources '{{\"{key}\": N}}', or drop the request")
             for key in short]
    raise ValueError("the Ray cluster cannot place this run:\n  " + "\n  ".join(lines)
                     + "\n  (" + "; ".join(hints) + ")")


def where() -> dict[str, Any]:
    """Where the calling Ray worker or actor runs: node IP and id, assigned GPU ids, the custom
    resources of its node, and the CPU priority of its process's most favoured thread (its nice
    value, and ``scheduler: idle`` when every thread runs under ``SCHED_IDLE``)."""
    import ray

    ctx = ray.get_runtime_context()
    node = ctx.get_node_id()
    info = next((n for n in ray.nodes() if n.get("NodeID") == node), {})
    custom = {k: v for k, v in (info.get("Resources") or {}).items()
              if k not in ("CPU", "GPU", "memory", "object_store_memory") and not k.startswith("node:")}
    return {"node_ip": info.get("NodeManagerAddress"), "node_id": node,
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "node_resources": custom,
            **priority()}  # Ray sets its workers' main thread to RAY_worker_niceness (15 by default)


def _threads() -> list[int]:
    """Ids of this process's threads (Linux schedules each on its own); ``[0]``, the caller, elsewhere."""
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


def priority() -> dict[str, Any]:
    """``niceness``: the lowest nice value among this process's threads; ``scheduler``: ``idle``
    when all of them run under ``SCHED_IDLE``, else ``normal``."""
    nice, idle = [], []
    for tid in _threads():
        try:
            nice.append(os.getpriority(os.PRIO_PROCESS, tid))
            idle.append(hasattr(os, "SCHED_IDLE") and os.sched_getscheduler(tid) == os.SCHED_IDLE)
        except OSError:  # the thread ended meanwhile
            continue
    return {"niceness": min(nice, default=os.nice(0)), "scheduler": "idle" if idle and all(idle) else "normal"}


def yield_cpu(niceness: int | str) -> dict[str, Any]:
    """Lower this process's CPU priority so that processes beside it go first: ``niceness`` added
    to every thread's nice value (capped at 19), or ``"idle"``: every thread under Linux's
    ``SCHED_IDLE``, which runs only on cycles nothing else wants (nice 19 where it is missing).

    Every thread, because Linux keeps a nice value per thread and ``os.nice`` moves only the
    caller's: the OpenMP and FAISS threads a process started earlier would keep their priority.
    Threads started later inherit it from their creator. Returns :func:`priority` after."""
    idle = niceness == "idle"
    for tid in _threads():
        try:
            if idle and hasattr(os, "SCHED_IDLE"):
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            else:
                now = os.getpriority(os.PRIO_PROCESS, tid)
                os.setpriority(os.PRIO_PROCESS, tid, 19 if idle else min(19, now + int(niceness)))
        except ProcessLookupError:  # the thread ended meanwhile
            continue
    return priority()


def record(run_dir: str | Path, role: str, info: dict[str, Any]) -> None:
    """Write one process's :func:`where` as ``placement/<role>.json`` in the run folder."""
    write_json_atomic(info, Path(run_dir) / PLACEMENT_DIR / f"{role}.json")


def collect(run_dir: str | Path) -> dict[str, Any]:
    """Merge the run's ``placement/*.json`` into ``placement.json`` and return it."""
    folder = Path(run_dir) / PLACEMENT_DIR
    merged = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}
    if merged:
        write_json_atomic(merged, Path(run_dir) / PLACEMENT_FILE)
    return merged


def describe(placement: dict[str, Any]) -> str:
    """One line per process: ``worker-0 on 127.0.0.1 (node 3f2a…, GPUs 0)``."""
    return "; ".join(f"{role} on {p.get('node_ip')} (node {str(p.get('node_id'))[:8]}…"
                     + (f", GPUs {','.join(p['gpu_ids'])}" if p.get("gpu_ids") else "") + ")"
                     for role, p in placement.items())
