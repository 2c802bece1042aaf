"""The student can train on the teacher's last negative pool (student.train.negatives: pool)."""
import json
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


def _scored_teacher_pool(run: Path) -> None:
    from embedray.mining.pool import NegativePool
    from embedray.mining.store import PoolStore

    PoolStore(run / "teacher" / "pools").publish(NegativePool(1, {"q1": [("d1", 0.2)]}, {"q1": {"p1": 0.9}}))


def _fused_pipeline(tmp_path: Path, data: Path, **student) -> Pipeline:
    cfg = build_config(PipelineConfig, {
        "name": "t", "output_dir": str(tmp_path), "prepare": {"source": "beir"},
        "data": {"path": str(data), "dev_split": "dev", "test_split": "test"},
        "teacher": {"model": {"name_or_path": "tiny-bert"}}, "refresh": {"mode": "async"},
        "cross_encoder": {"base_model": "tiny-bert", "dev_rerank_depth": 5},
        "student": {"keep_layers": None, "model": {"name_or_path": "tiny-bert"}, "score_source": "fused",
                    "train": {"negatives": "pool", "num_negatives": 1}, **student}}, "test")
    return Pipeline(cfg)


def test_a_fused_student_chooses_its_weight_on_dev_against_the_trained_teacher(tmp_path, topic_beir, capsys):
    """student.score_source: fused: the weight and temperature are chosen on dev against the
    trained teacher (not the base model the gate used), written once, and the student trains on
    the teacher's cross-encoder-scored pool with them."""
    import shutil

    from sentence_transformers import CrossEncoder

    from embedray.models.bundled import resolve_model

    p = _fused_pipeline(tmp_path, topic_beir)
    shutil.copytree(resolve_model("tiny-bert"), p.run / "teacher" / "final")
    CrossEncoder(str(resolve_model("tiny-bert")), num_labels=1).save(str(p.run / "teacher" / "cross-encoder"))
    _scored_teacher_pool(p.run)
    job = p._student_job()
    chosen = json.loads((p.run / "student" / "fusion_dev.json").read_text())
    assert 0 <= chosen["alpha"] <= 1 and chosen["temperature"] > 0 and chosen["depth"] == 5
    curve = {float(a): v for a, v in chosen["ndcg@10_by_alpha"].items()}
    assert chosen["dev"]["fused"] == pytest.approx(max(curve.values()))  # the best weight on dev
    assert curve[0.0] == pytest.approx(chosen["dev"]["teacher"]) and curve[1.0] == pytest.approx(chosen["dev"]["cross_encoder"])
    assert "fused distillation targets: weight" in capsys.readouterr().out
    assert job.distill.score_source == "fused"
    assert (job.distill.fusion_alpha, job.distill.fusion_temperature) == (chosen["alpha"], chosen["temperature"])
    assert job.refresh.mode == "static" and (p.run / "student" / "pools" / "LATEST").read_text().strip() == "1"
    # Chosen once: a resumed student reads the file instead of re-running the check.
    (p.run / "student" / "fusion_dev.json").write_text(json.dumps({**chosen, "alpha": 0.7, "temperature": 2.0}))
    again = p._student_job()
    assert (again.distill.fusion_alpha, again.distill.fusion_temperature) == (0.7, 2.0)


def test_cross_encoder_targets_need_the_teacher_s_cross_encoder(tmp_path, topic_beir):
    for source in ("fused", "cross_encoder"):
        with pytest.raises(ValueError, match=f"student.score_source: {source} reads the teacher's cross-encoder"):
            build_config(PipelineConfig, {
                "name": "t", "output_dir": str(tmp_path), "prepare": {"source": "debian"},
                "teacher": {"model": {"name_or_path": "tiny-bert"}}, "refresh": {"mode": "off"},
                "student": {"keep_layers": None, "score_source": source}}, "test")


def test_no_fusion_is_chosen_for_a_cross_encoder_the_gate_failed(tmp_path, topic_beir):
    p = _fused_pipeline(tmp_path, topic_beir)
    (p.run / "teacher").mkdir(parents=True)
    (p.run / "teacher" / "cross_encoder_gate.json").write_text(json.dumps({"checked": True, "passed": False,
                                                                            "why": "worse"}))
    assert p._student_fusion() is None and not (p.run / "student" / "fusion_dev.json").exists()
