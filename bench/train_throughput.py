"""Training pairs/s: embedray on Ray Train vs sentence-transformers' SentenceTransformerTrainer.

Same model (minilm-l6), data (Debian train pairs), max length 128, batch 32 (global), one hard
negative per pair (random), same 2-CPU budget, measured in one run. Steady-state throughput:
the first WARMUP steps of each run are not timed. The peers: ``SentenceTransformerTrainer`` +
``MultipleNegativesRankingLoss`` as installed (fp32) and with ``bf16=True``; embedray with
``train.precision`` ``auto`` (its default: bf16 where the CPU has bf16 units) and ``fp32``, both
with ``train.attention`` from ``--attention`` (default ``auto``: eager attention in training
passes on a CPU) and ``train.weight_dtype`` from ``--weight-dtype`` (default ``auto``: bf16
working weights with fp32 masters under bf16 on a CPU; ``fp32``: autocast over fp32 weights;
several values: a row per value, the first one's runs give the ratios).

Printed: the table, then ``ratio vs_st_fp32`` and ``ratio vs_st_bf16`` (embedray's fastest
``auto`` run over each peer).

    .venv/bin/python bench/train_throughput.py --data data/debian --steps 40 [--json out.json]
        [--attention auto|eager|sdpa] [--weight-dtype auto|fp32|bf16 [...]]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
WARMUP = 3


def sentence_transformers_run(data, pairs, steps, batch, max_len, threads, bf16: bool = False) -> float:
    import torch
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    from embedray.models import resolve_model

    torch.set_num_threads(threads)
    rng = random.Random(0)
    doc_ids = sorted(data.corpus)
    rows = {"anchor": [], "positive": [], "negative": []}
    for p in pairs[: steps * batch]:
        neg = rng.choice(doc_ids)
        while neg == p["pos_id"]:
            neg = rng.choice(doc_ids)
        rows["anchor"].append(data.queries[p["query_id"]])
        rows["positive"].append(data.doc_text(p["pos_id"]))
        rows["negative"].append(data.doc_text(neg))
    model = SentenceTransformer(str(resolve_model("minilm-l6")), device="cpu")
    model.max_seq_length = max_len
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        args = SentenceTransformerTrainingArguments(
            output_dir=out, max_steps=steps, per_device_train_batch_size=batch, learning_rate=3e-5,
            warmup_ratio=0.1, save_strategy="no", report_to="none", logging_steps=10_000,
            use_cpu=True, bf16=bf16, dataloader_num_workers=0, seed=0)
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=Dataset.from_dict(rows),
                                             loss=MultipleNegativesRankingLoss(model), callbacks=[Clock()])
        trainer.train()
    timed = stamps[WARMUP:]
    return batch * (len(timed) - 1) / (timed[-1] - timed[0])


def embedray_run(data_dir, steps, batch, max_len, workers, storage, precision: str = "auto",
                 attention: str = "auto", weight_dtype: str = "auto") -> float:
    from embedray.cluster.train import run_training
    from embedray.config import build_config
    from embedray.pipeline.config import TrainJobConfig

    job = build_config(TrainJobConfig, {
        "data": {"path": str(data_dir), "train_pairs": str(Path(data_dir) / "train_pairs.jsonl"), "dev_split": None},
        "model": {"name_or_path": "minilm-l6"},
        "loss": {"name": "infonce", "temperature": 0.05, "gather_across_workers": workers > 1},
        "train": {"max_steps": steps, "batch_size": batch // workers, "num_negatives": 1, "lr": 3e-5,
                  "max_query_length": max_len, "max_doc_length": max_len, "checkpoint_every": 0,
                  "num_threads": 2 // workers, "precision": precision, "attention": attention,
                  "weight_dtype": weight_dtype if precision != "fp32" else "auto"},
        "cluster": {"num_workers": workers, "cpus_per_worker": 2 / workers, "storage_path": str(storage),
                    "run_name": f"bench-{workers}w-{time.time_ns()}"},
    })
    run_training(job)
    log = json.loads((Path(storage) / job.cluster.run_name / "detailed_training_logs.json").read_text())
    secs = [batch / r["pairs_per_s"] for r in log["steps"][WARMUP:]]
    return batch * len(secs) / sum(secs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/debian", help="BEIR folder from `embedray data debian`")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="embedray worker counts to try")
    ap.add_argument("--attention", default="auto", choices=["auto", "eager", "sdpa"],
                    help="embedray's train.attention (default: %(default)s)")
    ap.add_argument("--weight-dtype", nargs="+", default=["auto"], choices=["auto", "fp32", "bf16"],
                    help="embedray's train.weight_dtype in its bf16 runs, one row each; the first gives "
                         "the ratios (default: %(default)s)")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()

    from embedray.training.config import DataConfig
    from embedray.training.data import load_training_data, pair_rows

    cfg = DataConfig(path=a.data, train_pairs=str(Path(a.data) / "train_pairs.jsonl"), dev_split=None)
    data, pairs = load_training_data(cfg), pair_rows(cfg)
    st_fp32, st_bf16 = "sentence-transformers fp32 (1 process, 2 threads)", "sentence-transformers bf16=True"
    results = {st_fp32: sentence_transformers_run(data, pairs, a.steps, a.batch, a.max_len, threads=2),
               st_bf16: sentence_transformers_run(data, pairs, a.steps, a.batch, a.max_len, threads=2, bf16=True)}
    ours = []
    with tempfile.TemporaryDirectory() as storage:
        runs = [("auto", dtype) for dtype in a.weight_dtype] + [("fp32", "auto")]
        for precision, dtype in runs:
            for w in a.workers:
                weights = f", weights {dtype}" if precision == "auto" and len(a.weight_dtype) > 1 else ""
                name = (f"embedray {precision}{weights} ({w} worker{'s' * (w > 1)} × {2 // w} "
                        f"thread{'s' * (w == 1)})")
                results[name] = embedray_run(a.data, a.steps, a.batch, a.max_len, w, storage, precision, a.attention,
                                             dtype)
                if precision == "auto" and dtype == a.weight_dtype[0]:
                    ours.append(results[name])
    base = results[st_fp32]
    print(f"\ntraining throughput, minilm-l6, batch {a.batch}, max_len {a.max_len}, 1 hard negative, "
          f"{a.steps} steps ({WARMUP} warm-up steps not timed)")
    print(f"{'run':55s} {'pairs/s':>9s} {'vs st fp32':>10s}")
    for name, v in results.items():
        print(f"{name:55s} {v:9.1f} {v / base:9.2f}x")
    ratios = {"vs_st_fp32": max(ours) / base, "vs_st_bf16": max(ours) / results[st_bf16]}
    for name, v in ratios.items():
        print(f"ratio {name} {v:.3f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"pairs_per_s": {k: round(v, 2) for k, v in results.items()},
                                            "ratio": {k: round(v, 3) for k, v in ratios.items()}}, indent=2))


if __name__ == "__main__":
    main()
