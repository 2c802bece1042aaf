"""What a training worker holds as the data grows: its shard of the run's store vs every row.

For Debian builds of growing size (default: 1,000 and 10,000 documents and the whole dataset,
~58k documents and ~46k training pairs), each measured in fresh processes:

- ``store``: the driver writes the run's training-data store (``embedray.training.shards``: the
  texts as memory-mapped Arrow, one file of rows per worker);
- ``sharded``: what a worker of a 2-worker run does with it before its first step, in a fresh
  process: open its shard, build its batch plan and negative sampler, then assemble the texts of
  20 batches of 32 (the growth of the process's own memory, ``anon``, and of the mapped file
  pages it touched, ``file``, which a node's processes share; ``s`` the wall time);
- ``every row`` (the peer: what each worker did before the store): read the whole BEIR folder and
  every training pair into Python (``load_training_data`` + ``training_examples``), the same plan,
  sampler and batches;
- ``ray``: a real 2-worker Ray Train run of ``tiny-bert`` for 3 steps on the store, from scratch:
  each worker's own memory (``anon``) and peak RSS at its first step, and the seconds from
  ``run_training`` (store written, Ray Train started) to that step.

Lines: ``ratio sharded_anon_full_vs_1k`` (a worker's own memory for the data on the whole dataset
÷ on 1,000 documents; flat is 1), ``ratio sharded_vs_every_row_anon_full`` and
``ratio sharded_vs_every_row_s_full`` (the store's worker ÷ the every-row worker, whole dataset).

Run:  .venv/bin/python bench/scale.py [--sizes 1000,10000,0] [--no-ray] [--json out.json]
      (0 = every package; about 10 minutes on 2 CPU cores)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BATCHES, BATCH_SIZE, WORKERS = 20, 32, 2


def build(out: Path, max_docs: int) -> Path:
    """The Debian BEIR folder with ``max_docs`` documents and as many queries (0: every package)."""
    from embedray.data.debian import build_debian

    data_dir = out / f"debian-{max_docs or 'all'}"
    if not (data_dir / "corpus.jsonl").is_file():
        build_debian(data_dir, max_docs=max_docs or None, max_queries=max_docs or None)
    return data_dir


def data_config(data_dir: Path):
    from embedray.training.config import DataConfig

    return DataConfig(path=str(data_dir), train_pairs=str(data_dir / "train_pairs.jsonl"), dev_split=None)


def worker_side(mode: str, data_dir: Path, run_dir: Path) -> dict:
    """One worker's data work before its first step, in this (fresh) process: the seconds it
    takes and what it adds to the process's resident memory (``anon``: its own heap; ``file``:
    pages of mapped files, shared with every process of the node that maps them)."""
    import pyarrow as pa

    from embedray.memory import rss_mib
    from embedray.training.batches import BatchPlan, NegativeSampler, canonical_order
    from embedray.training.data import load_training_data, training_examples
    from embedray.training.shards import doc_ids, open_shard

    pa.array([1]).to_numpy()  # pyarrow's numpy bridge loads once per process: not the data's
    before, t0 = rss_mib(), time.perf_counter()
    if mode == "sharded":
        shard = open_shard(run_dir, 0, WORKERS)
        data, rows = shard.data, shard.examples
        plan = BatchPlan(rows, rows.pos_chars, batch_size=BATCH_SIZE, world_size=1, seed=0, bucket_batches=16)
        sampler = NegativeSampler(doc_ids(data.corpus), data.positives, num_negatives=1, mode="random", seed=0,
                                  queries=data.positives)
    else:
        cfg = data_config(data_dir)
        data = load_training_data(cfg)
        rows = canonical_order(training_examples(cfg, data))
        plan = BatchPlan(rows, lambda d: len(data.doc_text(d)), batch_size=BATCH_SIZE, world_size=WORKERS, seed=0,
                         bucket_batches=16)
        sampler = NegativeSampler(sorted(data.corpus), data.positives, num_negatives=1, mode="random", seed=0)
    chars = 0
    for i in range(BATCHES):
        batch = [rows[int(j)] for j in plan.rank_indices(i, 0)]
        for slot, ex in enumerate(batch):
            chars += len(data.queries[ex.query_id]) + len(data.doc_text(ex.pos_id))
            chars += sum(len(data.doc_text(d)) for d in sampler.sample(ex, i, slot))
    after = rss_mib()
    return {"anon_mib": round(after["anon"] - before["anon"], 1), "file_mib": round(after["file"] - before["file"], 1),
            "s": round(time.perf_counter() - t0, 2), "rows": len(rows), "chars": chars}


def measure_worker(mode: str, data_dir: Path, run_dir: Path) -> dict:
    """``worker_side`` in a fresh interpreter (imports done before the clock starts)."""
    code = ("import json, sys; sys.path.insert(0, 'bench'); import scale; "
            "import embedray.training.data, embedray.training.shards, pyarrow, numpy; "
            f"print('RESULT', json.dumps(scale.worker_side({mode!r}, scale.Path({str(data_dir)!r}), "
            f"scale.Path({str(run_dir)!r}))))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent)
    return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])


def write_store(data_dir: Path, run_dir: Path) -> dict:
    from embedray.training.batches import canonical_order
    from embedray.training.data import load_training_data, training_examples
    from embedray.training.shards import write_store as write

    cfg = data_config(data_dir)
    data = load_training_data(cfg)
    t0 = time.perf_counter()
    manifest = write(run_dir, data, canonical_order(training_examples(cfg, data)), WORKERS)
    size = sum(p.stat().st_size for p in (run_dir / "train_data").iterdir())
    return {"s": round(time.perf_counter() - t0, 2), "mib": round(size / 2**20, 1), "rows": manifest["rows"],
            "docs": manifest["docs"]}


class FirstStep:
    """``on_step`` callback: each worker's peak RSS and clock at its first step, to a file."""

    def __init__(self, folder: Path):
        self.folder = str(folder)

    def __call__(self, step: int, log) -> None:
        if step != 1:
            return
        import ray.train

        from embedray.memory import peak_rss_mib, rss_mib

        rank = ray.train.get_context().get_world_rank()
        Path(self.folder, f"rank-{rank}.json").write_text(json.dumps({"peak_rss_mib": peak_rss_mib(), **rss_mib(),
                                                                      "t": time.time()}))


