"""Every shipped recipe loads into its config type (typos and bad values fail here, not in a job)."""
from pathlib import Path

import pytest

from embedray.config import ConfigError, load_config
from embedray.pipeline.config import PipelineConfig, TrainJobConfig

RECIPES = sorted((Path(__file__).resolve().parents[2] / "jobs" / "configs").glob("*.yaml"))


def _kind(path: Path):
    return TrainJobConfig if path.name.startswith("train-") else PipelineConfig


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_loads(recipe):
    cfg = load_config(_kind(recipe), recipe)
    assert cfg is not None


def test_there_are_recipes_for_each_use():
    names = {p.name for p in RECIPES}
    assert {"demo-cpu.yaml", "gpu.yaml", "byod-flag.yaml", "beir-scifact.yaml", "train-debian-cpu.yaml"} <= names


def test_a_typo_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher_train: {max_stepz: 3}\n")
    with pytest.raises(ConfigError, match=r"teacher_train.max_stepz.*did you mean 'max_steps'"):
        load_config(PipelineConfig, bad)
