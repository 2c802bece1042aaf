"""The ranking objectives side by side on real pairs: the demo's Debian build (1,000 documents,
480 train queries, 300 held-out test queries).

minilm-l6 trains ``--steps`` steps of ``--batch-size`` (summary, description) pairs with one
random hard negative under each objective, same seed, same batches; each trained model is scored
on the test queries next to the untrained one. Prints one row per objective.

Run:  .venv/bin/python bench/objectives.py [--steps 60] [--batch-size 16]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

OBJECTIVES = {
    "infonce": {"name": "infonce", "temperature": 0.05},
    "infonce, hardest_negatives 4": {"name": "infonce", "temperature": 0.05, "hardest_negatives": 4},
    "ntxent": {"name": "ntxent", "temperature": 0.05},
    "triplet": {"name": "triplet", "margin": 0.2},
    "triplet, batch-hard (hardest_negatives 1)": {"name": "triplet", "margin": 0.2, "hardest_negatives": 1},
    "contrastive": {"name": "contrastive", "margin": 0.5},
}


def main() -> None:
    from embedray.config import build_config
    from embedray.data import build_debian, load_beir
    from embedray.eval.retrieval import evaluate_retrieval
    from embedray.models import load_encoder
    from embedray.pipeline.config import TrainJobConfig
    from embedray.pipeline.runtime import run_local

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="embedray-bench-objectives-"))
    data = tmp / "debian"
    build_debian(data, max_docs=1000, max_queries=600, split_queries={"test": 300})
    test = load_beir(data, "test")
    ndcg = lambda folder: evaluate_retrieval(load_encoder(folder), test, k=10, show_progress=False).metrics["ndcg@10"]  # noqa: E731
    rows = [{"objective": "untrained", "ndcg@10": ndcg("minilm-l6")}]
    for name, loss in OBJECTIVES.items():
        job = build_config(TrainJobConfig, {
            "data": {"path": str(data), "dev_split": None}, "model": {"name_or_path": "minilm-l6"}, "loss": loss,
            "train": {"max_steps": args.steps, "batch_size": args.batch_size, "num_negatives": 1, "lr": 3e-5,
                      "max_query_length": 32, "max_doc_length": 96, "checkpoint_every": 0, "eval_every": 0},
            "cluster": {"storage_path": str(tmp / "runs"), "run_name": name.replace(" ", "_").replace(",", "")}},
            "bench")
        summary = run_local(job)
        rows.append({"objective": name, "ndcg@10": ndcg(summary["final_model"]), "pairs_per_s": summary["pairs_per_s"]})
        print(json.dumps(rows[-1]), flush=True)
    print("\n| objective | test nDCG@10 | pairs/s |\n|---|---:|---:|")
    for r in rows:
        print(f"| {r['objective']} | {r['ndcg@10']:.4f} | {r.get('pairs_per_s', 0) and round(r['pairs_per_s'], 1) or '–'} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
