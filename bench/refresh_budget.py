"""A budgeted refresh against a full one: what re-encoding part of the corpus saves and costs.

Two training runs of ``minilm-l6`` (``precision: auto``) on the same Debian subset, one process
each in turn, with the same seed, steps, batches and a ``sync`` refresher (training waits for each
refresh, so both runs snapshot at the same steps and the refresh time is all on the clock):

- ``full``: ``refresh.reencode: 1``, every refresh re-encodes the whole corpus;
- ``budget``: ``refresh.reencode: --reencode``, each refresh after the first re-encodes the
  documents near the training queries (their candidates in the last refresh, their positives)
  and a rotating ``--reencode`` slice of the rest, and keeps the other embeddings.

Up to the first budgeted refresh both runs train on the same pool, so at that refresh they hold
the same weights: its pool is compared with the full run's pool of the same version
(``overlap@10``: the mean share of a query's top-10 negatives that the full refresh also chose).
After it the runs drift apart; every refresh's wall time and re-encoded documents are reported,
and both final models are evaluated on dev and test (test is used for nothing else).

Lines: ``ratio refresh_wall_budget_vs_full`` (mean wall time of the budgeted refreshes ÷ the full
run's refreshes at the same versions), ``ratio overlap10_budget_vs_full`` (the first budgeted
pool against the full pool of the same weights) and ``ratio dev_ndcg_budget_vs_full``.

Run:  .venv/bin/python bench/refresh_budget.py [--max-docs 20000 --max-queries 1000 --steps 120
      --every 30 --reencode 0.25] [--json out.json]        (about 15 minutes on 2 CPU cores)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _job(a, data_dir: Path, out: Path, name: str, reencode: float):
    from embedray.config import build_config
    from embedray.pipeline.config import TrainJobConfig

    return build_config(TrainJobConfig, {
        "data": {"path": str(data_dir), "train_pairs": str(data_dir / "train_pairs.jsonl"),
                 "dev_split": "dev", "test_split": "test"},
        "model": {"name_or_path": "minilm-l6"},
        "loss": {"name": "infonce", "temperature": 0.05},
        "train": {"max_steps": a.steps, "batch_size": a.batch_size, "num_negatives": 1, "negatives": "pool",
                  "lr": 3e-5, "max_query_length": 32, "max_doc_length": 96, "eval_every": 0,
                  "checkpoint_every": a.steps, "seed": a.seed},
        "cluster": {"storage_path": str(out), "run_name": name},
        "mining": {"k": 20, "num_negatives": 3, "range_min": 1, "batch_size": 64, "seed": a.seed},
        "refresh": {"mode": "sync", "every": a.every, "denoise": False, "reencode": reencode},
    }, name)


def _evaluate(model_dir: str, data_dir: Path) -> dict[str, float]:
    from embedray.data.beir import load_beir
    from embedray.eval.retrieval import evaluate_retrieval
    from embedray.models.backends import load_encoder

    model = load_encoder(model_dir)
    return {split: evaluate_retrieval(model, load_beir(data_dir, split, missing_docs="keep"), k=100,
                                      show_progress=False).metrics["ndcg@10"] for split in ("dev", "test")}


def _refreshes(run_dir: Path) -> list[dict]:
    events = json.loads((run_dir / "detailed_training_logs.json").read_text())["events"]
    return [e for e in events if e["kind"] == "refresh" and not e.get("failed")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-docs", type=int, default=20000)
    p.add_argument("--max-queries", type=int, default=1000, help="over train/dev/test, 80/10/10")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--every", type=int, default=30, help="refresh every K optimizer steps")
    p.add_argument("--reencode", type=float, default=0.25, help="refresh.reencode of the budgeted run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench-refresh-budget")
    p.add_argument("--json", default=None)
    a = p.parse_args()

    from negatives import debian_subset  # bench/ is the script's folder

    from embedray.mining.store import PoolStore
    from embedray.pipeline.refresh import overlap_at_k
    from embedray.pipeline.runtime import run_local

    out = Path(a.out).resolve()
    data_dir = debian_subset(out, a.max_docs, a.max_queries, a.seed)
    rows: dict[str, dict] = {}
    for name, reencode in [("full", 1.0), ("budget", a.reencode)]:
        t0 = time.perf_counter()
        summary = run_local(_job(a, data_dir, out, name, reencode))
        rows[name] = {"reencode": reencode, "total_wall_s": time.perf_counter() - t0,
                      "train_wall_s": summary["wall_s"], "refreshes": _refreshes(out / name),
                      **_evaluate(summary["final_model"], data_dir)}
        print(f"{name} (reencode {reencode:g}): dev {rows[name]['dev']:.4f} test {rows[name]['test']:.4f}, "
              f"{rows[name]['total_wall_s']:.0f} s in all", flush=True)

    print("\n| refresh | full: wall s / docs encoded | budget: wall s / docs encoded / reused |\n|---|---|---|")
    full = {r["version"]: r for r in rows["full"]["refreshes"]}
    budgeted = [r for r in rows["budget"]["refreshes"] if r.get("docs_reused")]
    for r in rows["budget"]["refreshes"]:
        f = full.get(r["version"], {})
        print(f"| v{r['version']} (step {r['snapshot_step']}) | {f.get('wall_s', float('nan')):.1f} / "
              f"{f.get('docs_encoded')} | {r['wall_s']:.1f} / {r['docs_encoded']} / {r.get('docs_reused') or 0} |")
    ratios = {}
    if budgeted:
        paired = [(r["wall_s"], full[r["version"]]["wall_s"]) for r in budgeted if r["version"] in full]
        ratios["refresh_wall_budget_vs_full"] = statistics.mean(b for b, _ in paired) / statistics.mean(
            f for _, f in paired)
        first = budgeted[0]["version"]
        ratios["overlap10_budget_vs_full"] = overlap_at_k(PoolStore(out / "budget" / "pools").load(first),
                                                          PoolStore(out / "full" / "pools").load(first), k=10)
        print(f"\nfirst budgeted refresh v{first}: the same weights as the full run's v{first}; its pool's "
              f"overlap@10 with the full pool {ratios['overlap10_budget_vs_full']:.3f}")
    ratios["dev_ndcg_budget_vs_full"] = rows["budget"]["dev"] / rows["full"]["dev"]
    print(f"training wall (refreshes included): full {rows['full']['train_wall_s']:.0f} s, "
          f"budget {rows['budget']['train_wall_s']:.0f} s")
    for name, value in ratios.items():
        print(f"ratio {name} {value:.3f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "rows": rows, "ratio": ratios}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
