"""Relative paths in a recipe mean the driver's working directory, also on Ray workers."""
from pathlib import Path

from embedray.cluster.train import absolute_paths
from embedray.config import build_config
from embedray.pipeline.config import TrainJobConfig


def test_relative_paths_are_resolved_on_the_driver(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "pairs.jsonl").write_text("")
    monkeypatch.chdir(tmp_path)
    job = build_config(TrainJobConfig, {"data": {"path": "data", "train_pairs": "data/pairs.jsonl"},
                                        "cluster": {"storage_path": "runs"}})
    fixed = absolute_paths(job)
    assert fixed.data.path == str(tmp_path / "data")
    assert fixed.data.train_pairs == str(tmp_path / "data" / "pairs.jsonl")
    assert fixed.cluster.storage_path == str(tmp_path / "runs")
    assert fixed.model.name_or_path == "minilm-l6"  # bundled names stay names
    assert job.data.path == "data"  # the caller's config is not modified
    assert Path(fixed.data.path).is_absolute()
