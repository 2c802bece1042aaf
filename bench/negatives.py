"""Which negatives pay off: in-batch vs static vs refreshed + cross-encoder-denoised, and what
refreshing costs.

Three (optionally four) Ray Train runs of ``minilm-l6`` on the same Debian subset, one after the other in one process,
with the same seed, steps, batch, learning rate and workers; only the negatives differ:

1. ``in-batch``: no hard negatives (``train.negatives: none``), the other queries' positives only;
2. ``static``: negatives mined once by the base model before training (``refresh.mode: static``,
   no denoising), the way sentence-transformers / FlagEmbedding users mine offline;
3. ``refreshed+denoised``: the base model's pool rescored by the cross-encoder (likely false
   negatives dropped), then re-mined with the training weights every ``--every`` steps
   by the ``NegativeRefresher`` actor while training goes on (``refresh.mode: async``).

The cross-encoder is trained once, before the runs (minilm-l6 backbone, fresh head, on the
train split's pairs and base-model negatives); its reranking of the base model's top-``--rerank-depth``
is reported on dev and test. Every model is evaluated on dev and test at the end (test is never
used for anything else). Refresh overhead = training wall time (the loop, pool v1 preparation
excluded) of run 3 ÷ run 2: the same loop, steps and batches, the refresher actor re-encoding,
re-indexing, re-mining and rescoring beside it being the difference. ``--runs`` can add
``static+denoised`` (run 2's pool denoised, never refreshed) to separate the two effects.

Run:  .venv/bin/python bench/negatives.py [--max-docs 1000 --max-queries 1000 --steps 120 --every 30]
      [--json runs/bench-negatives.json]       (about 35 minutes on 2 CPU cores)
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RUNS = {
    "in-batch": {"train": {"negatives": "none"}, "refresh": {"mode": "off"}},
    "static": {"refresh": {"mode": "static", "denoise": False}},
    "refreshed+denoised": {"refresh": {"mode": "async", "denoise": True}},
    "static+denoised": {"refresh": {"mode": "static", "denoise": True}},
}
DEFAULT_RUNS = "in-batch,static,refreshed+denoised"


def _job(a, data_dir: Path, out: Path, name: str, ce: Path | None):
    from embedray.config import build_config
    from embedray.pipeline.config import TrainJobConfig

    raw = {
        "data": {"path": str(data_dir), "train_pairs": str(data_dir / "train_pairs.jsonl"),
                 "dev_split": "dev", "test_split": "test"},
        "model": {"name_or_path": "minilm-l6"},
        "loss": {"name": "infonce", "temperature": 0.05, "gather_across_workers": True},
        "train": {"max_steps": a.steps, "batch_size": a.batch_size, "num_negatives": 1, "negatives": "pool",
                  "lr": 3e-5, "max_query_length": 32, "max_doc_length": 96, "eval_every": 0,
                  "checkpoint_every": a.steps, "num_threads": 1, "seed": a.seed},
        "cluster": {"num_workers": 2, "cpus_per_worker": 0.875, "storage_path": str(out), "run_name": name},
        "mining": {"k": 20, "num_negatives": 3, "range_min": 1, "batch_size": 64, "seed": a.seed},
        "cross_encoder": {"base_model": "minilm-l6", "loss": a.ce_loss, "max_steps": a.ce_steps, "batch_size": 8,
                          "negatives_per_query": 2, "learning_rate": a.ce_lr, "max_length": 128,
                          "denoise_margin": a.denoise_margin, "seed": a.seed},
        "refresh": {"every": a.every, "num_cpus": 0.25, "cross_encoder": str(ce) if ce else None},
    }
    for section, values in RUNS.get(name, {}).items():
        raw[section] = {**raw.get(section, {}), **values}
    return build_config(TrainJobConfig, raw, name)


def _evaluate(model_dir: str, data_dir: Path) -> dict:
    from embedray.data.beir import load_beir
    from embedray.eval.retrieval import evaluate_retrieval
    from embedray.models.backends import load_encoder

    model = load_encoder(model_dir)
    out = {}
    for split in ("dev", "test"):
        res = evaluate_retrieval(model, load_beir(data_dir, split, missing_docs="keep"), k=100, show_progress=False)
        out[split] = res.metrics["ndcg@10"]
        out[f"{split}_run"] = res.run
    return out


def debian_subset(out: Path, max_docs: int, max_queries: int, seed: int) -> Path:
    """The Debian BEIR folder of this size under ``out``, built on first use."""
    from embedray.data.debian import build_debian

    data_dir = out / f"debian-{max_docs}-{max_queries}"
    if not (data_dir / "corpus.jsonl").is_file():
        build_debian(data_dir, max_docs=max_docs, max_queries=max_queries, seed=seed)
    return data_dir


def _telemetry(run_dir: Path) -> list[dict]:
    path = run_dir / "detailed_training_logs.json"
    if not path.is_file():
        return []
    return [e for e in json.loads(path.read_text())["events"] if e["kind"] == "refresh"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-docs", type=int, default=1000)
    p.add_argument("--max-queries", type=int, default=1000, help="over train/dev/test, 80/10/10")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--batch-size", type=int, default=8, help="per worker (2 workers)")
    p.add_argument("--every", type=int, default=30, help="refresh every K optimizer steps")
    p.add_argument("--ce-steps", type=int, default=150)
    p.add_argument("--ce-loss", default="listnet", help="cross-encoder loss: bce, listnet or lambda")
    p.add_argument("--ce-lr", type=float, default=5e-5)
    p.add_argument("--denoise-margin", type=float, default=0.0,
                   help="drop a negative whose cross-encoder score >= the positive's - margin")
    p.add_argument("--rerank-depth", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", default=DEFAULT_RUNS, help="comma-separated, of: " + ", ".join(RUNS))
    p.add_argument("--out", default="runs/bench-negatives")
    p.add_argument("--json", default=None)
    a = p.parse_args()

    from embedray.cluster.runtime import ensure_ray
    from embedray.cluster.train import run_training
    from embedray.data.beir import load_beir
    from embedray.pipeline.refresh import base_cross_encoder
    from embedray.training.cross_encoder import evaluate_reranker
    from embedray.training.data import load_training_data

    out = Path(a.out).resolve()
    data_dir = debian_subset(out, a.max_docs, a.max_queries, a.seed)
    ensure_ray()

    rows: dict[str, dict] = {}
    base = _evaluate("minilm-l6", data_dir)
    rows["base minilm-l6"] = {"dev": base["dev"], "test": base["test"]}
    print(f"base minilm-l6: dev {base['dev']:.4f} test {base['test']:.4f}", flush=True)

    ce = out / "cross-encoder"
    if not (ce / "config.json").is_file():
        job = _job(a, data_dir, out, "cross-encoder-prep", None)
        t0 = time.perf_counter()
        data = load_training_data(job.data)
        base_cross_encoder(job, data, ce, out)
        print(f"cross-encoder trained in {time.perf_counter() - t0:.0f} s", flush=True)
    rerank = {}
    for split in ("dev", "test"):
        r = evaluate_reranker(str(ce), load_beir(data_dir, split, missing_docs="keep"), base[f"{split}_run"],
                              k=a.rerank_depth)
        rerank[split] = r["after"]["ndcg@10"]
    rows[f"cross-encoder rerank of base top-{a.rerank_depth}"] = rerank
    print(f"cross-encoder rerank: dev {rerank['dev']:.4f} test {rerank['test']:.4f}", flush=True)

    for name in a.runs.split(","):
        if name not in RUNS:
            raise SystemExit(f"--runs: unknown run {name!r}; choose from {', '.join(RUNS)}")
        job = _job(a, data_dir, out, name, ce)
        t0 = time.perf_counter()
        summary = run_training(job)
        total = time.perf_counter() - t0
        ev = _evaluate(summary["final_model"], data_dir)
        tel = _telemetry(out / name)
        rows[name] = {"dev": ev["dev"], "test": ev["test"], "train_wall_s": summary["wall_s"], "total_wall_s": total,
                      "final_loss": summary["final_loss"], "refreshes": tel}
        print(f"{name}: dev {ev['dev']:.4f} test {ev['test']:.4f}  training {summary['wall_s']:.0f} s "
              f"(with mining {total:.0f} s)", flush=True)

    print("\n| run | dev nDCG@10 | test nDCG@10 | training wall (s) |\n|---|---|---|---|")
    for name, r in rows.items():
        wall = f"{r['train_wall_s']:.0f}" if "train_wall_s" in r else ""
        print(f"| {name} | {r['dev']:.4f} | {r['test']:.4f} | {wall} |")
    for r in rows.get("refreshed+denoised", {}).get("refreshes", []):
        if r.get("failed"):
            print(f"refresh from step {r.get('snapshot_step')} failed: {r.get('error')}")
            continue
        print(f"refresh v{r['version']}: snapshot step {r['snapshot_step']}, in use from step {r['finished_step']}; "
              f"kept {r['negatives_kept']}, removed {r['negatives_removed']} (false-negative rate "
              f"{r['false_negative_rate']:.3f}), overlap@10 with the previous pool {r['overlap@10']}, "
              f"wall {r['wall_s']:.0f} s (encode {r['encode_s'] or 0:.0f} / index {r['index_s'] or 0:.1f} / "
              f"search {r['search_s'] or 0:.1f} / rescore {r['rescore_s'] or 0:.0f})")
    if "refreshed+denoised" in rows and "static" in rows:
        ratio = rows["refreshed+denoised"]["train_wall_s"] / rows["static"]["train_wall_s"]
        rows["refresh_overhead"] = ratio
        print(f"refresh overhead (training wall, async every {a.every} ÷ static): {ratio:.2f}×")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "rows": rows}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
