"""Pre-training on unsupervised pairs from the corpus, then fine-tuning, against fine-tuning alone,
for the same total number of steps, on held-out queries.

For each dataset — the built-in Debian build (package descriptions) and BEIR SciFact from
``../shared/datasets`` (paper abstracts) — minilm-l6 trains:

- ``fine-tune only``: ``--steps`` steps of InfoNCE on the train queries' pairs (one random
  hard negative);
- ``pre-train + fine-tune``: ``--pretrain-steps`` steps of InfoNCE on span-corruption pairs built
  from the corpus texts (two views of a text, each with another 15% of its words removed: the
  pipeline's ``pretrain`` stage, ``builder: span``; no query or judgement is read), then
  ``--steps`` − ``--pretrain-steps`` steps of the same fine-tuning from those weights.

Both are scored on the test queries (never trained or tuned on): nDCG@10, and the difference
with a 95% paired bootstrap interval over the test queries.

Run:  .venv/bin/python bench/two_stage.py [--steps 80] [--pretrain-steps 40] [--docs 3000]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCIFACT = REPO.parent / "shared" / "datasets" / "scifact"
TRAIN = {"batch_size": 32, "lr": 3e-5, "max_query_length": 64, "max_doc_length": 128, "checkpoint_every": 0,
         "eval_every": 0, "log_every": 10}


def _train(data: dict, model: str, steps: int, negatives: str, runs: Path, name: str) -> str:
    from embedray.config import build_config
    from embedray.pipeline.config import TrainJobConfig
    from embedray.pipeline.runtime import run_local

    job = build_config(TrainJobConfig, {
        "data": {**data, "dev_split": None}, "model": {"name_or_path": model},
        "loss": {"name": "infonce", "temperature": 0.05},
        "train": {**TRAIN, "max_steps": steps, "negatives": negatives, "num_negatives": 1 if negatives != "none" else 0},
        "cluster": {"storage_path": str(runs), "run_name": name}}, "bench")
    print(f"[bench] {name}: {steps} steps from {Path(model).name}", flush=True)
    return run_local(job)["final_model"]


def _ndcg(model: str, folder: Path) -> dict[str, float]:
    from embedray.data import load_beir
    from embedray.eval.metrics import per_query_ndcg
    from embedray.eval.retrieval import evaluate_retrieval
    from embedray.models import load_encoder

    data = load_beir(folder, "test")
    return per_query_ndcg(data.qrels, evaluate_retrieval(load_encoder(model), data, k=10, show_progress=False).run)


def main() -> None:
    from embedray.data import build_debian, iter_corpus
    from embedray.data.beir import beir_file
    from embedray.eval.metrics import paired_bootstrap
    from embedray.pipeline.config import PretrainConfig
    from embedray.pipeline.stages import pretrain_pairs

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--pretrain-steps", type=int, default=40)
    ap.add_argument("--docs", type=int, default=3000)
    ap.add_argument("--scifact", type=Path, default=SCIFACT)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="embedray-bench-two-stage-"))
    build_debian(tmp / "debian", max_docs=args.docs, max_queries=args.docs // 2)
    out: dict = {"steps": args.steps, "pretrain_steps": args.pretrain_steps}
    rows = []
    for name, folder in (("debian", tmp / "debian"), ("scifact", args.scifact)):
        corpus = {d.id: d for d in iter_corpus(beir_file(folder, "corpus"))}
        pairs = tmp / f"{name}-pretrain-pairs"
        stats = pretrain_pairs(corpus, PretrainConfig(builder="span"), pairs)
        print(f"[bench] {name}: {stats}", flush=True)
        fine = {"path": str(folder)}
        alone = _train(fine, "minilm-l6", args.steps, "random", tmp / "runs", f"{name}-fine-tune-only")
        pre = _train({"path": str(pairs), "train_pairs": str(pairs / "train_pairs.jsonl")}, "minilm-l6",
                     args.pretrain_steps, "none", tmp / "runs", f"{name}-pretrain")
        both = _train(fine, pre, args.steps - args.pretrain_steps, "random", tmp / "runs", f"{name}-pretrain-fine-tune")
        scores = {"minilm-l6": _ndcg("minilm-l6", folder), "fine-tune only": _ndcg(alone, folder),
                  "after pre-training": _ndcg(pre, folder), "pre-train + fine-tune": _ndcg(both, folder)}
        means = {k: sum(v.values()) / len(v) for k, v in scores.items()}
        ci = paired_bootstrap(scores["fine-tune only"], scores["pre-train + fine-tune"])
        out[name] = {"queries": ci["queries"], "ndcg@10": means, "diff": ci, "pretrain_pairs": stats}
        rows.append((name, ci["queries"], means, ci))
    print(f"\n| data (test queries) | minilm-l6 | after pre-training ({args.pretrain_steps}) | fine-tune only "
          f"({args.steps}) | pre-train {args.pretrain_steps} + fine-tune {args.steps - args.pretrain_steps} | "
          "difference [95% CI] |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, n, m, ci in rows:
        print(f"| {name} ({n}) | {m['minilm-l6']:.4f} | {m['after pre-training']:.4f} | {m['fine-tune only']:.4f} | "
              f"{m['pre-train + fine-tune']:.4f} | {ci['diff']:+.4f} [{ci['low']:+.4f}, {ci['high']:+.4f}] |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
