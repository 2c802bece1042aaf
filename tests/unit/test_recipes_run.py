"""The multi-task and two-stage recipes run as shipped, shrunk to tiny sizes (tiny-bert, a few
steps, the synthetic topic data in place of Debian and SciFact), in one process."""
import json
from pathlib import Path

import yaml
from sentence_transformers import SentenceTransformer

from embedray.config import build_config, merge
from embedray.pipeline.config import PipelineConfig, TrainJobConfig
from embedray.pipeline.runtime import run_local
from embedray.pipeline.stages import Pipeline
from tests.conftest import make_topic_beir

RECIPES = Path(__file__).resolve().parents[2] / "jobs" / "configs"
TINY_TRAIN = {"max_steps": 6, "batch_size": 4, "max_doc_length": 48, "max_query_length": 32, "checkpoint_every": 3,
              "num_threads": None, "precision": "fp32"}


def _labels(beir: Path, out: Path) -> Path:
    docs = [json.loads(line) for line in (beir / "corpus.jsonl").read_text().splitlines()]
    out.write_text("".join(json.dumps({"_id": d["_id"], "label": d["text"].split()[3]}) + "\n"
                           for d in docs if d["_id"].startswith("d")))
    return out


def test_multitask_recipe_runs_and_exports_each_tasks_instruction(topic_beir, tmp_path):
    recipe = yaml.safe_load((RECIPES / "multitask-cpu.yaml").read_text())
    second = make_topic_beir(tmp_path / "second", n_topics=24, seed=3)
    debian, sections, scifact = recipe["tasks"]
    debian["data"]["path"] = sections["data"]["path"] = str(topic_beir)
    sections["data"]["train_labels"] = str(_labels(topic_beir, tmp_path / "labels.jsonl"))
    scifact["data"]["path"] = str(second)
    recipe = merge(recipe, {"model": {"name_or_path": "tiny-bert"}, "train": TINY_TRAIN,
                            "cluster": {"storage_path": str(tmp_path / "runs"), "run_name": "mt"}})
    summary = run_local(build_config(TrainJobConfig, recipe, "multitask-cpu.yaml (tiny)"))
    assert summary["steps"] == 6 and {"debian/ndcg@10", "ndcg@10"} <= set(summary["dev_after"])
    st = SentenceTransformer(summary["final_model"], device="cpu")
    assert st.prompts["debian-query"] == "Find the Debian package: "
    assert st.prompts["sections-query"] == "Classify the Debian section: "
    assert st.prompts["scifact-query"] == "Find evidence for the claim: "


def test_two_stage_recipe_pretrains_then_fine_tunes_from_those_weights(topic_beir, tmp_path, capsys):
    recipe = yaml.safe_load((RECIPES / "two-stage-cpu.yaml").read_text())
    tiny = {"output_dir": str(tmp_path / "runs"), "prepare": {"source": "beir"}, "data": {"path": str(topic_beir)},
            "pretrain": {"train": {**TINY_TRAIN, "batch_size": 8, "mini_batch_size": 4}},
            "teacher": {"model": {"name_or_path": "tiny-bert"}, "train": TINY_TRAIN},
            "mining": {"k": 10, "num_negatives": 2},
            "cross_encoder": {"base_model": "tiny-bert", "max_steps": 2, "max_length": 48},
            "refresh": {"mode": "static"},
            "student": {"keep_layers": 1, "max_seq_length": None, "matryoshka_dims": [32, 16], "train": TINY_TRAIN},
            "cluster": {"num_workers": 1}}
    for section in ("pretrain", "teacher", "student"):
        recipe[section]["loss"].pop("gather_across_workers", None)
    cfg = build_config(PipelineConfig, merge(recipe, tiny), "two-stage-cpu.yaml (tiny)")
    report = Pipeline(cfg).run_all()
    run = tmp_path / "runs" / "two-stage-cpu"
    rows = report["rows"]
    assert list(rows)[:2] == ["base student", "base teacher"] and "pre-trained teacher" in rows
    assert list(rows).index("pre-trained teacher") < list(rows).index("trained teacher")
    pairs = [json.loads(line) for line in (run / "pretrain-data" / "train_pairs.jsonl").read_text().splitlines()]
    assert len(pairs) >= 40  # one span pair per corpus description long enough to cut
    assert json.loads((run / "pretrain" / "training_summary_report.json").read_text())["steps"] == 6
    teacher_cfg = json.loads((run / "teacher" / "final" / "training_config.json").read_text())
    assert teacher_cfg["model"]["name_or_path"] == str(run / "pretrain" / "final")
    assert "pre-trained teacher" in (run / "report.md").read_text()
    capsys.readouterr()

    # Re-submitted unchanged: every stage is skipped; a longer pre-training re-runs it and what reads it.
    Pipeline(cfg).run_all()
    assert capsys.readouterr().out.count("done earlier, skipped") == 8
    longer = build_config(PipelineConfig, merge(merge(recipe, tiny), {"pretrain": {"train": {"max_steps": 7}}}), "x")
    Pipeline(longer).run_all()
    said = capsys.readouterr().out
    assert "prepare: done earlier, skipped" in said and "baseline: done earlier, skipped" in said
    assert "pretrain: config changed (pretrain.train.max_steps 6 → 7), re-running pretrain, teacher" in said
