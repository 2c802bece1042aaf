"""Ray Train assembly: the only training code that imports ray.

``TorchTrainer`` runs :func:`embedray.training.loop.train` on every worker with a
``RayTrainSession``; the training rows, validated once on the driver (``data.on_error``,
``data.max_train_pairs``), are written with the texts they name to the run's storage
(:mod:`embedray.training.shards`), and each worker reads only its own shard of rows and looks
texts up in memory-mapped stores; checkpoints go through ``ray.train.report`` so FailureConfig restarts and
re-submitting the same run name both resume from the newest complete one.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import ray
import ray.train
import ray.train.torch
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from embedray.cluster import placement, shared
from embedray.cluster.refresh import RefreshHooks, start_refresher
from embedray.cluster.runtime import ensure_ray
from embedray.config import build_config, to_dict
from embedray.pipeline.config import TrainJobConfig
from embedray.pipeline.refresh import refresh_summary
from embedray.pipeline.runtime import job_data, train_job
from embedray.training import checkpoint as ckpt
from embedray.training.batches import Example
from embedray.training.data import load_training_data
from embedray.training.shards import STORE_DIR, open_shard, write_store
from embedray.training.loop import Hooks


class RayTrainSession:
    """The loop's view of a Ray Train worker."""

    def __init__(self, run_dir: Path | None = None):
        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.run_dir = run_dir  # where Ray Train keeps this run's checkpoint-* folders (for the fallback)
        self.shard = open_shard(run_dir, self.rank, self.world_size)  # this rank's rows; the loop batches them

    def prepare_model(self, model):
        return ray.train.torch.prepare_model(model)

    def training_examples(self) -> list[Example]:
        return self.shard.examples

    def restore(self, seed: int | None = None) -> dict | None:
        """The state of Ray Train's newest checkpoint, or — when that one fails verification (a
        truncated file, a worker's files missing) — of the newest complete one among the run's
        ``checkpoint-*`` folders, saying which it skipped. A checkpoint written with another
        number of workers or another ``seed`` is refused."""
        found = ray.train.get_checkpoint()
        if found is None:
            return None
        local = Path(tempfile.mkdtemp(prefix="embedray-restore-"))
        try:
            found.to_directory(str(local))
            if (problem := ckpt.verify(local)) is None:
                state = ckpt.read_state(local, self.rank, world_size=self.world_size, seed=seed)
                return {**state, "path": found.path}
        finally:
            shutil.rmtree(local, ignore_errors=True)  # the state is in memory now
        return self._fallback(found.path, problem, seed)

    def _fallback(self, bad: str, problem: str, seed: int | None) -> dict | None:
        """The newest complete checkpoint of ``run_dir`` other than ``bad``; None when there is none."""
        skipped = [f"{bad} ({problem})"]
        folders = reversed(ckpt.list_checkpoints(self.run_dir)) if self.run_dir is not None else []
        for folder in folders:
            if folder.name == Path(bad).name:
                continue
            if (why := ckpt.verify(folder)) is not None:
                skipped.append(f"{folder} ({why})")
                continue
            self._say(f"skipped checkpoint {'; '.join(skipped)}; resuming from {folder}")
            return ckpt.read_state(folder, self.rank, world_size=self.world_size, seed=seed)
        self._say(f"skipped checkpoint {'; '.join(skipped)}; no complete checkpoint left in "
                  f"{self.run_dir}: starting from step 0")
        return None

    def _say(self, msg: str) -> None:
        if self.rank == 0:
            print(f"[embedray] {msg}", flush=True)

    def save_checkpoint(self, step: int, metrics: dict, **state) -> None:
        staging = Path(tempfile.mkdtemp(prefix="embedray-ckpt-"))
        try:
            ckpt.write_state(staging, rank=self.rank, **state)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(staging)),
                             checkpoint_dir_name=f"checkpoint-{step:06d}")
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def report(self, metrics: dict) -> None:
        pass  # metrics travel with checkpoints; a per-step report would be a per-step sync


