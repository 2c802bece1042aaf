"""The pipeline's prepare stage on FlagEmbedding files: negatives, scores and prompts reach the
training pairs, and a test query that is also a training query is dropped and reported."""
import json

from embedray.config import build_config
from embedray.pipeline.config import PipelineConfig
from embedray.pipeline.stages import Pipeline
from tests.conftest import make_topic_flag


def test_prepare_keeps_what_flag_rows_carry_and_reports_leakage(topic_beir, tmp_path, capsys):
    files = make_topic_flag(topic_beir, tmp_path / "flag", leak=1)
    cfg = build_config(PipelineConfig, {
        "name": "byod", "output_dir": str(tmp_path / "runs"),
        "prepare": {"source": "flag", "flag_train": str(files["train"]), "flag_dev": str(files["dev"]),
                    "flag_test": str(files["test"])},
        "teacher": {"model": {"name_or_path": "tiny-bert"}}}, "test")
    p = Pipeline(cfg)
    out = p.stage_prepare()
    said = capsys.readouterr().out
    assert "leakage: 1 test query also in train, dropped from test" in said
    assert out["leaked_queries"] == {"test": 1} and out["queries"] == {"train": 33, "dev": 8, "test": 7}
    assert out["given_negatives"] == out["scored_pairs"] == out["train_pairs"] == 33
    job = p._teacher_job()
    assert job.data.train_pairs == str(p.data_dir / "train_pairs.jsonl")
    row = json.loads((p.data_dir / "train_pairs.jsonl").read_text().splitlines()[0])
    assert len(row["neg_ids"]) == 6 and row["neg_scores"][0] == 0.0
