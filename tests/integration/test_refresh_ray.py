"""The ANCE loop on Ray: a NegativeRefresher actor killed mid-rebuild must not stop training."""
import json

import pytest

from embedray.config import TrainJobConfig, build_config
from embedray.mining.index import IndexStore
from embedray.mining.store import PoolStore

pytestmark = pytest.mark.integration




def test_refresher_killed_mid_rebuild(local_ray, topic_beir, tmp_path):
    from embedray.cluster.train import run_training

    job = build_config(TrainJobConfig, {
        "data": {"path": str(topic_beir)},
        "model": {"name_or_path": "tiny-bert"},
        "loss": {"name": "infonce", "temperature": 0.1},
        "train": {"max_steps": 14, "batch_size": 4, "num_negatives": 2, "lr": 1e-3, "checkpoint_every": 7,
                  "eval_every": 0, "max_doc_length": 48, "num_threads": 1},
        "cluster": {"num_workers": 2, "cpus_per_worker": 0.5, "storage_path": str(tmp_path), "run_name": "r"},
        "mining": {"k": 10, "num_negatives": 4},
        "cross_encoder": {"base_model": "tiny-bert", "max_steps": 4, "denoise_margin": -1.0},
        "refresh": {"mode": "sync", "every": 3, "max_restarts": 2, "debug_kill_at_refresh": 2,
                    "num_cpus": 0.25},
    })
    summary = run_training(job)
    run = tmp_path / "r"
    assert summary["steps"] == 14  # training completed despite the dead refresher
    assert (run / ".refresher-killed-2").exists()  # the kill really happened mid-rebuild
    logs = json.loads((run / "detailed_training_logs.json").read_text())
    refreshes = [e for e in logs["events"] if e["kind"] == "refresh"]
    done = [e for e in refreshes if not e.get("failed")]
    assert len(done) >= 3  # the interrupted refresh was redone on the restarted actor, and later ones ran
    used = [r["pool_version"] for r in logs["steps"]]
    assert used == sorted(used) and used[-1] >= 3  # versions only increase, and did advance
    store = IndexStore(run / "indexes")
    assert not any(p.name.endswith("tmp-killed") for p in store.root.iterdir() if p.name.startswith("v"))
    latest = store.latest()  # LATEST points at a complete index, never the half-written one
    assert latest is not None and latest.version == store.latest_version() and len(latest) > 0
    assert PoolStore(run / "pools").latest_version() == max(used)
