"""Three tasks in one model against one model per task, on held-out data.

Tasks (each with its own instruction, saved in the exported model as ``<task>-query``):

- ``debian``: the built-in Debian build, summary → description retrieval (InfoNCE, one random
  hard negative), trained on its train queries, scored on its test queries;
- ``sections``: the same packages' Debian ``Section`` (classification objective), trained on the
  train-split packages, scored by a linear probe (logistic regression on the embeddings of the
  train-split packages) on the test-split packages;
- ``scifact``: BEIR SciFact from ``../shared/datasets`` (InfoNCE), trained on its train qrels,
  scored on its test qrels (never trained or tuned on).

minilm-l6 trains ``--steps`` steps on the three tasks (equal weights: each batch one task's
rows), and, for each task, a single-task model trains the same number of steps on that task
alone. Printed: one row per task (untrained, single-task, multi-task) and the multi − single
difference with a 95% paired bootstrap interval over the task's held-out queries or packages.

``--mined``: a third model trains the same steps on the three tasks with hard negatives mined
for each retrieval task in its own corpus, with its own instruction, and re-mined every
``--refresh-every`` steps with the weights of that step (``refresh.mode: sync``); its row and
the mined − random difference are printed too. ``--no-single`` leaves the single-task models out.

Run:  .venv/bin/python bench/multitask.py [--steps 150] [--docs 3000] [--mined] [--no-single]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SCIFACT = REPO.parent / "shared" / "datasets" / "scifact"
PROMPTS = {"debian": "Find the Debian package: ", "sections": "Classify the Debian section: ",
           "scifact": "Find evidence for the claim: "}


def _tasks(data: Path, scifact: Path) -> dict[str, dict]:
    return {
        "debian": {"name": "debian", "data": {"path": str(data), "dev_split": None},
                   "loss": {"name": "infonce", "temperature": 0.05}, "query_prompt": PROMPTS["debian"]},
        "sections": {"name": "sections", "data": {"path": str(data), "train_labels": str(data / "labels.jsonl"),
                                                  "dev_split": None},
                     "loss": {"name": "classification", "temperature": 0.05}, "query_prompt": PROMPTS["sections"]},
        "scifact": {"name": "scifact", "data": {"path": str(scifact), "dev_split": None},
                    "loss": {"name": "infonce", "temperature": 0.05}, "query_prompt": PROMPTS["scifact"]},
    }


def _train(tasks: list[dict], steps: int, runs: Path, name: str, refresh_every: int | None = None) -> Path:
    from embedray.config import build_config
    from embedray.pipeline.config import TrainJobConfig
    from embedray.pipeline.runtime import run_local

    mined = {"refresh": {"mode": "sync", "every": refresh_every, "denoise": False},
             "mining": {"k": 50, "num_negatives": 5, "range_min": 3, "batch_size": 64}} if refresh_every else {}
    job = build_config(TrainJobConfig, {**mined,
        "tasks": [{**t, "weight": 1.0} for t in tasks], "model": {"name_or_path": "minilm-l6"},
        "train": {"max_steps": steps, "batch_size": 32, "lr": 3e-5, "negatives": "random", "num_negatives": 1,
                  "max_query_length": 48, "max_doc_length": 128, "checkpoint_every": 0, "eval_every": 0,
                  "log_every": 10},
        "cluster": {"storage_path": str(runs), "run_name": name}}, "bench")
    print(f"[bench] training {name}: {', '.join(t['name'] for t in tasks)}, {steps} steps", flush=True)
    return Path(run_local(job)["final_model"])


def _retrieval(model_dir: str, folder: Path, prompt: str) -> dict[str, float]:
    """Per-query nDCG@10 on the folder's test split, queries with ``prompt``."""
    from embedray.data import load_beir
    from embedray.eval.metrics import per_query_ndcg
    from embedray.eval.retrieval import evaluate_retrieval
    from embedray.models import load_encoder

    data = load_beir(folder, "test")
    res = evaluate_retrieval(load_encoder(model_dir), data, k=10, query_prompt=prompt, show_progress=False)
    return per_query_ndcg(data.qrels, res.run)


def _probe(model_dir: str, data: Path, prompt: str) -> dict[str, float]:
    """Per-package correctness (1/0) of a linear probe fit on the train-split packages' embeddings."""
    from sklearn.linear_model import LogisticRegression

    from embedray.data import iter_corpus
    from embedray.models import load_encoder

    rows = [json.loads(line) for line in (data / "labels.jsonl").read_text().splitlines()]
    texts = {d.id: d.text_for_model for d in iter_corpus(data / "corpus.jsonl")}  # as training reads them
    train = [r for r in rows if r["split"] == "train"]
    test = [r for r in rows if r["split"] == "test"]
    model = load_encoder(model_dir)

    def embed(part):
        return model.encode([prompt + texts[r["_id"]] for r in part], batch_size=64, prompt="",
                            normalize_embeddings=True)

    probe = LogisticRegression(max_iter=2000, C=10.0).fit(embed(train), [r["label"] for r in train])
    got = probe.predict(embed(test))
    return {r["_id"]: float(g == r["label"]) for g, r in zip(got, test)}


