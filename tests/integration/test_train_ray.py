"""Ray Train: 2 DDP workers, a worker SIGKILLed mid-run, and a crashed run re-submitted."""
import json

import pytest

from embedray.config import build_config
from embedray.pipeline.config import TrainJobConfig
from tests.faults import kill_once_at

pytestmark = pytest.mark.integration




def _job(beir, storage, name, **over):
    cfg = {
        "data": {"path": str(beir)},
        "model": {"name_or_path": "tiny-bert"},
        "loss": {"name": "infonce", "temperature": 0.1, "gather_across_workers": True},
        "train": {"max_steps": 9, "batch_size": 4, "num_negatives": 1, "lr": 1e-3, "checkpoint_every": 4,
                  "eval_every": 0, "log_every": 1, "max_doc_length": 48, "num_threads": 1,
                  "precision": "fp32"},  # exact-resume comparisons are made in fp32
        "cluster": {"num_workers": 2, "cpus_per_worker": 0.5, "storage_path": str(storage),
                    "run_name": name, "max_failures": 2, "num_to_keep": 2},
    }
    for key, value in over.items():
        section, field = key.split("__")
        cfg[section][field] = value
    return build_config(TrainJobConfig, cfg)


def _record_collective_timeout(out):
    """An ``on_step`` hook: each worker writes its process group's collective timeout once."""
    def hook(done, log):
        import ray.train
        import torch
        import torch.distributed as dist

        if done == 1:
            backend = dist.distributed_c10d._get_default_group()._get_backend(torch.device("cpu"))
            rank = ray.train.get_context().get_world_rank()
            (out / f"timeout-rank{rank}").write_text(str(backend.options._timeout.total_seconds()))
    return hook


def _steps(run_dir):
    return json.loads((run_dir / "detailed_training_logs.json").read_text())["steps"]


def test_worker_kill_and_resubmit_resume_exactly(local_ray, topic_beir, tmp_path):
    from embedray.cluster.train import run_training

    ref = run_training(_job(topic_beir, tmp_path, "ref", cluster__collective_timeout_s=4321),
                       on_step=[_record_collective_timeout(tmp_path)])
    assert ref["steps"] == 9
    # Each worker's process group waits cluster.collective_timeout_s in a collective (Ray's default: 1800).
    assert sorted(p.read_text() for p in tmp_path.glob("timeout-rank*")) == ["4321.0", "4321.0"]
    reference = [r["loss"] for r in _steps(tmp_path / "ref")]

    # 1) rank 1 SIGKILLs itself after step 6; FailureConfig restarts the group from checkpoint 4.
    killed = run_training(_job(topic_beir, tmp_path, "killed"),
                          on_step=[kill_once_at(6, tmp_path / "killed" / ".killed-at-6")])
    assert (tmp_path / "killed" / ".killed-at-6").exists()  # the kill really happened
    assert killed["steps"] == 9 and killed["steps_this_session"] == 5  # resumed at 4, ran 5..9
    steps = _steps(tmp_path / "killed")
    assert [r["step"] for r in steps] == list(range(1, 10))  # no repeated, no skipped steps
    assert [r["loss"] for r in steps] == pytest.approx(reference, abs=1e-5)  # CPU fp32

    # 2) no retries allowed: the run fails; re-submitting the same run name resumes it.
    with pytest.raises(Exception):
        run_training(_job(topic_beir, tmp_path, "crashed", cluster__max_failures=0),
                     on_step=[kill_once_at(6, tmp_path / "crashed" / ".killed-at-6")])
    again = run_training(_job(topic_beir, tmp_path, "crashed"))
    assert again["steps_this_session"] == 5
    assert [r["loss"] for r in _steps(tmp_path / "crashed")] == pytest.approx(reference, abs=1e-5)


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(local_ray, topic_beir, tmp_path):
    """A truncated file in the newest checkpoint (a torn copy): the re-submitted run skips it and
    resumes from the previous complete one, as a local run does."""
    from embedray.cluster.train import run_training
    from embedray.training import checkpoint as ckpt

    first = run_training(_job(topic_beir, tmp_path, "torn", train__max_steps=8))
    run = tmp_path / "torn"
    assert first["steps"] == 8
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["checkpoint-000004", "checkpoint-000008"]
    newest = {p.name for p in (run / "checkpoint-000008").iterdir()}
    assert {"manifest-rank0.json", "manifest-rank1.json", "rng_rank1.pt"} <= newest  # every rank's files
    with open(run / "checkpoint-000008" / "model.safetensors", "r+b") as f:
        f.truncate(1000)

    again = run_training(_job(topic_beir, tmp_path, "torn", train__max_steps=12))
    assert again["steps"] == 12 and again["steps_this_session"] == 8  # resumed at 4, not 8, not 0
    assert [r["step"] for r in _steps(run)] == list(range(1, 13))
    assert ckpt.is_complete(ckpt.latest_complete(run)) and ckpt.latest_complete(run).name == "checkpoint-000012"


