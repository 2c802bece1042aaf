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


def test_a_multi_task_teacher_in_the_pipeline(topic_beir, tmp_path):
    """``teacher.tasks``: the teacher trains the pipeline's data (task ``main``) with another
    retrieval task and a classification task, each retrieval task's negatives mined in its own
    corpus; the student distils the pipeline's task from the teacher's pool (its own ids); the
    report evaluates the other retrieval task on its own test split before and after."""
    second = make_topic_beir(tmp_path / "second", n_topics=24, seed=3)
    labels = _labels(topic_beir, tmp_path / "labels.jsonl")
    cfg = build_config(PipelineConfig, {
        "name": "mt", "output_dir": str(tmp_path / "runs"), "prepare": {"source": "beir"},
        "data": {"path": str(topic_beir)},
        "teacher": {"model": {"name_or_path": "tiny-bert", "query_prompt": "query: "}, "train": TINY_TRAIN,
                    "tasks": [{"name": "second", "data": {"path": str(second)}, "query_prompt": "claim: "},
                              {"name": "sections", "data": {"path": str(topic_beir), "train_labels": str(labels),
                                                            "dev_split": None},
                               "loss": {"name": "classification"}}]},
        "mining": {"k": 10, "num_negatives": 2, "range_min": 0},
        "cross_encoder": {"base_model": "tiny-bert", "max_steps": 2, "max_length": 48, "denoise_margin": -1.0,
                          "fallback_max_score_ratio": 1.0},
        "refresh": {"mode": "static"},
        "student": {"keep_layers": 1, "matryoshka_dims": [32, 16], "pca_rotation": False,
                    "train": {**TINY_TRAIN, "negatives": "pool"}},
        "cluster": {"num_workers": 1}}, "teacher.tasks (tiny)")
    report = Pipeline(cfg).run_all()
    run = tmp_path / "runs" / "mt"
    teacher_cfg = json.loads((run / "teacher" / "final" / "training_config.json").read_text())
    assert [t["name"] for t in teacher_cfg["tasks"]] == ["main", "second", "sections"]
    assert [t["negatives"] for t in teacher_cfg["tasks"]] == ["pool", "pool", "none"]
    pool_v1 = json.loads((run / "teacher" / "initial_pool.json").read_text())
    assert set(pool_v1["tasks"]) == {"main", "second"} and 0 < pool_v1["tasks"]["second"]["queries_mined"] <= 16

    from embedray.mining.store import PoolStore

    student_pools = PoolStore(run / "student" / "pools")
    seeded = student_pools.load(student_pools.latest_version())
    assert seeded.negatives and not any("::" in q or any("::" in d for d, _ in negs)
                                        for q, negs in seeded.negatives.items())
    assert set(seeded.negatives) <= {f"q{i}" for i in range(48)}  # the main task's training queries

    second_row = report["tasks"]["second"]
    assert second_row["split"] == "test" and second_row["queries"] == 4
    assert {"base teacher", "trained teacher"} <= set(second_row) and "sections" not in report["tasks"]
    md = (run / "report.md").read_text()
    assert "The teacher's other tasks" in md and "| second | test | 4 |" in md
    # The cross-encoder gate: checked on both retrieval tasks' dev splits; the report follows it.
    verdict = json.loads((run / "teacher" / "cross_encoder_gate.json").read_text())
    assert verdict["checked"] and set(verdict["dev"]) == {"main", "second"}
    assert any(r.startswith("teacher + cross-encoder rerank") for r in report["rows"]) is (
        verdict["passed"] and json.loads((run / "rerank_dev.json").read_text())["mode"] is not None)
    assert ("Cross-encoder gated off" in md) is not verdict["passed"]
    assert json.loads((run / "student" / "cross_encoder_gate.json").read_text()) == verdict
    st = SentenceTransformer(str(run / "teacher" / "final"), device="cpu")
    assert st.prompts["second-query"] == "claim: " and st.prompts["main-query"] == "query: "