def _worker(config: dict) -> None:
    job = build_config(TrainJobConfig, config["job"], "train_loop_config")
    session = RayTrainSession(Path(config["run_dir"]))
    data = session.shard.data
    data.report = config["skipped"]  # the driver's count, training pairs included (the summary reports it)
    # Rank 0 alone evaluates dev; a multi-task dev split is each task's own data, with its own ids.
    per_task = ({t.name: load_training_data(t.data) for t in job.tasks} if job.tasks and session.rank == 0
                else None)
    placement.record(config["run_dir"], f"worker-{session.rank}", {**placement.where(), "data": session.shard.stats})
    if job.train.num_threads is None:
        torch.set_num_threads(max(1, int(job.cluster.cpus_per_worker)))
    factory = config.get("hooks_factory")
    hooks = factory() if factory else Hooks()
    hooks.on_step.extend(config.get("on_step") or [])
    train_job(job, session, data, Path(config["run_dir"]), hooks, per_task)


def absolute_paths(job):
    """Resolve relative paths against the driver's working directory: Ray workers (and a
    ``ray job submit`` working_dir copy) run elsewhere."""
    import copy

    job = copy.deepcopy(job)

    def resolve(value: str | None) -> str | None:
        return str(Path(value).expanduser().resolve()) if value and Path(value).expanduser().exists() else value

    for data in [t.data for t in job.tasks] if job.tasks else [job.data]:
        data.path = str(Path(data.path).expanduser().resolve())
        data.train_pairs = resolve(data.train_pairs)
        data.train_labels = resolve(data.train_labels)
    job.cluster.storage_path = str(Path(job.cluster.storage_path).expanduser().resolve())
    job.model.name_or_path = resolve(job.model.name_or_path)
    job.distill.teacher = resolve(job.distill.teacher)
    job.refresh.cross_encoder = resolve(job.refresh.cross_encoder)
    job.cross_encoder.base_model = resolve(job.cross_encoder.base_model)
    return job


def run_training(job, on_step: list[Callable[[int, Any], None]] | None = None,
                 before_publish: Callable[[int, int], None] | None = None) -> dict:
    """Run (or resume) ``job`` on Ray Train; return the training summary.

    With ``refresh.mode`` on, the cross-encoder and pool v1 are prepared first (skipped when
    already there), and an async/sync run gets a ``NegativeRefresher`` actor. ``on_step``:
    picklable ``callback(step, log)`` run on every worker after each step (``Hooks.on_step``;
    ``ray.train.get_context()`` tells a callback its rank); ``before_publish(step, version)``:
    picklable, called in the refresher actor after each refresh has mined, before it publishes.
    """
    ensure_ray()
    job = absolute_paths(job)
    run_dir = (Path(job.cluster.storage_path).expanduser().resolve() / job.cluster.run_name)
    run_dir.mkdir(parents=True, exist_ok=True)
    nodes = shared.check_shared(job)
    if nodes > 1:
        print(f"[embedray] all {nodes} nodes see the run's storage_path and data", flush=True)
    data, per_task, examples = job_data(job)
    if data.report.total:
        print(f"[embedray] data: {data.report.summary()}", flush=True)
    have = ray.cluster_resources()
    job = placement.resolve(job, have)
    placement.check_fits(job, have)
    shutil.rmtree(run_dir / placement.PLACEMENT_DIR, ignore_errors=True)  # this session's reports only
    # The rows the driver validated (on_error: skip, max_train_pairs), one shard per worker.
    store = write_store(run_dir, data, examples, job.cluster.num_workers)
    print(f"[embedray] training data: {store['rows']} rows in {job.cluster.num_workers} shards "
          f"({', '.join(map(str, store['rows_per_rank']))}), {store['docs']} documents in {run_dir / STORE_DIR}",
          flush=True)
    hooks_factory = actor = None
    if job.refresh.mode != "off":
        # The cross-encoder and pool v1 are prepared on the refresher's resources, not here.
        actor = start_refresher(job, run_dir, before_publish)
        hooks_factory = RefreshHooks(actor, run_dir, job.refresh)
    trainer = TorchTrainer(
        train_loop_per_worker=_worker,
        train_loop_config={"job": to_dict(job), "run_dir": str(run_dir), "skipped": data.report, "on_step": list(on_step or []),
                           **({"hooks_factory": hooks_factory} if hooks_factory else {})},
        torch_config=TorchConfig(timeout_s=job.cluster.collective_timeout_s),
        scaling_config=ScalingConfig(num_workers=job.cluster.num_workers, use_gpu=job.cluster.use_gpu,
                                     resources_per_worker=placement.worker_resources(job)),
        run_config=RunConfig(name=job.cluster.run_name, storage_path=str(run_dir.parent),
                             checkpoint_config=CheckpointConfig(num_to_keep=job.cluster.num_to_keep),
                             failure_config=FailureConfig(max_failures=job.cluster.max_failures)),
    )
    try:
        trainer.fit()
    finally:
        if actor is not None:
            ray.kill(actor)  # its CPUs and GPU go back to the cluster (the next stage may need them)
    where = placement.collect(run_dir)
    if where:
        print(f"[embedray] placement: {placement.describe(where)}", flush=True)
    summary = json.loads((run_dir / "training_summary_report.json").read_text())
    logs = run_dir / "detailed_training_logs.json"
    line = refresh_summary(job.refresh, summary["steps"],
                           json.loads(logs.read_text())["events"] if logs.is_file() else [])
    if line:
        print(line, flush=True)
    return summary


