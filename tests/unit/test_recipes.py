"""Every shipped recipe loads into its config type (typos and bad values fail here, not in a job)."""
from pathlib import Path

import warnings

import pytest

from embedray.config import ConfigError, load_config
from embedray.pipeline.config import PipelineConfig, TrainJobConfig

RECIPES = sorted((Path(__file__).resolve().parents[2] / "jobs" / "configs").glob("*.yaml"))


def _kind(path: Path):
    return TrainJobConfig if path.name.startswith(("train-", "multitask-")) else PipelineConfig


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_loads(recipe):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a shipped recipe uses no renamed key
        cfg = load_config(_kind(recipe), recipe)
    assert cfg is not None


def test_there_are_recipes_for_each_use():
    names = {p.name for p in RECIPES}
    assert {"demo-cpu.yaml", "gpu.yaml", "byod-flag.yaml", "beir-scifact.yaml", "train-debian-cpu.yaml",
            "multitask-cpu.yaml", "two-stage-cpu.yaml"} <= names


def test_a_typo_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: {train: {max_stepz: 3}}\n")
    with pytest.raises(ConfigError, match=r"teacher.train.max_stepz.*did you mean 'max_steps'"):
        load_config(PipelineConfig, bad)


def test_a_renamed_key_loads_with_a_warning_naming_its_new_place(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("teacher: {name_or_path: tiny-bert, query_prefix: 'q: '}\n"
                   "teacher_loss: {temperature: 0.1}\nteacher_train: {max_steps: 3}\n"
                   "mining: {corpus_prompt: 'd: '}\n")
    with pytest.warns(FutureWarning) as seen:
        cfg = load_config(PipelineConfig, old, ["teacher_train.lr=1e-3"])
    said = " | ".join(str(w.message) for w in seen)
    for moved in ("'teacher_loss' is now 'teacher.loss'", "'teacher_train' is now 'teacher.train'",
                  "'teacher.name_or_path' is now 'teacher.model.name_or_path'",
                  "'teacher.query_prefix' is now 'teacher.model.query_prompt'",
                  "'mining.corpus_prompt' is now 'mining.doc_prompt'"):
        assert moved in said
    new = tmp_path / "new.yaml"
    new.write_text("teacher: {model: {name_or_path: tiny-bert, query_prompt: 'q: '}, loss: {temperature: 0.1},\n"
                   "          train: {max_steps: 3, lr: 1.0e-3}}\nmining: {doc_prompt: 'd: '}\n")
    assert cfg == load_config(PipelineConfig, new)


def test_a_key_set_under_both_names_is_an_error(tmp_path):
    both = tmp_path / "both.yaml"
    both.write_text("teacher: {train: {max_steps: 3}}\nteacher_train: {max_steps: 4}\n")
    with pytest.raises(ConfigError, match=r"both 'teacher_train' and its new name 'teacher.train'"), \
            pytest.warns(FutureWarning):
        load_config(PipelineConfig, both)
