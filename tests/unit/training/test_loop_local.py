"""The loop in one process (LocalSession) on tiny-bert: artifacts, learning, exact resume."""
import json

import pytest

from embedray.config import TrainJobConfig, build_config
from embedray.training.local import run_local
from embedray.training.loop import Hooks


def _job(beir, storage, name, **train):
    return build_config(TrainJobConfig, {
        "data": {"path": str(beir)},
        "model": {"name_or_path": "tiny-bert"},
        "loss": {"name": "infonce", "temperature": 0.1},
        "train": {"max_steps": 8, "batch_size": 4, "num_negatives": 1, "lr": 1e-3, "checkpoint_every": 3,
                  "eval_every": 4, "eval_max_queries": None, "log_every": 1, "max_doc_length": 48, **train},
        "cluster": {"storage_path": str(storage), "run_name": name, "num_to_keep": 2},
    })


def _losses(run_dir):
    return [r["loss"] for r in json.loads((run_dir / "detailed_training_logs.json").read_text())["steps"]]


def test_outputs_and_exact_resume_after_crash(topic_beir, tmp_path):
    ref = run_local(_job(topic_beir, tmp_path, "ref"))
    run = tmp_path / "ref"
    for name in ("final/modules.json", "final/embedray.json", "final/training_config.json",
                 "detailed_training_logs.json", "training_losses.json", "training_summary_report.json"):
        assert (run / name).exists(), name
    assert list((run / "runs").glob("events.out.tfevents*"))
    assert ref["steps"] == 8 and ref["dev_before"]["ndcg@10"] >= 0

    class Crash(RuntimeError):
        pass

    def crash(step, log):
        if step == 5:
            raise Crash()

    with pytest.raises(Crash):
        run_local(_job(topic_beir, tmp_path, "crashy"), Hooks(on_step=[crash]))
    resumed = run_local(_job(topic_beir, tmp_path, "crashy"))  # same run name: resumes at step 3
    assert resumed["steps_this_session"] == 5
    a, b = _losses(run), _losses(tmp_path / "crashy")
    assert len(b) == 8
    assert b == pytest.approx(a, abs=1e-6)  # CPU fp32: identical up to float noise


def test_training_improves_dev_on_learnable_data(topic_beir, tmp_path):
    summary = run_local(_job(topic_beir, tmp_path, "learn", max_steps=40, lr=3e-3, eval_every=0))
    assert summary["dev_after"]["ndcg@10"] > summary["dev_before"]["ndcg@10"] + 0.05


@pytest.mark.parametrize("in_batch", [False, True])
def test_distilling_from_a_teacher_runs_per_query_and_in_batch(topic_beir, tmp_path, in_batch):
    job = _job(topic_beir, tmp_path, f"distill-{in_batch}", max_steps=3, eval_every=0, checkpoint_every=0)
    job = build_config(TrainJobConfig, {
        **_as_dict(job),
        "loss": {"name": "infonce", "temperature": 0.1, "distill_score": "kl", "distill_embed": True,
                 "distill_in_batch": in_batch},
        "distill": {"teacher": "tiny-bert"},
    })
    summary = run_local(job)
    losses = _losses(tmp_path / f"distill-{in_batch}")
    assert summary["steps"] == 3 and len(losses) == 3
    assert all(loss == loss and loss > 0 for loss in losses)  # finite, task + distillation terms


def _as_dict(job):
    from embedray.config import to_dict
    return to_dict(job)


def test_dev_evaluation_borrows_every_core_and_gives_them_back():
    import os

    import torch

    from embedray.training.loop import _every_core

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with _every_core():
            assert torch.get_num_threads() == len(os.sched_getaffinity(0))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
