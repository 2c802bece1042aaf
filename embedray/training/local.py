"""Run the training loop in this process, without Ray (debugging, small runs, tests)."""
from __future__ import annotations

from pathlib import Path

from embedray.training.data import load_training_data, training_examples
from embedray.training.loop import Hooks, train
from embedray.training.session import LocalSession


def run_local(job, hooks: Hooks | None = None) -> dict:
    """Train ``job`` in one process; same outputs and resume rules as the Ray run."""
    run_dir = Path(job.cluster.storage_path).expanduser().resolve() / job.cluster.run_name
    data = load_training_data(job.data)
    examples = training_examples(job.data, data, data.report)  # the summary reports data.report
    if data.report.total:
        print(f"[embedray] data: {data.report.summary()}", flush=True)
    session = LocalSession(run_dir, examples, job.cluster.num_to_keep)
    if hooks is None and job.refresh.mode != "off":
        hooks = _local_refresh_hooks(job, data, run_dir)
    return train(job, session, data, run_dir, hooks)


def _local_refresh_hooks(job, data, run_dir: Path) -> Hooks:
    """In one process a refresh runs inline at the snapshot step (as ``sync`` would)."""
    from embedray.mining.refresher import NegativeRefresher, RefreshDriver, prepare_negatives, reader_hooks
    from embedray.mining.store import PoolStore

    ce_path = prepare_negatives(job, data, run_dir)
    store = PoolStore(run_dir / "pools")
    if job.refresh.mode == "static":
        return reader_hooks(store)
    refresher = NegativeRefresher(job, data, run_dir, ce_path)
    driver = RefreshDriver("sync", submit=refresher.refresh, ready=lambda r: True, result=lambda r: r)
    return driver.hooks(store, job.refresh.every)
