"""The pipeline rotates the distilled student onto principal axes fit on training texts only."""
import json
import shutil
from pathlib import Path

import pytest

from embedray.config import build_config
from embedray.data.beir import load_beir
from embedray.models.bundled import resolve_model
from embedray.pipeline.config import PipelineConfig, StudentConfig
from embedray.pipeline.stages import Pipeline


def _pipeline(tmp_path: Path, data: Path, **student) -> Pipeline:
    cfg = build_config(PipelineConfig, {
        "name": "t", "output_dir": str(tmp_path), "prepare": {"source": "beir"},
        "data": {"path": str(data)}, "teacher": {"model": {"name_or_path": "tiny-bert"}},
        "student": {"keep_layers": None, "matryoshka_dims": [32, 16, 8], **student}}, "test")
    return Pipeline(cfg)


def test_rotation_fits_on_training_texts_only(tmp_path, topic_beir, monkeypatch):
    p = _pipeline(tmp_path, topic_beir)
    shutil.copytree(resolve_model("tiny-bert"), p.run / "student" / "final")
    seen = {}

    def fake_rotate(model_dir, texts, out_dir, batch_size=64):
        seen.update(model_dir=Path(model_dir), texts=list(texts), out_dir=Path(out_dir))
        return {"kind": "pca", "fit_texts": len(texts), "explained_variance": {"8": 0.5}}

    monkeypatch.setattr("embedray.models.rotation.rotate_model", fake_rotate)
    p._rotate_student()
    assert seen["model_dir"] == p.run / "student" / "final"
    assert seen["out_dir"] == p.run / "student" / "rotated" == p._student_model()
    train = load_beir(topic_beir, "train")
    expected = {train.queries[q] for q in train.qrels} | {train.corpus[d].text_for_model
                                                          for docs in train.qrels.values() for d in docs}
    assert set(seen["texts"]) == expected and len(seen["texts"]) == len(expected)
    for split in ("dev", "test"):
        held_out = load_beir(topic_beir, split)
        assert not set(seen["texts"]) & {held_out.queries[q] for q in held_out.qrels}


def test_rotation_sample_is_capped_and_fixed(tmp_path, topic_beir, monkeypatch):
    p = _pipeline(tmp_path, topic_beir, pca_max_texts=10)
    calls = []
    monkeypatch.setattr("embedray.models.rotation.rotate_model",
                        lambda m, texts, o, batch_size=64: calls.append(list(texts)) or
                        {"kind": "pca", "fit_texts": len(texts), "explained_variance": {}})
    p._rotate_student()
    p._rotate_student()
    assert len(calls[0]) == 10 and calls[0] == calls[1]


def test_rotated_student_end_to_end(tmp_path, topic_beir):
    p = _pipeline(tmp_path, topic_beir)
    shutil.copytree(resolve_model("tiny-bert"), p.run / "student" / "final")
    info = p._rotate_student()
    meta = json.loads((p._student_model() / "embedray.json").read_text())
    assert meta["rotation"] == info and info["fit_texts"] == 64  # 32 train queries + 32 documents


@pytest.mark.parametrize("student, rotates", [
    ({}, True), ({"pca_rotation": False}, False), ({"matryoshka_dims": [32]}, False),
    ({"matryoshka_dims": None}, False)])
def test_rotation_only_with_several_dims(student, rotates):
    cfg = StudentConfig(**student)
    assert cfg.rotates is rotates


def test_pca_max_texts_is_checked():
    with pytest.raises(ValueError, match="pca_max_texts must be >= 2"):
        StudentConfig(pca_max_texts=1)
