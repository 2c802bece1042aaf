"""What a negative refresh costs as the corpus grows, up to the whole Debian dataset on Ray.

For Debian builds of growing size (default: 1,000 and 10,000 documents and every package,
~58k documents and ~46k training queries), one Ray Train run each of ``minilm-l6`` at
``precision: auto`` (bf16 on AMX/AVX512-BF16 CPUs), 2 workers, with a ``sync`` refresher every
``--every`` steps for ``3 × --every`` steps, so that each run has:

- pool v1: mined by the base model on the refresher actor before the workers start;
- refresh v2: the whole corpus re-encoded with the step-``every`` weights;
- refresh v3: ``refresh.reencode: --reencode`` (the documents near the training queries and a
  rotating slice of the rest; 1 re-encodes everything again).

Denoising uses the bi-encoder's positive-aware rule (no cross-encoder: its training is not what
grows with the corpus). ``sync`` makes the workers wait for each refresh, so a refresh's wall
time is all on the clock and the refresher has the node's cores. Per run the script prints the
wall time of each phase (pool v1, the training steps, each refresh split into encode / index /
search) and the refresher's peak RSS.

Lines: ``ratio refresh_s_per_1k_docs_full`` (refresh v2's seconds per thousand documents on the
largest corpus), ``ratio refresh_v3_vs_v2_full`` (the budgeted refresh's wall time ÷ the full
one's, largest corpus).

Run:  .venv/bin/python bench/refresh_scale.py [--sizes 1000,10000,0 --every 20 --reencode 0.25]
      [--json out.json]        (0 = every package; about 40 minutes on 2 CPU cores)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _job(a, data_dir: Path, out: Path, name: str):
    from embedray.config import build_config
    from embedray.pipeline.config import TrainJobConfig

    return build_config(TrainJobConfig, {
        "data": {"path": str(data_dir), "train_pairs": str(data_dir / "train_pairs.jsonl"), "dev_split": None},
        "model": {"name_or_path": "minilm-l6", "max_seq_length": 128},  # what the refresher encodes with
        "loss": {"name": "infonce", "temperature": 0.05, "gather_across_workers": True},
        "train": {"max_steps": 3 * a.every, "batch_size": a.batch_size, "num_negatives": 1, "negatives": "pool",
                  "lr": 3e-5, "max_query_length": 32, "max_doc_length": 96, "eval_every": 0,
                  "checkpoint_every": 3 * a.every, "num_threads": 1},
        "mining": {"k": 20, "num_negatives": 3, "range_min": 1, "batch_size": 64, "max_score_ratio": 0.95},
        "refresh": {"mode": "sync", "every": a.every, "denoise": False, "reencode": a.reencode, "num_cpus": 0.25},
        "cluster": {"num_workers": 2, "cpus_per_worker": 0.875, "storage_path": str(out), "run_name": name},
    }, name)


def _phases(run_dir: Path) -> dict:
    logs = json.loads((run_dir / "detailed_training_logs.json").read_text())
    refreshes = [e for e in logs["events"] if e["kind"] == "refresh" and not e.get("failed")]
    pool_v1 = json.loads((run_dir / "initial_pool.json").read_text())
    return {"pool_v1": pool_v1, "refreshes": refreshes}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,10000,0", help="documents per build, comma-separated; 0: all")
    p.add_argument("--every", type=int, default=20, help="refresh every K optimizer steps")
    p.add_argument("--batch-size", type=int, default=16, help="per worker")
    p.add_argument("--reencode", type=float, default=0.25, help="refresh.reencode (refresh v3 onwards)")
    p.add_argument("--out", default="runs/bench-refresh-scale")
    p.add_argument("--data-out", default="runs/bench-scale", help="where the Debian builds live (bench/scale.py's)")
    p.add_argument("--json", default=None)
    a = p.parse_args()

    from scale import build  # bench/ is the script's folder

    from embedray.cluster.runtime import init_local_ray
    from embedray.cluster.train import run_training

    out = Path(a.out).resolve()
    init_local_ray(num_cpus=2)
    rows = []
    for size in [int(s) for s in a.sizes.split(",")]:
        data_dir = build(Path(a.data_out).resolve(), size)
        name = f"debian-{size or 'all'}"
        shutil.rmtree(out / name, ignore_errors=True)
        t0 = time.perf_counter()
        summary = run_training(_job(a, data_dir, out, name))
        wall = time.perf_counter() - t0
        ph = _phases(out / name)
        v1, refreshes = ph["pool_v1"], ph["refreshes"]
        row = {"size": size, "docs": sum(1 for _ in open(data_dir / "corpus.jsonl")),
               "queries": v1["queries_mined"], "wall_s": wall, "train_wall_s": summary["wall_s"],
               "pairs_per_s": summary.get("pairs_per_s"), "pool_v1": v1, "refreshes": refreshes}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("refreshes", "pool_v1")}), flush=True)

    def cell(t: dict) -> str:
        parts = "/".join(f"{t.get(k) or 0:.0f}" for k in ("encode_s", "index_s", "search_s"))
        reused = f", {t['docs_reused']:,} reused" if t.get("docs_reused") else ""
        return f"{t['wall_s']:.0f} s ({parts}; {t.get('docs_encoded') or 0:,} docs encoded{reused}), {t['peak_rss_mib']:,} MiB"

    print("\n| documents | training queries | pool v1 | refresh v2 (full) | refresh v3 | training steps s | run wall s |")
    print("|---:|---:|---|---|---|---:|---:|")
    for r in rows:
        by_version = {t["version"]: t for t in r["refreshes"]}
        v2, v3 = by_version.get(2), by_version.get(3)
        print(f"| {r['docs']:,} | {r['queries']:,} | {cell(r['pool_v1'])} | {cell(v2) if v2 else '-'} | "
              f"{cell(v3) if v3 else '-'} | {r['train_wall_s'] - sum(t['wall_s'] for t in r['refreshes']):.0f} | "
              f"{r['wall_s']:.0f} |")
    print("(each cell: wall s (encode / index / search s; documents encoded), the refresher's peak RSS)")
    last = {t["version"]: t for t in rows[-1]["refreshes"]}
    ratios = {}
    if 2 in last:
        ratios["refresh_s_per_1k_docs_full"] = last[2]["wall_s"] / (rows[-1]["docs"] / 1000)
    if 2 in last and 3 in last:
        ratios["refresh_v3_vs_v2_full"] = last[3]["wall_s"] / last[2]["wall_s"]
    for name, value in ratios.items():
        print(f"ratio {name} {value:.3f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "rows": rows, "ratio": ratios}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
