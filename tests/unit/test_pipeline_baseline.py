"""The baseline stage evaluates a base model once when student and teacher start from it."""
from pathlib import Path

import pytest

from embedray.cluster.pipeline import Pipeline
from embedray.cluster.pipeline_config import PipelineConfig
from embedray.config import build_config


def _pipeline(tmp_path: Path, keep_layers) -> Pipeline:
    cfg = build_config(PipelineConfig, {"name": "t", "output_dir": str(tmp_path), "prepare": {"source": "debian"},
                                        "teacher": {"name_or_path": "tiny-bert"},
                                        "student": {"keep_layers": keep_layers}}, "test")
    return Pipeline(cfg)


@pytest.mark.parametrize("keep_layers, calls", [(2, ["tiny-bert"]), (1, ["base-student", "tiny-bert"])])
def test_baseline_evaluates_a_shared_base_model_once(tmp_path, monkeypatch, keep_layers, calls):
    p = _pipeline(tmp_path, keep_layers)
    seen = []

    def fake_eval(name_or_path, **_):  # isolates the stage's bookkeeping from retrieval
        seen.append(Path(str(name_or_path)).name)
        return {"ndcg@10": 0.5 + 0.1 * len(seen)}

    monkeypatch.setattr(p, "_evaluate_model", fake_eval)
    rows = p.stage_baseline()
    assert seen == calls
    if len(calls) == 1:
        assert rows["base student"] == rows["base teacher"] and rows["base student"] is not rows["base teacher"]
    else:
        assert rows["base student"] != rows["base teacher"]