class RayRuntime:
    """:class:`embedray.pipeline.runtime.Runtime` on Ray: training on Ray Train
    (:func:`run_training`), stage work as Ray tasks (:func:`run_stage_task`)."""

    def train(self, job, on_step: list[Callable[[int, Any], None]] | None = None) -> dict:
        return run_training(job, on_step=on_step)

    def call(self, label: str, fn: Callable, *args, cluster, run_dir: Path) -> Any:
        return run_stage_task(label, fn, *args, cluster=cluster, run_dir=run_dir)

    def check(self, jobs: dict[str, Any], cluster) -> None:
        """Each training stage's workers and refresher, and the stage tasks, against the cluster's
        totals, all named in one error: a recipe for GPUs submitted to a CPU cluster stops here,
        not after the stages before the first that needs one."""
        ensure_ray()
        have = ray.cluster_resources()
        problems = []
        for stage, job in jobs.items():
            try:
                placement.check_fits(placement.resolve(job, have), have)
            except ValueError as e:
                problems.append(f"{stage}: {e}")
        if cluster is not None:
            try:
                stage_request(cluster, have)
            except ValueError as e:
                problems.append(str(e))
        if problems:
            raise ValueError("\n".join(problems))


def stage_request(cluster, have: dict[str, float]) -> dict[str, Any]:
    """The Ray options of a stage task: ``cluster.stage_cpus`` / ``stage_gpus`` (``auto``: 1 when
    the cluster has a GPU) / ``stage_resources``; a request the cluster cannot meet is named."""
    gpus = (1.0 if have.get("GPU", 0.0) >= 1 else 0.0) if cluster.stage_gpus == "auto" else float(cluster.stage_gpus)
    request = {"CPU": cluster.stage_cpus, "GPU": gpus, **cluster.stage_resources}
    setting = {"CPU": "cluster.stage_cpus", "GPU": "cluster.stage_gpus"}
    short = [f"{key}: a stage task needs {amount:g} ({setting.get(key, 'cluster.stage_resources.' + key)}) but the "
             f"Ray cluster has {have.get(key, 0.0):g}"
             for key, amount in request.items() if amount > have.get(key, 0.0) + 1e-9]
    if short:
        raise ValueError("the Ray cluster cannot place this pipeline's stage tasks:\n  " + "\n  ".join(short))
    return {"num_cpus": cluster.stage_cpus, "num_gpus": gpus, "resources": cluster.stage_resources or None}


def _stage_task(label: str, run_dir: str, fn: Callable, args: tuple) -> Any:
    """In the Ray task: every core of the node for the encodes (Ray sets one thread per
    requested CPU), a placement record, then the work."""
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    placement.record(run_dir, label, placement.where())
    return fn(*args)


def run_stage_task(label: str, fn: Callable, *args, cluster, run_dir: Path) -> Any:
    """``fn(*args)`` as a Ray task with the stage resources of ``cluster``; its return value."""
    ensure_ray()
    options = stage_request(cluster, ray.cluster_resources())
    task = ray.remote(_stage_task).options(name=label, max_retries=0, **options)
    result = ray.get(task.remote(label, str(run_dir), fn, args))
    where = placement.collect(run_dir).get(label)
    if where:
        print(f"[embedray] placement: {placement.describe({label: where})}", flush=True)
    return result
