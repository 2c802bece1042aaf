"""A pipeline re-run redoes exactly the stages whose config or input data changed, and every stage
that reads from them; an unchanged re-run skips everything; an interrupted stage resumes.

The stages themselves are replaced by recorders (the bookkeeping is what is tested here); the
pipeline, its config, its markers and a real BEIR folder are real."""
import json
from pathlib import Path

import pytest

from embedray.config import build_config
from embedray.pipeline.config import PipelineConfig
from embedray.pipeline.stages import STAGES, Pipeline
from tests.conftest import make_topic_beir


class Interrupted(RuntimeError):
    pass


def _config(data: Path, out: Path, **over) -> PipelineConfig:
    cfg = {"name": "fp", "output_dir": str(out), "prepare": {"source": "beir"},
           "data": {"path": str(data)},
           "teacher": {"model": {"name_or_path": "tiny-bert"}, "train": {"max_steps": 8, "checkpoint_every": 4}},
           "cluster": {"num_workers": 2, "num_to_keep": 2}, "eval": {"rerank_depth": 10},
           "refresh": {"mode": "async"}}
    for dotted, value in over.items():
        *parents, leaf = dotted.split(".")
        node = cfg
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return build_config(PipelineConfig, cfg, "test")


def _run(cfg: PipelineConfig, monkeypatch, fail: str | None = None) -> list[str]:
    """Run the pipeline with recording stages; the teacher leaves a checkpoint as training does."""
    p, calls = Pipeline(cfg), []

    def stage(name):
        def run():
            calls.append(name)
            if name == "teacher":
                ckpt = p.run / "teacher" / "checkpoint-000004"
                ckpt.mkdir(parents=True, exist_ok=True)
                (ckpt / "seen_by").write_text(str(len(calls)))
            if name == fail:
                raise Interrupted(name)
            if name == "report":
                (p.run / "report.json").write_text(json.dumps({"paths": {}}))
            return {}
        return run

    for name in STAGES:
        monkeypatch.setattr(p, f"stage_{name}", stage(name))
    try:
        p.run_all()
    except Interrupted:
        pass
    return calls


@pytest.fixture
def beir(tmp_path):
    return make_topic_beir(tmp_path / "beir", n_topics=12)


def test_unchanged_rerun_skips_and_changed_config_reruns_the_stage_and_what_follows(beir, tmp_path, monkeypatch,
                                                                                   capsys):
    out = tmp_path / "runs"
    assert _run(_config(beir, out), monkeypatch) == STAGES
    marker = json.loads((out / "fp" / "stages" / "teacher.json").read_text())
    assert len(marker["fingerprint"]) == 64 and marker["inputs"]["config"]["teacher.train.max_steps"] == 8
    capsys.readouterr()

    assert _run(_config(beir, out), monkeypatch) == []
    assert capsys.readouterr().out.count("done earlier, skipped") == len(STAGES)

    # Settings that change no result: output-side names, CPUs, retries, logging, checkpoint cadence.
    same = _config(beir, out, **{"cluster.num_to_keep": 5, "cluster.max_failures": 0, "cluster.cpus_per_worker": 0.5,
                                 "teacher.train.log_every": 1, "teacher.train.checkpoint_every": 2,
                                 "teacher.train.num_threads": 1, "refresh.num_cpus": 0.5})
    assert _run(same, monkeypatch) == []

    old_checkpoint = out / "fp" / "teacher" / "checkpoint-000004" / "seen_by"
    longer = _config(beir, out, **{"teacher.train.max_steps": 12})
    assert _run(longer, monkeypatch) == ["teacher", "student", "evaluate", "export", "report"]
    said = capsys.readouterr().out
    assert ("teacher: config changed (teacher.train.max_steps 8 → 12), re-running teacher, student, evaluate, "
            "export, report") in said
    assert "prepare: done earlier, skipped" in said and "baseline: done earlier, skipped" in said
    # The old teacher's checkpoints were moved aside before the stage ran: never resumed from.
    stale = out / "fp" / ".stale" / "teacher" / "teacher" / "checkpoint-000004" / "seen_by"
    assert stale.read_text() == "3" and old_checkpoint.read_text() == "1"
    assert _run(longer, monkeypatch) == []

    # A baseline setting re-runs the baseline and what reads it, not the training stages.
    assert _run(_config(beir, out, **{"teacher.train.max_steps": 12, "eval.extra_models": ["tiny-bert"]}),
                monkeypatch) == ["baseline", "evaluate", "export", "report"]
    assert "baseline: config changed (eval.extra_models [] → [\"tiny-bert\"]), re-running baseline, evaluate, " \
           "export, report" in capsys.readouterr().out


def test_changed_input_data_reruns_everything(beir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "runs"
    _run(_config(beir, out), monkeypatch)
    with open(beir / "corpus.jsonl", "a") as f:
        f.write(json.dumps({"_id": "new", "title": "", "text": "one more document"}) + "\n")
    capsys.readouterr()
    assert _run(_config(beir, out), monkeypatch) == STAGES
    assert "prepare: input data changed (corpus.jsonl), re-running " + ", ".join(STAGES) in capsys.readouterr().out


def test_interrupted_stage_resumes_unless_its_config_changed_meanwhile(beir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "runs"
    assert _run(_config(beir, out), monkeypatch, fail="teacher") == ["prepare", "baseline", "teacher"]
    checkpoint = out / "fp" / "teacher" / "checkpoint-000004"
    assert _run(_config(beir, out), monkeypatch, fail="teacher") == ["teacher"]  # same config: resumes
    assert (checkpoint / "seen_by").exists() and not (out / "fp" / ".stale").exists()
    capsys.readouterr()
    assert _run(_config(beir, out, **{"teacher.train.lr": 1e-3}), monkeypatch) == STAGES[2:]
    said = capsys.readouterr().out
    assert ("teacher: config changed (teacher.train.lr 2e-05 → 0.001) since it was interrupted, "
            "re-running teacher") in said
    assert (out / "fp" / ".stale" / "teacher" / "teacher" / "checkpoint-000004").is_dir()


def test_markers_without_a_fingerprint_rerun(beir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "runs"
    _run(_config(beir, out), monkeypatch)
    for name in STAGES:  # as an older embedray wrote them
        marker = out / "fp" / "stages" / f"{name}.json"
        marker.write_text(json.dumps({"stage": name, "seconds": 1.0}))
    capsys.readouterr()
    assert _run(_config(beir, out), monkeypatch) == STAGES
    assert "prepare: its marker has no fingerprint" in capsys.readouterr().out


def test_adding_a_pretrain_stage_reruns_the_teacher_and_what_follows_not_the_baseline(beir, tmp_path, monkeypatch,
                                                                                      capsys):
    from embedray.pipeline.stages import ALL_STAGES

    out = tmp_path / "runs"
    assert _run(_config(beir, out), monkeypatch) == STAGES  # no pretrain section: no pretrain stage
    capsys.readouterr()
    two_stage = _config(beir, out, **{"pretrain.builder": "span"})
    monkeypatch.setattr(Pipeline, "stage_pretrain", lambda self: {}, raising=True)
    calls = _run(two_stage, monkeypatch)
    assert calls == [s for s in ALL_STAGES if s not in ("prepare", "baseline", "pretrain")]
    said = capsys.readouterr().out
    assert "teacher: pretrain changed, re-running teacher, student, evaluate, export, report" in said
    assert (out / "fp" / "stages" / "pretrain.json").exists()
    assert _run(two_stage, monkeypatch) == []
