"""Ray Train assembly: the only training code that imports ray.

``TorchTrainer`` runs :func:`embedray.training.loop.train` on every worker with a
``RayTrainSession``; training rows come from Ray Data (``read_json`` / ``read_parquet`` →
``get_dataset_shard``); checkpoints go through ``ray.train.report`` so FailureConfig restarts and
re-submitting the same run name both resume from the newest complete one.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from embedray.cluster.runtime import ensure_ray
from embedray.training import checkpoint as ckpt
from embedray.training.batches import Example
from embedray.training.data import TrainingData, load_training_data, pair_rows, rows_to_examples


class RayTrainSession:
    """The loop's view of a Ray Train worker."""

    def __init__(self, data: TrainingData, source: str):
        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.data, self.source = data, source

    def prepare_model(self, model):
        return ray.train.torch.prepare_model(model)

    def training_examples(self) -> list[Example]:
        rows = [dict(r) for r in ray.train.get_dataset_shard("train").iter_rows()]
        # Ray Data may hand a worker different rows after a restart; exact resume needs one
        # canonical order, so the workers pool their (small, id-only) shards and re-deal them.
        if dist.is_initialized():
            shards: list = [None] * self.world_size
            dist.all_gather_object(shards, rows)
            rows = [r for shard in shards for r in shard]
        for r in rows:
            r["neg_ids"] = list(r.get("neg_ids") or [])
        return rows_to_examples(rows, self.data, self.source)

    def restore(self) -> dict | None:
        found = ray.train.get_checkpoint()
        if found is None:
            return None
        local = Path(tempfile.mkdtemp(prefix="embedray-restore-"))
        try:
            found.to_directory(str(local))
            if not ckpt.is_complete(local):
                raise RuntimeError(f"checkpoint {found.path} failed verification (manifest mismatch)")
            return ckpt.read_state(local, self.rank)
        finally:
            shutil.rmtree(local, ignore_errors=True)  # the state is in memory now

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
    from embedray.config import TrainJobConfig, build_config
    from embedray.training.loop import train

    job = build_config(TrainJobConfig, config["job"], "train_loop_config")
    data = load_training_data(job.data)
    session = RayTrainSession(data, config["source"])
    if job.train.num_threads is None:
        torch.set_num_threads(max(1, int(job.cluster.cpus_per_worker)))
    factory = config.get("hooks_factory")
    train(job, session, data, Path(config["run_dir"]), hooks=factory() if factory else None)


def training_dataset(job, pairs_path: Path | None):
    """Training rows as a Ray Dataset (validated on the driver first, so errors name the line)."""
    if pairs_path is None:
        return ray.data.from_items(pair_rows(job.data))
    # Reading id rows is light; zero-CPU read tasks and materialising before the trainer starts
    # keep the read from waiting on CPUs the training workers hold (2 workers × 1 CPU = a 2-core box).
    read = ray.data.read_parquet if pairs_path.suffix.lower() == ".parquet" else ray.data.read_json
    return read(str(pairs_path), num_cpus=0).materialize()


def absolute_paths(job):
    """Resolve relative paths against the driver's working directory: Ray workers (and a
    ``ray job submit`` working_dir copy) run elsewhere."""
    import copy

    job = copy.deepcopy(job)

    def resolve(value: str | None) -> str | None:
        return str(Path(value).expanduser().resolve()) if value and Path(value).expanduser().exists() else value

    job.data.path = str(Path(job.data.path).expanduser().resolve())
    job.data.train_pairs = resolve(job.data.train_pairs)
    job.cluster.storage_path = str(Path(job.cluster.storage_path).expanduser().resolve())
    job.model.name_or_path = resolve(job.model.name_or_path)
    job.distill.teacher = resolve(job.distill.teacher)
    job.refresh.cross_encoder = resolve(job.refresh.cross_encoder)
    job.cross_encoder.base_model = resolve(job.cross_encoder.base_model)
    return job


def _check_resources(job) -> None:
    """Fail at once, with the numbers, when the workers and the refresher cannot all be placed
    (otherwise Ray Train waits for its worker group forever)."""
    need = job.cluster.num_workers * job.cluster.cpus_per_worker
    if job.refresh.mode in ("async", "sync"):
        need += job.refresh.num_cpus
    have = ray.cluster_resources().get("CPU", 0)
    if need > have + 1e-9:
        raise ValueError(
            f"this run needs {need:g} CPUs (cluster.num_workers {job.cluster.num_workers} × "
            f"cluster.cpus_per_worker {job.cluster.cpus_per_worker:g}"
            + (f" + refresh.num_cpus {job.refresh.num_cpus:g}" if job.refresh.mode in ("async", "sync") else "")
            + f") but the Ray cluster has {have:g}; lower cluster.cpus_per_worker (fractions work) or add nodes")


def run_training(job) -> dict:
    """Run (or resume) ``job`` on Ray Train; return the training summary.

    With ``refresh.mode`` on, the cross-encoder and pool v1 are prepared first (skipped when
    already there), and an async/sync run gets a ``NegativeRefresher`` actor.
    """
    from embedray.cluster.refresh import hooks_factory as refresh_hooks, start_refresher
    from embedray.config import to_dict
    from embedray.mining.refresher import prepare_negatives

    ensure_ray()
    job = absolute_paths(job)
    run_dir = (Path(job.cluster.storage_path).expanduser().resolve() / job.cluster.run_name)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = load_training_data(job.data)
    pairs_path = Path(job.data.train_pairs).expanduser().resolve() if job.data.train_pairs else None
    rows_to_examples(pair_rows(job.data), data, str(pairs_path or "train qrels"), job.data.on_error)
    _check_resources(job)
    hooks_factory = None
    if job.refresh.mode != "off":
        ce_path = prepare_negatives(job, data, run_dir)
        actor = start_refresher(job, run_dir, ce_path) if job.refresh.mode in ("async", "sync") else None
        hooks_factory = refresh_hooks(actor, run_dir, job)
    trainer = TorchTrainer(
        train_loop_per_worker=_worker,
        train_loop_config={"job": to_dict(job), "run_dir": str(run_dir), "source": str(pairs_path or "train qrels"),
                           **({"hooks_factory": hooks_factory} if hooks_factory else {})},
        scaling_config=ScalingConfig(num_workers=job.cluster.num_workers, use_gpu=job.cluster.use_gpu,
                                     resources_per_worker={"CPU": job.cluster.cpus_per_worker}),
        run_config=RunConfig(name=job.cluster.run_name, storage_path=str(run_dir.parent),
                             checkpoint_config=CheckpointConfig(num_to_keep=job.cluster.num_to_keep),
                             failure_config=FailureConfig(max_failures=job.cluster.max_failures)),
        datasets={"train": training_dataset(job, pairs_path)},
    )
    trainer.fit()
    return json.loads((run_dir / "training_summary_report.json").read_text())
