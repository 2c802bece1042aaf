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


def _ray_copy(tmp_path) -> Path:
    """A folder laid out as Ray unpacks a job's ``--working-dir``."""
    copy = tmp_path / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    (copy / "jobs").mkdir(parents=True)
    return copy


def test_a_relative_output_in_ray_s_working_dir_copy_stops_with_the_fix(tmp_path, monkeypatch):
    import pytest

    from embedray.cluster.shared import check_output_kept, ray_job_copy

    copy = _ray_copy(tmp_path)
    assert ray_job_copy(copy / "jobs") == copy and ray_job_copy(tmp_path) is None
    with pytest.raises(ValueError, match=r"output_dir: 'runs' lies in Ray's temporary copy .*output_dir=\$PWD/runs"):
        check_output_kept("output_dir", "runs", cwd=copy)
    with pytest.raises(ValueError, match="cluster.storage_path"):
        check_output_kept("cluster.storage_path", str(copy / "runs"), cwd=tmp_path)
    # kept: an absolute path elsewhere, a URI, and any relative path outside a Ray copy
    check_output_kept("output_dir", str(tmp_path / "runs"), cwd=copy)
    check_output_kept("output_dir", "s3://bucket/runs", cwd=copy)
    check_output_kept("output_dir", "runs", cwd=tmp_path)
    check_output_kept("output_dir", "../../../../runs", cwd=copy)


def test_the_cli_says_so_before_anything_runs(tmp_path, monkeypatch, capsys):
    from embedray.cli import main

    copy = _ray_copy(tmp_path)
    configs = Path(__file__).resolve().parents[2] / "jobs" / "configs"
    monkeypatch.chdir(copy)
    for command, recipe, setting in [("pipeline", "tiny-test.yaml", "output_dir"),
                                     ("train", "train-flag.yaml", "cluster.storage_path")]:
        assert main([command, str(configs / recipe), f"{setting}=runs"]) == 2
        assert f"{setting}: 'runs' lies in Ray's temporary copy" in capsys.readouterr().err
    assert not (copy / "runs").exists()
