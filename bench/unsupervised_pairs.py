"""Unsupervised pairs from a corpus's own text, measured on its held-out queries.

For each corpus (the demo's Debian build and SciFact), the pair builders turn the corpus's
documents into next-sentence (``nsp``) and span-corruption (``span``) pairs; minilm-l6 trains
on each for ``--steps`` steps (InfoNCE, in-batch negatives) and is evaluated on the test
queries, next to the untrained model. The test queries are never read by the builders or the
training; only the documents (which retrieval searches anyway) are.

Prints one row per (corpus, pairs): nDCG@10 before and after, and the pairs built.

Run:  .venv/bin/python bench/unsupervised_pairs.py [--steps 60] [--scifact ../shared/datasets/scifact]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from embedray.config import build_config
from embedray.data import build_debian, load_beir
from embedray.data import builders
from embedray.data.flag import write_flag_folder, write_flag_jsonl
from embedray.eval.retrieval import evaluate_retrieval
from embedray.models import load_encoder
from embedray.pipeline.config import TrainJobConfig
from embedray.pipeline.runtime import run_local


def _ndcg(model, data) -> float:
    return evaluate_retrieval(model, data, k=10, batch_size=64, show_progress=False).metrics["ndcg@10"]


def _train(pairs: Path, work: Path, steps: int, batch: int) -> Path:
    folder = work / "beir"
    write_flag_folder({"train": pairs}, folder)
    job = build_config(TrainJobConfig, {
        "data": {"path": str(folder), "train_pairs": str(folder / "train_pairs.jsonl"), "dev_split": None},
        "model": {"name_or_path": "minilm-l6"},
        "loss": {"name": "infonce", "temperature": 0.05},
        "train": {"max_steps": steps, "batch_size": batch, "negatives": "none", "lr": 2e-5, "max_query_length": 128,
                  "max_doc_length": 128, "checkpoint_every": 0, "eval_every": 0, "log_every": 10},
        "cluster": {"storage_path": str(work / "runs"), "run_name": "run"},
    }, "bench")
    return Path(run_local(job)["final_model"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--scifact", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
                    / "scifact")
    ap.add_argument("--corpora", default="debian,scifact", help="which of debian, scifact")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="embedray-bench-pairs-"))
    debian = tmp / "debian"
    if "debian" in args.corpora.split(","):
        build_debian(debian, max_docs=1000, max_queries=600, split_queries={"test": 300})
    corpora = {k: v for k, v in {"debian": debian, "scifact": args.scifact}.items() if k in args.corpora.split(",")}
    base = load_encoder("minilm-l6")
    rows = []
    for name, folder in corpora.items():
        test = load_beir(folder, "test", missing_docs="keep")
        before = _ndcg(base, test)
        for kind in ("nsp", "span"):
            build = builders.build_nsp if kind == "nsp" else builders.build_span
            pairs, stats = build(folder / "corpus.jsonl")
            out = tmp / name / kind
            out.mkdir(parents=True)
            write_flag_jsonl(pairs, out / "pairs.jsonl")
            model = load_encoder(str(_train(out / "pairs.jsonl", out, args.steps, args.batch_size)))
            after = _ndcg(model, test)
            rows.append({"corpus": name, "pairs": kind, "built": stats.written, "steps": args.steps,
                         "ndcg@10_untrained": round(before, 4), "ndcg@10_trained": round(after, 4)})
            print(json.dumps(rows[-1]), flush=True)
    print("\n| corpus | pairs | built | steps | nDCG@10 untrained | nDCG@10 trained |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['corpus']} | {r['pairs']} | {r['built']:,} | {r['steps']} | {r['ndcg@10_untrained']:.4f} | "
              f"{r['ndcg@10_trained']:.4f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
