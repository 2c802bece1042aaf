"""The ``NegativeRefresher`` as a Ray actor, and the per-worker hooks that talk to it."""
from __future__ import annotations

import os
from pathlib import Path

import ray
import torch

from embedray.cluster import placement
from embedray.cluster.encode import ray_encode_fn
from embedray.config import build_config, to_dict
from embedray.mining.store import PoolStore
from embedray.models.bundled import resolve_model
from embedray.pipeline.config import RefreshConfig, TrainJobConfig
from embedray.pipeline.refresh import NegativeRefresher, RefreshDriver, prepare_negatives, reader_hooks
from embedray.training.data import load_training_data
from embedray.training.loop import Hooks
from embedray.training.tasks import load_tasks


class RefresherActor:
    """Runs :class:`NegativeRefresher` in its own process; Ray restarts it after a crash.

    :meth:`prepare` trains and gates the run's cross-encoder and mines pool v1 on the actor's
    resources (its GPU, when it has one) before training starts; every step of it is reused when
    already done, so a restarted actor prepares again in moments before its next refresh.
    """

    def __init__(self, job_dict: dict, run_dir: str, before_publish=None):
        job = build_config(TrainJobConfig, job_dict, "refresher")
        placement.record(run_dir, "refresher", placement.where())
        _set_threads(job.refresh)
        self.job, self.run_dir, self.before_publish = job, run_dir, before_publish
        self.data, self.per_task = (load_tasks(job.tasks, rows=False)[:2] if job.tasks
                                    else (load_training_data(job.data), None))
        self.refresher: NegativeRefresher | None = None

    def prepare(self) -> str | None:
        """The cross-encoder (trained if none is given) and pool v1; returns the cross-encoder's
        folder. No training runs yet, so it takes every core of its node for the while."""
        if self.refresher is None:
            mined = not (Path(self.run_dir) / "initial_pool.json").is_file()
            threads = torch.get_num_threads()
            torch.set_num_threads(len(os.sched_getaffinity(0)))
            try:
                ce_path = prepare_negatives(self.job, self.data, self.run_dir, self.per_task)
            finally:
                torch.set_num_threads(threads)
            if mined:
                placement.record(self.run_dir, "pool-v1", placement.where())
            factory = _ray_data_encoder(self.job) if self.job.refresh.ray_data_encode else None
            self.refresher = NegativeRefresher(self.job, self.data, self.run_dir, ce_path, factory,
                                               before_publish=self.before_publish, per_task=self.per_task)
            self.ce_path = ce_path
            if self.job.refresh.mode == "async":
                placement.yield_cpu(self.job.refresh.niceness)  # from now on the trainers run beside it: they go first
            placement.record(self.run_dir, "refresher", placement.where())
        return self.ce_path

    def refresh(self, step: int, weights: dict) -> dict:
        self.prepare()
        return self.refresher.refresh(step, weights)


def _set_threads(refresh) -> None:
    """Torch threads of the refresher: its CPU share in ``async`` mode; every core of its node in
    ``sync`` mode, where training waits for the refresh and leaves the cores idle."""
    import torch

    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores if refresh.mode == "sync" else max(1, min(cores, round(refresh.num_cpus))))


def _ray_data_encoder(job):
    """Encode cache misses on a Ray Data actor pool with the snapshot's weights (and the mined
    corpus's document instruction)."""
    def factory(model, doc_prompt: str):
        # On the CPU: the encoder's actor may have no GPU to receive a CUDA tensor on.
        weights = {k: v.cpu() for k, v in model.to_sentence_transformer().state_dict().items()}
        return ray_encode_fn(resolve_model(job.model.name_or_path), batch_size=job.mining.batch_size,
                             num_actors=1, num_cpus_per_actor=placement.refresher_cpus(job)[1],
                             num_gpus=placement.refresher_gpus(job)[1], state_dict=weights,
                             prompt=doc_prompt, precision=job.mining.precision)
    return factory


def start_refresher(job, run_dir: Path, before_publish=None):
    """Create the actor with the resources of ``job.refresh`` (fractional CPUs, ``num_gpus``
    resolved by :func:`embedray.cluster.placement.resolve`, custom ``resources``) and its
    ``max_restarts`` (``before_publish``: see :class:`NegativeRefresher`), and have it
    :meth:`~RefresherActor.prepare` the run's cross-encoder and pool v1. A ``static`` run's actor
    is gone once pool v1 is published: training only reads it."""
    actor_cls = ray.remote(RefresherActor).options(
        num_cpus=placement.refresher_cpus(job)[0], num_gpus=placement.refresher_gpus(job)[0],
        resources=job.refresh.resources or None,
        max_restarts=job.refresh.max_restarts,
        max_task_retries=1,  # a refresh cut short by a crash is redone once on the restarted actor
        name=f"refresher-{job.cluster.run_name}", get_if_exists=True)
    actor = actor_cls.remote(to_dict(job), str(run_dir), before_publish)
    try:
        ray.get(actor.prepare.remote())
    except BaseException:
        ray.kill(actor)
        raise
    if job.refresh.mode == "static":
        ray.kill(actor)
        return None
    return actor


class RefreshHooks:
    """What each Ray Train worker calls for its loop hooks (shipped to the workers by pickle):
    rank 0 drives the refresher actor, every rank reads the published pools."""

    def __init__(self, actor, run_dir: Path, refresh: RefreshConfig):
        self.actor, self.pools, self.refresh = actor, Path(run_dir) / "pools", refresh

    def __call__(self) -> Hooks:
        store = PoolStore(self.pools)
        if self.refresh.mode == "static" or ray.train.get_context().get_world_rank() != 0:
            return reader_hooks(store, refreshing=self.refresh.mode != "static")
        driver = RefreshDriver(self.refresh, submit=lambda step, w: self.actor.refresh.remote(step, ray.put(w)),
                               ready=lambda ref: bool(ray.wait([ref], timeout=0)[0]), result=ray.get)
        return driver.hooks(store)
