"""Several tasks in one run (tiny-bert, in one process): one task per batch by weight, each task's
own prompts, objective and negatives, exact resume with the task cursor, prompts in the export,
per-task dev metrics, a classifier head per classification task."""
import json
from collections import Counter

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from embedray.config import ConfigError, build_config
from embedray.pipeline.config import TrainJobConfig
from embedray.pipeline.runtime import run_local
from embedray.training.loop import Hooks
from embedray.training.tasks import TaskSchedule, load_tasks
from tests.conftest import make_topic_beir
from tests.faults import Crash, crash_at


@pytest.fixture(scope="module")
def second_beir(tmp_path_factory):
    return make_topic_beir(tmp_path_factory.mktemp("second_beir"), n_topics=36, seed=1)


@pytest.fixture(scope="module")
def labels(topic_beir, tmp_path_factory):
    rows = []
    for line in (topic_beir / "corpus.jsonl").read_text().splitlines():
        doc = json.loads(line)
        if doc["_id"].startswith("d"):
            rows.append({"_id": doc["_id"], "label": doc["text"].split()[3], "split": "train"})
    path = tmp_path_factory.mktemp("labels") / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _tasks(topic_beir, second_beir, labels):
    return [
        {"name": "topics", "data": {"path": str(topic_beir)}, "loss": {"name": "infonce", "temperature": 0.1},
         "weight": 2.0, "query_prompt": "Find the package: ", "negatives": "random"},
        {"name": "sections", "data": {"path": str(topic_beir), "train_labels": str(labels), "dev_split": None},
         "loss": {"name": "classification"}, "weight": 1.0, "query_prompt": "Classify: "},
        {"name": "second", "data": {"path": str(second_beir)}, "loss": {"name": "triplet"}, "weight": 1.0,
         "num_negatives": 2},
    ]


def _job(tasks, storage, name, sections=None, **train):
    return build_config(TrainJobConfig, {**(sections or {}),
        "tasks": tasks, "model": {"name_or_path": "tiny-bert", "query_prompt": "query: "},
        "train": {"max_steps": 10, "batch_size": 4, "num_negatives": 1, "lr": 1e-3, "checkpoint_every": 4,
                  "eval_every": 0, "eval_max_queries": None, "log_every": 1, "max_doc_length": 48,
                  "precision": "fp32", **train},
        "cluster": {"storage_path": str(storage), "run_name": name, "num_to_keep": 2}})


def _steps(run_dir):
    return json.loads((run_dir / "detailed_training_logs.json").read_text())["steps"]


def test_schedule_is_seeded_weighted_and_counts_each_tasks_batches():
    s = TaskSchedule([3.0, 1.0], seed=0, sampling="weighted", total=4000)
    share = np.bincount(s.task, minlength=2) / 4000
    assert share[0] == pytest.approx(0.75, abs=0.03)
    assert (s.task == TaskSchedule([3.0, 1.0], 0, "weighted", 4000).task).all()
    assert (s.task != TaskSchedule([3.0, 1.0], 1, "weighted", 4000).task).any()
    for index in (0, 17, 3999):
        t, cursor = s.at(index)
        assert cursor == int((s.task[:index] == t).sum())
    assert s.cursors(10) == [int((s.task[:10] == 0).sum()), int((s.task[:10] == 1).sum())]
    rr = TaskSchedule([1.0, 1.0, 1.0], 0, "round_robin", 7)
    assert [rr.at(i) for i in range(5)] == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1)]
    single = TaskSchedule([1.0], 0, "weighted", 5)
    assert [single.at(i) for i in range(5)] == [(0, i) for i in range(5)]


def test_tasks_keep_their_ids_apart(topic_beir, second_beir, labels):
    job = _job(_tasks(topic_beir, second_beir, labels), "/tmp", "x")
    merged, per_task, examples = load_tasks(job.tasks)
    assert set(per_task) == {"topics", "sections", "second"}
    assert "topics::d0" in merged.corpus and "second::d0" in merged.corpus and "d0" not in merged.corpus
    assert merged.corpus["topics::d0"].text != merged.corpus["second::d0"].text  # same id, other task
    by_task = Counter(e.task for e in examples)
    assert by_task["sections"] == 48 and by_task["topics"] == 32 and by_task["second"] == 24
    assert all(e.pos_id.startswith(e.task + "::") for e in examples)
    assert all(e.query_id == "" and e.label for e in examples if e.task == "sections")
    # prompts resolve from the job: the unset ones are the model's
    topics, sections, second = job.tasks
    assert (topics.query_prompt, second.query_prompt, sections.negatives) == ("Find the package: ", "query: ", "none")
    assert job.task_prompts() == {"topics-query": "Find the package: ", "topics-document": "",
                                  "sections-query": "Classify: ", "second-query": "query: ", "second-document": ""}


