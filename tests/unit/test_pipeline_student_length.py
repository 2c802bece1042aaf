"""student.max_seq_length: the layer-reduced student reads at most that many tokens, everywhere."""
import shutil

import pytest
from sentence_transformers import SentenceTransformer

from embedray.config import build_config
from embedray.models.bundled import resolve_model
from embedray.pipeline.config import PipelineConfig, StudentConfig
from embedray.pipeline.stages import Pipeline


def test_base_and_distilled_student_carry_the_cap(tmp_path, topic_beir):
    cfg = build_config(PipelineConfig, {
        "name": "t", "output_dir": str(tmp_path), "prepare": {"source": "beir"},
        "data": {"path": str(topic_beir)}, "teacher": {"model": {"name_or_path": "tiny-bert"}},
        "student": {"keep_layers": [1], "max_seq_length": 16, "matryoshka_dims": [32, 16]}}, "test")
    p = Pipeline(cfg)
    base = p._base_student()                              # the baseline's "base student" row
    assert SentenceTransformer(base, device="cpu").max_seq_length == 16
    shutil.copytree(resolve_model("tiny-bert"), p.run / "teacher" / "final")
    job = p._student_job()
    assert job.model.max_seq_length == 16                  # training and its dev evaluation
    assert SentenceTransformer(job.model.name_or_path, device="cpu").max_seq_length == 16
    assert SentenceTransformer(str(resolve_model("tiny-bert")), device="cpu").max_seq_length != 16


def test_every_layer_with_a_cap_is_still_a_capped_copy(tmp_path, topic_beir):
    cfg = build_config(PipelineConfig, {
        "name": "t", "output_dir": str(tmp_path), "prepare": {"source": "beir"},
        "data": {"path": str(topic_beir)}, "teacher": {"model": {"name_or_path": "tiny-bert"}},
        "student": {"keep_layers": 2, "max_seq_length": 16, "matryoshka_dims": [32, 16]}}, "test")
    base = Pipeline(cfg)._base_student()
    assert base != "tiny-bert" and SentenceTransformer(base, device="cpu").max_seq_length == 16


def test_cap_is_checked():
    with pytest.raises(ValueError, match="max_seq_length must be >= 1"):
        StudentConfig(max_seq_length=0)
    with pytest.raises(ValueError, match="set student.model.max_seq_length"):
        StudentConfig(keep_layers=None, max_seq_length=128)
