"""The ANCE loop on Ray: a NegativeRefresher actor killed mid-rebuild must not stop training."""
import json

import pytest

from embedray.config import build_config
from embedray.mining.index import IndexStore
from embedray.mining.store import PoolStore
from embedray.pipeline.config import TrainJobConfig
from tests.faults import kill_once_at, kill_refresher_once_at

from .conftest import sync_refresh_job

pytestmark = pytest.mark.integration




def test_refresher_killed_mid_rebuild(local_ray, topic_beir, tmp_path, capfd):
    from embedray.cluster.train import run_training

    job = build_config(TrainJobConfig, {
        "data": {"path": str(topic_beir)},
        "model": {"name_or_path": "tiny-bert"},
        "loss": {"name": "infonce", "temperature": 0.1},
        "train": {"max_steps": 14, "batch_size": 4, "num_negatives": 2, "lr": 1e-3, "checkpoint_every": 7,
                  "eval_every": 0, "max_doc_length": 48, "num_threads": 1, "precision": "fp32"},
        "cluster": {"num_workers": 2, "cpus_per_worker": 0.5, "storage_path": str(tmp_path), "run_name": "r"},
        "mining": {"k": 10, "num_negatives": 4},
        "cross_encoder": {"base_model": "tiny-bert", "max_steps": 4, "denoise_margin": -1.0},
        "refresh": {"mode": "sync", "every": 3, "max_restarts": 2, "num_cpus": 0.25},
    })
    summary = run_training(job, before_publish=kill_refresher_once_at(2, tmp_path / "r"))
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
    # the run's last line on its refresher counts what this run's telemetry holds
    failed = len(refreshes) - len(done)
    assert (f"[embedray] refresher: {len(done)} refreshed pool(s) of 4 snapshot(s) (every 3 steps), in use from "
            f"step {', '.join(str(e['step']) for e in done)}" + (f"; {failed} failed" if failed else "")
            ) in capfd.readouterr().out


def _sync_job(beir, storage, name):
    return sync_refresh_job(beir, storage, name)


def test_sync_refresh_resumes_exactly_after_a_worker_is_killed(local_ray, topic_beir, tmp_path):
    """Refreshes at steps 3, 6, 9; rank 1 dies after step 7, when the killed attempt has already
    published the pool of step 6. Resumed from checkpoint 4, the run must still train steps 5-6
    on the pool of step 3 and switch at the same steps, with the same pools, as the
    uninterrupted run: equal per-step losses and pool versions."""
    import time

    from embedray.cluster.train import run_training

    t0 = time.perf_counter()
    ref = run_training(_sync_job(topic_beir, tmp_path, "ref"))
    t_ref = time.perf_counter() - t0
    reference = json.loads((tmp_path / "ref" / "detailed_training_logs.json").read_text())["steps"]
    assert [r["pool_version"] for r in reference] == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4]

    marker = tmp_path / "killed-at-7"
    t0 = time.perf_counter()
    killed = run_training(_sync_job(topic_beir, tmp_path, "killed"), on_step=[kill_once_at(7, marker)])
    t_killed = time.perf_counter() - t0
    assert marker.exists() and killed["steps"] == 10 and killed["steps_this_session"] == 6  # resumed at 4
    logs = json.loads((tmp_path / "killed" / "detailed_training_logs.json").read_text())
    steps = logs["steps"]
    assert [r["step"] for r in steps] == list(range(1, 11))
    assert [r["pool_version"] for r in steps] == [r["pool_version"] for r in reference]
    assert [r["loss"] for r in steps] == [r["loss"] for r in reference]  # CPU fp32: exactly equal
    final_state = json.loads((tmp_path / "killed" / "checkpoint-000010" / "trainer_state.json").read_text())
    assert final_state["state"]["pool_switches"] == [[0, 1], [3, 2], [6, 3], [9, 4]]  # (step, version)
    reused = [e for e in logs["events"] if e["kind"] == "refresh" and e.get("reused")]
    assert [e["version"] for e in reused] == [3]  # step 6's pool, mined by the killed attempt
    print(f"uninterrupted {t_ref:.1f} s, killed + resumed {t_killed:.1f} s")
    assert ref["steps"] == 10


@pytest.mark.timeout(300)
def test_a_ray_data_encoder_fits_in_what_the_refresher_asked_for(local_ray, topic_beir, tmp_path):
    # 2 CPUs: the workers take 1.5, the refresher 0.5. Its Ray Data encoder shares that 0.5 with
    # the actor; asking for 0.5 more, it would wait for CPUs the trainers never free, and a sync
    # refresh (training waits for it) would hang.
    from embedray.cluster.train import run_training

    job = sync_refresh_job(topic_beir, tmp_path, "rd", cluster={"cpus_per_worker": 0.75},
                           train={"max_steps": 6},
                           refresh={"ray_data_encode": True, "num_cpus": 0.5, "every": 3})
    summary = run_training(job)
    logs = json.loads((tmp_path / "rd" / "detailed_training_logs.json").read_text())
    done = [e for e in logs["events"] if e["kind"] == "refresh" and not e.get("failed")]
    assert summary["steps"] == 6 and len(done) >= 1
    assert max(r["pool_version"] for r in logs["steps"]) >= 2  # a refreshed pool came into use