def ray_run(data_dir: Path, out: Path, name: str) -> dict:
    from embedray.cluster.train import run_training
    from embedray.config import build_config
    from embedray.pipeline.config import TrainJobConfig

    job = build_config(TrainJobConfig, {
        "data": {"path": str(data_dir), "train_pairs": str(data_dir / "train_pairs.jsonl"), "dev_split": None},
        "model": {"name_or_path": "tiny-bert"},
        "train": {"max_steps": 3, "batch_size": BATCH_SIZE, "num_negatives": 1, "negatives": "random",
                  "max_query_length": 32, "max_doc_length": 96, "eval_every": 0, "checkpoint_every": 3},
        "cluster": {"num_workers": WORKERS, "cpus_per_worker": 1, "storage_path": str(out), "run_name": name},
    }, name)
    shutil.rmtree(out / name, ignore_errors=True)  # a fresh run, not a resumed one
    marks = out / name / "first-step"
    marks.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    run_training(job, on_step=[FirstStep(marks)])
    placement = json.loads((out / name / "placement.json").read_text())
    workers = {}
    for rank in range(WORKERS):
        first = json.loads((marks / f"rank-{rank}.json").read_text())
        opened = placement[f"worker-{rank}"]["data"]
        workers[rank] = {"peak_rss_mib": round(first["peak_rss_mib"]), "anon_mib": round(first["anon"]),
                         "to_first_step_s": round(first["t"] - t0, 1),
                         "open_s": opened["open_s"], "open_rss_mib": opened["peak_rss_mib_delta"]}
    return workers


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,10000,0", help="documents per build, comma-separated; 0: all")
    p.add_argument("--out", default="runs/bench-scale")
    p.add_argument("--no-ray", action="store_true", help="skip the Ray Train runs")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in a.sizes.split(",")]
    if not a.no_ray:
        from embedray.cluster.runtime import init_local_ray

        init_local_ray(num_cpus=2)
    rows = []
    for size in sizes:
        data_dir = build(out, size)
        run_dir = out / f"store-{size or 'all'}"
        row = {"size": size, "store": write_store(data_dir, run_dir)}
        row["sharded"] = measure_worker("sharded", data_dir, run_dir)
        row["every_row"] = measure_worker("every_row", data_dir, run_dir)
        if not a.no_ray:
            row["ray"] = ray_run(data_dir, out, f"ray-{size or 'all'}")
        rows.append(row)
        print(json.dumps(row), flush=True)

    print(f"\n| documents | training pairs | store: write s / MiB | worker, sharded: own MiB / mapped MiB / s | "
          f"worker, every row: own MiB / s |" + (" Ray workers: own MiB / peak RSS MiB at step 1, s to step 1 |"
                                                 if not a.no_ray else ""))
    print("|---:|---:|---|---|---|" + ("---|" if not a.no_ray else ""))
    for r in rows:
        s, sh, ev = r["store"], r["sharded"], r["every_row"]
        line = (f"| {s['docs']:,} | {s['rows']:,} | {s['s']:.1f} / {s['mib']:.0f} | {sh['anon_mib']:.1f} / "
                f"{sh['file_mib']:.1f} / {sh['s']:.2f} | {ev['anon_mib']:.1f} / {ev['s']:.2f} |")
        if "ray" in r:
            ws = list(r["ray"].values())
            line += (" " + ", ".join(f"{w['anon_mib']:,} / {w['peak_rss_mib']:,}" for w in ws)
                     + f", {max(w['to_first_step_s'] for w in ws):.0f} s |")
        print(line)
    first, last = rows[0], rows[-1]
    floor = lambda v: max(v, 1.0)  # noqa: E731  (MiB: below one is noise)
    ratios = {"sharded_anon_full_vs_1k": floor(last["sharded"]["anon_mib"]) / floor(first["sharded"]["anon_mib"]),
              "sharded_vs_every_row_anon_full": floor(last["sharded"]["anon_mib"]) / floor(last["every_row"]["anon_mib"]),
              "sharded_vs_every_row_s_full": last["sharded"]["s"] / last["every_row"]["s"]}
    for name, value in ratios.items():
        print(f"ratio {name} {value:.3f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "rows": rows, "ratio": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
