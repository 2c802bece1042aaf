"""The student can train on the teacher's last negative pool (student.train.negatives: pool)."""
from pathlib import Path

import pytest

from embedray.config import build_config
from embedray.pipeline.config import PipelineConfig
from embedray.pipeline.stages import Pipeline


def _pipeline(tmp_path: Path, negatives: str) -> Pipeline:
    cfg = build_config(PipelineConfig, {
        "name": "t", "output_dir": str(tmp_path), "prepare": {"source": "debian"},
        "teacher": {"model": {"name_or_path": "tiny-bert"}},
        "refresh": {"mode": "async"},
        "student": {"keep_layers": None, "model": {"name_or_path": "tiny-bert"},
                    "train": {"negatives": negatives, "num_negatives": 1}}}, "test")
    return Pipeline(cfg)


def _teacher_pools(run: Path, versions=(1, 2)) -> Path:
    from embedray.mining.pool import NegativePool
    from embedray.mining.store import PoolStore

    store = PoolStore(run / "teacher" / "pools")
    for v in versions:
        store.publish(NegativePool(v, {"q1": [(f"d{v}", None)]}))
    return store.root


def test_student_on_the_teachers_newest_pool(tmp_path):
    p = _pipeline(tmp_path, "pool")
    with pytest.raises(ValueError, match="teacher's mined pool"):
        p._student_job()
    teacher_pools = _teacher_pools(p.run)
    job = p._student_job()
    assert job.refresh.mode == "static" and job.train.negatives == "pool"
    assert job.distill.score_source == "teacher"
    student_pools = p.run / "student" / "pools"
    assert (student_pools / "LATEST").read_text().strip() == "2"
    assert (student_pools / "pool-v2.json").read_text() == (teacher_pools / "pool-v2.json").read_text()
    assert not (student_pools / "pool-v1.json").exists()
    # A resumed student keeps the pool it trained on.
    (student_pools / "pool-v2.json").write_text('{"version": 2, "kept": true}')
    p._student_job()
    assert "kept" in (student_pools / "pool-v2.json").read_text()


def test_student_without_pool_uses_random_negatives_and_no_refresh(tmp_path):
    p = _pipeline(tmp_path, "random")
    _teacher_pools(p.run)
    job = p._student_job()
    assert job.refresh.mode == "off" and job.train.negatives == "random"
    assert not (p.run / "student" / "pools").exists()


def test_student_matryoshka_weights_go_with_its_dims(tmp_path):
    def job(student):
        cfg = build_config(PipelineConfig, {
            "name": "t", "output_dir": str(tmp_path), "prepare": {"source": "debian"},
            "teacher": {"model": {"name_or_path": "tiny-bert"}},
            "student": {"keep_layers": None, "model": {"name_or_path": "tiny-bert"}, **student}}, "test")
        return Pipeline(cfg)._student_job()

    loss = job({"matryoshka_dims": [32, 16, 8], "matryoshka_weights": [1.0, 2.0, 0.5]}).loss
    assert loss.matryoshka_dims == [32, 16, 8] and loss.matryoshka_weights == [1.0, 2.0, 0.5]
    assert job({"matryoshka_dims": [32, 16]}).loss.matryoshka_weights is None
    with pytest.raises(ValueError, match="matryoshka_weights"):
        job({"matryoshka_dims": [32, 16], "matryoshka_weights": [1.0]})
