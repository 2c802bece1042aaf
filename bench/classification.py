"""The classification objective on real labels: Debian package Sections.

``embedray data debian`` writes ``labels.jsonl`` (each package's ``Section`` from apt's Packages
lists: utils, libs, net, admin, devel, …, with the package's train/dev/test split). minilm-l6
trains with ``loss.name: classification`` on the train-split packages for ``--steps`` steps, then:

- retrieval nDCG@10 on the test queries (summary → description), untrained vs trained;
- a linear probe: logistic regression (scikit-learn) fit on the train-split packages'
  embeddings, accuracy on the test-split packages, untrained vs trained;
- the trained head's own accuracy on the test-split packages.

The test-split packages and queries are never trained on.

Run:  .venv/bin/python bench/classification.py [--steps 150] [--docs 3000]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np


def main() -> None:
    from sklearn.linear_model import LogisticRegression

    from embedray.config import build_config
    from embedray.data import build_debian, load_beir
    from embedray.eval.retrieval import evaluate_retrieval
    from embedray.losses.classification import load_head, predict
    from embedray.models import load_encoder
    from embedray.pipeline.config import TrainJobConfig
    from embedray.pipeline.runtime import run_local

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--docs", type=int, default=3000)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="embedray-bench-cls-"))
    data = tmp / "debian"
    build_debian(data, max_docs=args.docs, max_queries=args.docs // 2)
    rows = [json.loads(line) for line in (data / "labels.jsonl").read_text().splitlines()]
    texts = {json.loads(line)["_id"]: json.loads(line)["text"] for line in (data / "corpus.jsonl").read_text().splitlines()}
    train = [r for r in rows if r["split"] == "train"]
    test = [r for r in rows if r["split"] == "test"]
    job = build_config(TrainJobConfig, {
        "data": {"path": str(data), "train_labels": str(data / "labels.jsonl"), "dev_split": None},
        "model": {"name_or_path": "minilm-l6"}, "loss": {"name": "classification", "temperature": 0.05},
        "train": {"max_steps": args.steps, "batch_size": 32, "lr": 3e-5, "max_doc_length": 128,
                  "checkpoint_every": 0, "eval_every": 0},
        "cluster": {"storage_path": str(tmp / "runs"), "run_name": "cls"}}, "bench")
    final = Path(run_local(job)["final_model"])

    queries = load_beir(data, "test")
    out = {"sections": len({r["label"] for r in rows}), "train_packages": len(train), "test_packages": len(test),
           "majority_baseline": Counter(r["label"] for r in test).most_common(1)[0][1] / len(test)}
    for name, folder in (("untrained", "minilm-l6"), ("trained", str(final))):
        model = load_encoder(folder)
        out[f"ndcg@10_{name}"] = evaluate_retrieval(model, queries, k=10, show_progress=False).metrics["ndcg@10"]
        x_train = model.encode([texts[r["_id"]] for r in train], batch_size=64, normalize_embeddings=True)
        x_test = model.encode([texts[r["_id"]] for r in test], batch_size=64, normalize_embeddings=True)
        probe = LogisticRegression(max_iter=2000, C=10.0).fit(x_train, [r["label"] for r in train])
        out[f"probe_accuracy_{name}"] = float(np.mean(probe.predict(x_test) == np.array([r["label"] for r in test])))
        if name == "trained":
            head, labels = load_head(final / "classifier")
            out["head_accuracy"] = float(np.mean([labels[i] == r["label"] for i, r in zip(predict(head, x_test), test)]))
    print(json.dumps(out, indent=2))
    print("\n| model | retrieval nDCG@10 (test queries) | linear-probe accuracy (test packages) |")
    print("|---|---:|---:|")
    for name in ("untrained", "trained"):
        print(f"| minilm-l6 {name} | {out[f'ndcg@10_{name}']:.4f} | {out[f'probe_accuracy_{name}']:.3f} |")
    print(f"trained head accuracy {out['head_accuracy']:.3f}; majority class {out['majority_baseline']:.3f}; "
          f"{out['sections']} sections, {out['train_packages']} train / {out['test_packages']} test packages")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