def test_one_task_per_batch_exact_resume_and_export(topic_beir, second_beir, labels, tmp_path):
    tasks = _tasks(topic_beir, second_beir, labels)
    ref = run_local(_job(tasks, tmp_path, "ref"))
    run = tmp_path / "ref"
    steps = _steps(run)
    seen = Counter(r["task"] for r in steps)
    assert set(seen) == {"topics", "sections", "second"}, seen  # every batch is one task's
    assert ref["train_pairs"] == 48 + 32 + 24
    # per-task dev metrics (classification has none), their mean is what early stopping reads
    dev = ref["dev_after"]
    assert {"topics/ndcg@10", "second/ndcg@10"} <= set(dev) and "sections/ndcg@10" not in dev
    assert dev["ndcg@10"] == pytest.approx((dev["topics/ndcg@10"] + dev["second/ndcg@10"]) / 2)

    with pytest.raises(Crash):
        run_local(_job(tasks, tmp_path, "crashy"), Hooks(on_step=[crash_at(6)]))
    resumed = run_local(_job(tasks, tmp_path, "crashy"))  # resumes at step 4: task cursors restored
    assert resumed["steps_this_session"] == 6
    again = _steps(tmp_path / "crashy")
    assert [r["task"] for r in again] == [r["task"] for r in steps]
    assert [r["loss"] for r in again] == pytest.approx([r["loss"] for r in steps], abs=1e-6)

    final = run / "final"
    st = SentenceTransformer(str(final), device="cpu")
    assert st.prompts["topics-query"] == "Find the package: " and st.prompts["sections-query"] == "Classify: "
    assert st.prompts["query"] == "query: " and "sections-document" not in st.prompts
    assert (final / "classifier" / "sections" / "head.safetensors").exists()

    # another weighting is another schedule: resuming a run under it is refused
    tasks[0]["weight"] = 5.0
    with pytest.raises(RuntimeError, match="task cursors"):
        run_local(_job(tasks, tmp_path, "crashy", max_steps=12))


def test_task_recipes_are_checked(topic_beir, second_beir, labels):
    tasks = _tasks(topic_beir, second_beir, labels)
    bad = [
        ({"tasks": tasks, "data": {"path": str(topic_beir)}}, "each task holds its own data and loss"),
        ({"tasks": [tasks[0], tasks[0]]}, "names must be unique"),
        ({"tasks": [{**tasks[0], "name": "a::b"}]}, "name 'a::b'"),
        ({"tasks": [{**tasks[0], "weight": 0}]}, "weight must be > 0"),
        ({"tasks": [{**tasks[0], "negatives": "pool"}]}, "negatives: pool needs mined pools"),
        ({"tasks": [{**tasks[0], "loss": {"name": "infonce", "distill_score": "kl"}}]},
         r"tasks\[topics\].loss.distill_score / loss.distill_embed need distill.teacher"),
        ({"tasks": [{**tasks[2], "negatives": "random", "loss": {"name": "infonce", "distill_score": "kl"}}],
          "distill": {"teacher": "tiny-bert", "score_source": "cross_encoder"}, "refresh": {"mode": "static"}},
         r"tasks\[second\].loss.distill_score needs the task's negatives: pool"),
        ({"tasks": [{**tasks[1], "data": {"path": str(topic_beir)}}]}, "classification trains on data.train_labels"),
        ({"tasks": [{**tasks[0], "lossy": {}}]}, r"unknown key 'tasks\[0\].lossy'"),
        ({"tasks": tasks[:2], "refresh": {"mode": "static"}}, "no task takes its negatives from the pool"),
    ]
    for cfg, message in bad:
        with pytest.raises(ConfigError, match=message):
            build_config(TrainJobConfig, cfg)