def test_tasks_on_two_workers_share_each_batch_and_resume_exactly(local_ray, topic_beir, tmp_path):
    """A retrieval task and a classification task on 2 DDP workers (one task per step on both
    ranks; the classifier head outside DDP has its gradients averaged by the loop), the retrieval
    task's negatives refreshed by the refresher actor in its own corpus: a worker SIGKILLed
    mid-run resumes with the same task sequence, pool switches and losses."""
    import numpy as np
    from safetensors.numpy import load_file

    from embedray.cluster.train import run_training

    labels = tmp_path / "labels.jsonl"
    docs = [json.loads(line) for line in (topic_beir / "corpus.jsonl").read_text().splitlines()]
    labels.write_text("".join(json.dumps({"_id": d["_id"], "label": d["text"].split()[3]}) + "\n"
                              for d in docs if d["_id"].startswith("d")))

    def job(name):
        cfg = _job(topic_beir, tmp_path, name, train__max_steps=8)
        return build_config(TrainJobConfig, {
            "tasks": [{"name": "topics", "data": {"path": str(topic_beir)},
                       "loss": {"name": "infonce", "temperature": 0.1, "gather_across_workers": True}},
                      {"name": "sections", "data": {"path": str(topic_beir), "train_labels": str(labels),
                                                    "dev_split": None},
                       "loss": {"name": "classification"}, "weight": 16}],
            "model": {"name_or_path": "tiny-bert"},
            "train": {**{k: getattr(cfg.train, k) for k in ("max_steps", "batch_size", "lr", "checkpoint_every",
                                                             "eval_every", "log_every", "max_doc_length",
                                                             "num_threads", "precision")}},
            "refresh": {"mode": "sync", "every": 3, "denoise": False, "num_cpus": 0.25},
            "mining": {"k": 10, "num_negatives": 2, "range_min": 0},
            "cluster": {"num_workers": 2, "cpus_per_worker": 0.5, "storage_path": str(tmp_path), "run_name": name}})

    ref = run_training(job("tasks-ref"))
    steps = _steps(tmp_path / "tasks-ref")
    assert ref["steps"] == 8 and {r["task"] for r in steps} == {"topics", "sections"}
    refreshes = [e for e in json.loads((tmp_path / "tasks-ref" / "detailed_training_logs.json").read_text())["events"]
                 if e["kind"] == "refresh"]
    assert refreshes and all(set(e["tasks"]) == {"topics"} and e["queries_mined"] > 0 for e in refreshes)
    assert max(r["pool_version"] for r in steps) >= 2
    killed = run_training(job("tasks-killed"), on_step=[kill_once_at(6, tmp_path / "tasks-killed" / ".killed")])
    assert (tmp_path / "tasks-killed" / ".killed").exists() and killed["steps_this_session"] == 4
    again = _steps(tmp_path / "tasks-killed")
    assert [r["task"] for r in again] == [r["task"] for r in steps]
    assert [r["pool_version"] for r in again] == [r["pool_version"] for r in steps]
    assert [r["loss"] for r in again] == pytest.approx([r["loss"] for r in steps], abs=1e-5)
    head = load_file(str(tmp_path / "tasks-ref" / "final" / "classifier" / "sections" / "head.safetensors"))
    assert all(np.isfinite(v).all() for v in head.values())