def main() -> None:
    from embedray.data import build_debian
    from embedray.eval.metrics import paired_bootstrap

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--docs", type=int, default=3000)
    ap.add_argument("--scifact", type=Path, default=SCIFACT)
    ap.add_argument("--mined", action="store_true", help="also train on per-task mined, refreshed negatives")
    ap.add_argument("--refresh-every", type=int, default=40)
    ap.add_argument("--no-single", action="store_true", help="leave out the single-task models")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="embedray-bench-multitask-"))
    data = tmp / "debian"
    build_debian(data, max_docs=args.docs, max_queries=args.docs // 2)
    tasks = _tasks(data, args.scifact)
    multi = _train(list(tasks.values()), args.steps, tmp / "runs", "multi")
    mined = _train(list(tasks.values()), args.steps, tmp / "runs", "multi-mined", args.refresh_every) \
        if args.mined else None
    single = {} if args.no_single else \
        {name: _train([t], args.steps, tmp / "runs", f"single-{name}") for name, t in tasks.items()}

    def score(name: str, model: str) -> dict[str, float]:
        if name == "sections":
            return _probe(model, data, PROMPTS[name])
        return _retrieval(model, data if name == "debian" else args.scifact, PROMPTS[name])

    out: dict[str, dict] = {"steps": args.steps}
    cols = ["minilm-l6", *([f"single-task, {args.steps} steps"] if single else []),
            f"multi-task, {args.steps} steps", *([f"multi-task, mined every {args.refresh_every}"] if mined else []),
            *(["multi − single [95% CI]"] if single else []), *(["mined − random [95% CI]"] if mined else [])]
    print("\n| task (held-out) | metric | " + " | ".join(cols) + " |")
    print("|---|---|" + "---:|" * len(cols))
    mean = lambda d: float(np.mean(list(d.values())))  # noqa: E731
    interval = lambda ci: f"{ci['diff']:+.4f} [{ci['low']:+.4f}, {ci['high']:+.4f}]"  # noqa: E731
    for name in tasks:
        base, three = score(name, "minilm-l6"), score(name, str(multi))
        one = score(name, str(single[name])) if single else None
        hard = score(name, str(mined)) if mined else None
        metric = "linear-probe accuracy" if name == "sections" else "nDCG@10"
        row = {"metric": metric, "items": len(three), "base": mean(base), "multi": mean(three)}
        cells = [f"{mean(base):.4f}"]
        if one is not None:
            row.update(single=mean(one), diff=paired_bootstrap(one, three))
            cells.append(f"{mean(one):.4f}")
        cells.append(f"{mean(three):.4f}")
        if hard is not None:
            row.update(mined=mean(hard), mined_diff=paired_bootstrap(three, hard))
            cells.append(f"{mean(hard):.4f}")
        cells += [interval(row[k]) for k in ("diff", "mined_diff") if k in row]
        out[name] = row
        print(f"| {name} ({len(three)}) | {metric} | " + " | ".join(cells) + " |")
    if mined:
        logs = json.loads((tmp / "runs" / "multi-mined" / "detailed_training_logs.json").read_text())
        pools = [e for e in logs["events"] if e["kind"] == "refresh"]
        first = json.loads((tmp / "runs" / "multi-mined" / "initial_pool.json").read_text())
        out["mining"] = {"initial": first, "refreshes": pools}
        for e in [first, *pools]:
            print(f"pool v{e['version']} (step {e['snapshot_step']}, {e['wall_s']:.0f} s): " + ", ".join(
                f"{t} {c['queries_mined']} queries, {c['negatives_kept']} negatives, "
                f"overlap@10 {c['overlap@10'] if c['overlap@10'] is None else round(c['overlap@10'], 3)}"
                for t, c in e["tasks"].items()))
    steps = json.loads((tmp / "runs" / "multi" / "detailed_training_logs.json").read_text())["steps"]
    shares = {n: sum(r["task"] == n for r in steps) for n in tasks}
    out["multi_task_batches"] = shares
    print("multi-task batches per task: " + ", ".join(f"{n} {k}" for n, k in shares.items()))
    print(f"multi-task model: {multi} (prompts: {', '.join(sorted(_prompts(multi)))})")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


def _prompts(folder: Path) -> dict[str, str]:
    from embedray.models.prompts import read_prompts

    return read_prompts(folder)[0]


if __name__ == "__main__":
    main()