def test_refresh_mines_each_task_in_its_own_corpus_and_resumes_exactly(topic_beir, second_beir, labels, tmp_path):
    """refresh.mode on: the tasks whose negatives are unset mine the pool, each in its own corpus
    with its own instructions (one published pool under ``<task>::`` ids, each task's counts in
    the telemetry); a task with its own negatives and a classification task are not mined; a run
    killed mid-way resumes with the same pool switches and losses."""
    tasks = _tasks(topic_beir, second_beir, labels)
    tasks[0].pop("negatives")  # topics: unset, so pool; second: its own random negatives
    tasks[2]["negatives"] = "random"
    refresh = {"mode": "sync", "every": 3, "denoise": True}
    extra = {"refresh": refresh, "mining": {"k": 10, "num_negatives": 2, "range_min": 0},
             "cross_encoder": {"base_model": "tiny-bert", "max_steps": 2, "batch_size": 4, "negatives_per_query": 1,
                               "max_length": 48, "dev_rerank_depth": 5, "denoise_margin": -1.0}}

    def job(name):
        return _job(tasks, tmp_path, name, extra, eval_on_refresh=True)

    ref = run_local(job("ref"))
    run = tmp_path / "ref"
    assert [t.negatives for t in job("x").tasks] == ["pool", "none", "random"]
    first = json.loads((run / "initial_pool.json").read_text())
    assert set(first["tasks"]) == {"topics"} and first["queries_mined"] == first["tasks"]["topics"]["queries_mined"] > 0
    ce_dev = json.loads((run / "cross_encoder_dev.json").read_text())
    assert set(ce_dev["tasks"]) == {"topics"} and ce_dev["tasks"]["topics"]["depth"] == 5

    from embedray.mining.store import PoolStore

    store = PoolStore(run / "pools")
    data, per_task, _ = load_tasks(job("x").tasks)
    topics = per_task["topics"]
    pool = store.load(store.latest_version())
    assert pool.negatives and all(q.startswith("topics::") for q in pool.negatives)
    for q, negs in pool.negatives.items():
        own = q.split("::", 1)[1]
        for d, _ in negs:
            assert d.startswith("topics::") and d.split("::", 1)[1] in topics.corpus
            assert d.split("::", 1)[1] not in topics.positives.get(own, ())  # never a positive
    logs = json.loads((run / "detailed_training_logs.json").read_text())
    refreshes = [e for e in logs["events"] if e["kind"] == "refresh"]
    assert refreshes and all(set(e["tasks"]) == {"topics"} for e in refreshes)
    assert max(r["pool_version"] for r in logs["steps"]) >= 2  # the loop switched to a refreshed pool
    assert ref["steps"] == 10

    def dev_at_each_refresh(events):
        """train.eval_on_refresh: a dev evaluation at the step of each switch to a refreshed pool."""
        switches = [e for e in events if e["kind"] == "pool" and e["step"] > 0]
        devs = {e["step"]: e for e in events if e["kind"] == "dev" and "pool_version" in e}
        assert switches and sorted(devs) == [e["step"] for e in switches]
        assert all(devs[e["step"]]["pool_version"] == e["version"] and 0 <= devs[e["step"]]["ndcg@10"] <= 1
                   for e in switches)
        return [(s, round(d["ndcg@10"], 6)) for s, d in sorted(devs.items())]

    ref_devs = dev_at_each_refresh(logs["events"])

    with pytest.raises(Crash):
        run_local(job("crashy"), on_step=[crash_at(6)])
    run_local(job("crashy"))
    again = _steps(tmp_path / "crashy")
    assert [r["pool_version"] for r in again] == [r["pool_version"] for r in logs["steps"]]
    assert [r["loss"] for r in again] == pytest.approx([r["loss"] for r in logs["steps"]], abs=1e-6)
    # the evaluations leave training as it was: the resumed run evaluates the same models
    crashy = json.loads((tmp_path / "crashy" / "detailed_training_logs.json").read_text())["events"]
    assert dev_at_each_refresh(crashy) == ref_devs


def test_a_task_distills_from_the_job_teacher(topic_beir, second_beir, labels, tmp_path):
    """A task whose objective distills reads the job's teacher (which encodes the task's texts
    with the task's instructions); the other tasks train as before."""
    tasks = _tasks(topic_beir, second_beir, labels)
    plain = run_local(_job(tasks, tmp_path, "plain", max_steps=4))
    steps = _steps(tmp_path / "plain")
    i = next(i for i, r in enumerate(steps) if r["task"] != "sections")  # the first retrieval batch
    at = [t["name"] for t in tasks].index(steps[i]["task"])
    tasks[at] = {**tasks[at], "loss": {**tasks[at]["loss"], "distill_score": "kl", "distill_embed": True}}
    distilled = run_local(_job(tasks, tmp_path, "distilled", {"distill": {"teacher": "tiny-bert"}}, max_steps=4))
    assert distilled["steps"] == plain["steps"] == 4
    got = _steps(tmp_path / "distilled")
    assert [r["task"] for r in got] == [r["task"] for r in steps]
    assert [r["loss"] for r in got[:i]] == pytest.approx([r["loss"] for r in steps[:i]], abs=1e-6)
    assert got[i]["loss"] != pytest.approx(steps[i]["loss"], abs=1e-4)  # the distillation terms are in
