"""The pipeline as a user submits it: `ray job submit` to a real local Ray head on 127.0.0.1."""
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    state = tmp_path_factory.mktemp("ray-head")
    # Ray's socket paths must stay under ~107 characters: a short temp root, not pytest's
    short = tempfile.mkdtemp(prefix="er-", dir="/tmp")
    env = {**os.environ, "EMBEDRAY_RAY_STATE": str(state), "EMBEDRAY_RAY_TMP": short}
    subprocess.run(["scripts/ray-head.sh", "start"], cwd=REPO, env=env, check=True, capture_output=True)
    exports = (state / "env").read_text().split()[1:]
    env.update(dict(kv.split("=", 1) for kv in exports))
    yield env
    subprocess.run(["scripts/ray-head.sh", "stop"], cwd=REPO, env=env, check=False)
    shutil.rmtree(short, ignore_errors=True)


def _submit(env, *args, entrypoint=("jobs/pipeline.py",)):
    cmd = [str(REPO / ".venv/bin/ray"), "job", "submit", "--working-dir", ".", "--",
           "python", *entrypoint, "jobs/configs/tiny-test.yaml", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def test_pipeline_artifacts_and_resume_after_kill(ray_head, topic_beir, tmp_path):
    common = [f"data.path={topic_beir}", f"output_dir={tmp_path}"]
    # 1) the job dies mid-teacher (a worker killed, no retries left): the submission fails
    first = _submit(ray_head, *common, "cluster.max_failures=0",
                    entrypoint=("tests/faults.py", "--kill-teacher-at", "6"))
    assert first.returncode != 0, first.stdout[-2000:]
    run = tmp_path / "tiny"
    assert (run / "stages" / "baseline.json").exists() and not (run / "stages" / "teacher.json").exists()
    assert (run / "teacher" / "checkpoint-000004" / "manifest-rank1.json").exists()  # every rank's files

    # 2) re-submitting the same name skips finished stages and resumes the teacher at step 4
    second = _submit(ray_head, *common)
    assert second.returncode == 0, second.stdout[-3000:]
    assert "prepare: done earlier, skipped" in second.stdout
    assert "baseline: done earlier, skipped" in second.stdout
    teacher = json.loads((run / "teacher" / "training_summary_report.json").read_text())
    assert teacher["steps"] == 8 and teacher["steps_this_session"] == 4

    for artifact in ["report.md", "report.json", "plots/quality.png", "model/modules.json",
                     "model/embedray.json", "teacher/final/modules.json", "teacher/cross-encoder/config.json",
                     "teacher/pools/LATEST", "teacher/indexes/LATEST", "student/final/modules.json",
                     "student/rotated/modules.json",
                     "test_results.json", "baseline.json"]:
        assert (run / artifact).exists(), artifact
    report = json.loads((run / "report.json").read_text())
    rows = report["rows"]
    # where things ran: the evaluations as Ray tasks, not in the driver (this submission resumed the
    # teacher, whose pool v1 the first one had mined: its placement lists this session's processes)
    assert {"refresher", "worker-0", "worker-1"} == set(json.loads((run / "teacher" / "placement.json").read_text()))
    assert {"baseline", "evaluate", "student-rotation"} <= set(json.loads((run / "placement.json").read_text()))
    # the async refresher yields the CPU to the trainers beside it (its process's nice value)
    where = json.loads((run / "teacher" / "placement.json").read_text())
    assert where["refresher"]["niceness"] > where["worker-0"]["niceness"] == where["worker-1"]["niceness"]
    assert {"base student", "base teacher", "trained teacher",
            "distilled student", "distilled student @16", "distilled student @8"} <= set(rows)
    # The cross-encoder gate decided on dev; the report follows its verdict either way.
    verdict = json.loads((run / "teacher" / "cross_encoder_gate.json").read_text())
    assert verdict["checked"] and any(r.startswith("teacher + cross-encoder rerank") for r in rows) is (
        verdict["passed"] and json.loads((run / "rerank_dev.json").read_text())["mode"] is not None)
    assert ("Cross-encoder gated off" in (run / "report.md").read_text()) is not verdict["passed"]
    meta = json.loads((run / "model" / "embedray.json").read_text())
    assert meta["matryoshka_dims"][:3] == [32, 16, 8] and "test" in meta["metrics"]
    # the exported student is the one rotated onto its principal axes (fit on training texts)
    assert meta["rotation"]["kind"] == "pca" and meta["rotation"]["fit_texts"] > 10
    assert "Dense" in (run / "model" / "modules.json").read_text()
    assert "principal axes" in (run / "report.md").read_text()
    from sentence_transformers import SentenceTransformer
    assert SentenceTransformer(str(run / "model")).encode(["hello"]).shape == (1, 32)

    # 3) a longer teacher: the teacher and every stage after it run again, from scratch (the old
    # teacher's checkpoints moved aside, never resumed from); prepare and the baseline are kept.
    def fingerprints():
        return {s: json.loads((run / "stages" / f"{s}.json").read_text())["fingerprint"]
                for s in ("prepare", "baseline", "teacher", "student", "evaluate", "export", "report")}

    before = fingerprints()
    third = _submit(ray_head, *common, "teacher.train.max_steps=10")
    assert third.returncode == 0, third.stdout[-3000:]
    assert ("teacher: config changed (teacher.train.max_steps 8 → 10), re-running teacher, student, evaluate, "
            "export, report") in third.stdout
    assert "baseline: done earlier, skipped" in third.stdout
    teacher = json.loads((run / "teacher" / "training_summary_report.json").read_text())
    assert teacher["steps"] == 10 and teacher["steps_this_session"] == 10
    assert (run / ".stale" / "teacher" / "teacher" / "checkpoint-000008").is_dir()
    after = fingerprints()
    assert [s for s in before if before[s] != after[s]] == ["teacher", "student", "evaluate", "export", "report"]


def test_a_relative_output_dir_under_ray_job_submit_stops_before_any_stage(ray_head, topic_beir):
    # `--working-dir .` runs the driver in Ray's own copy of the folder: `runs` would be lost there
    job = _submit(ray_head, f"data.path={topic_beir}", "output_dir=runs")
    assert job.returncode != 0
    assert "output_dir: 'runs' lies in Ray's temporary copy of the job's working directory" in job.stdout, \
        job.stdout[-2000:]
    assert "output_dir=$PWD/runs" in job.stdout and "[embedray pipeline] prepare" not in job.stdout
