"""The export stage's ``export.openvino_int8``: the run's model folder gets the calibrated int8
OpenVINO file, checked on the dev split (never test), and the report says what serving gets."""
import json
import shutil
from pathlib import Path

import pytest

from embedray.config import build_config
from embedray.models.backends import OPENVINO_DIR, OPENVINO_INT8_FILE, auto_backend, openvino_int8_passed
from embedray.models.bundled import resolve_model
from embedray.pipeline.config import PipelineConfig
from embedray.pipeline.report import write_report
from embedray.pipeline.stages import Pipeline

ROW = {"ndcg@10": 0.5, "recall@100": 0.9, "mrr@10": 0.45, "docs_per_s": 100.0, "dim": 32}


def _exported(data: Path, out: Path, **export) -> tuple[Pipeline, dict]:
    """A pipeline whose student is tiny-bert, run through its export stage only."""
    cfg = build_config(PipelineConfig, {
        "name": "int8", "output_dir": str(out), "prepare": {"source": "beir"}, "data": {"path": str(data)},
        "teacher": {"model": {"name_or_path": "tiny-bert"}}, "student": {"pca_rotation": False},
        "export": {"openvino_int8": True, "calibration_samples": 8, **export}}, "test")
    pipeline = Pipeline(cfg)
    shutil.copytree(resolve_model("tiny-bert"), pipeline.run / "student" / "final")
    (pipeline.run / "test_results.json").write_text(json.dumps({"trained teacher": ROW, "distilled student": ROW}))
    result = pipeline.stage_export()
    (pipeline.run / "stages").mkdir(exist_ok=True)
    (pipeline.run / "stages" / "export.json").write_text(json.dumps({"stage": "export", "seconds": 1.0, **result}))
    return pipeline, result


def test_the_run_model_gets_an_int8_file_checked_on_dev(topic_beir, tmp_path, capsys):
    pipeline, result = _exported(topic_beir, tmp_path)
    model = pipeline.run / "model"
    assert result["model"] == str(model) and (model / OPENVINO_DIR / OPENVINO_INT8_FILE).is_file()
    quality = result["openvino_int8"]
    assert (quality["split"], quality["queries"]) == ("dev", 8)  # topic_beir's dev split, not its test one
    assert openvino_int8_passed(model) == quality["passed"]
    assert (auto_backend(model)[1] == OPENVINO_INT8_FILE) == quality["passed"]
    said = capsys.readouterr().out
    assert "export: int8 OpenVINO file, calibrated on 8 corpus texts, checked on the dev split" in said
    assert f"export: int8 nDCG@10 {quality['ndcg@10']:.4f} vs fp32 {quality['fp32_ndcg@10']:.4f} on dev" in said
    write_report(pipeline.run, pipeline.cfg)
    report = (pipeline.run / "report.md").read_text()
    assert f"int8 OpenVINO student on dev (8 queries): nDCG@10 {quality['ndcg@10']:.4f}" in report
    # The model folder's own record of what ran on it.
    meta = json.loads((model / "embedray.json").read_text())
    assert meta["export"]["openvino"]["files"][f"{OPENVINO_DIR}/{OPENVINO_INT8_FILE}"]["quality"] == quality


def test_without_a_dev_split_the_file_is_unchecked_and_never_scored_on_test(topic_beir, tmp_path):
    data = tmp_path / "no-dev"
    shutil.copytree(topic_beir, data)
    (data / "qrels" / "dev.tsv").unlink()
    pipeline, result = _exported(data, tmp_path / "runs")
    assert result["openvino_int8"] == {"passed": None, "split": None}
    assert not openvino_int8_passed(pipeline.run / "model")
    write_report(pipeline.run, pipeline.cfg)
    assert "written without a quality check (no dev split)" in (pipeline.run / "report.md").read_text()


def test_the_export_setting_is_checked_and_fingerprinted(topic_beir, tmp_path):
    with pytest.raises(ValueError, match="export.calibration_samples must be >= 1"):
        build_config(PipelineConfig, {"export": {"calibration_samples": 0}}, "test")
    from embedray.pipeline.stages import STAGE_READS

    assert "export" in STAGE_READS["export"][0]  # turning it on re-runs the export stage and the report
