"""GradCache on this machine: peak memory and pairs/s of one training process, by batch layout.

Each layout trains minilm-l6 for ``--steps`` steps on the demo's Debian build (InfoNCE, one
random hard negative, documents cut at 128 tokens, ``precision: auto``) in its own process, so
its peak resident memory (``ru_maxrss``) is its own:

- ``batch 32``: the plain loop;
- ``batch 256``: the plain loop, one forward pass over the whole batch;
- ``batch 256, mini 32``: ``train.mini_batch_size: 32`` (GradCache): 256 queries whose softmax
  holds every document of the batch, at about the activation memory of 32.

Printed: the table, then ``ratio memory_cached_vs_plain_256`` (peak RSS of the cached layout /
the plain one at batch 256) and ``ratio pairs_per_s_cached_256_vs_plain_32``.

Run:  .venv/bin/python bench/grad_cache.py [--steps 4]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

LAYOUTS = {"batch 32": (32, None), "batch 256": (256, None), "batch 256, mini 32": (256, 32)}


def _child(data: str, out: str, batch: int, mini: int | None, steps: int) -> None:
    from embedray.config import build_config
    from embedray.pipeline.config import TrainJobConfig
    from embedray.pipeline.runtime import run_local

    job = build_config(TrainJobConfig, {
        "data": {"path": data, "dev_split": None},
        "model": {"name_or_path": "minilm-l6"},
        "loss": {"name": "infonce", "temperature": 0.05},
        "train": {"max_steps": steps, "batch_size": batch, "mini_batch_size": mini, "num_negatives": 1,
                  "max_query_length": 32, "max_doc_length": 128, "checkpoint_every": 0, "eval_every": 0,
                  "warmup_ratio": 0.0},
        "cluster": {"storage_path": out, "run_name": "run"},
    }, "bench")
    summary = run_local(job)
    # The first step warms up allocators and kernels: the rate is over the later ones.
    steps_log = json.loads((Path(out) / "run" / "detailed_training_logs.json").read_text())["steps"][1:]
    rate = sum(r["pairs_per_s"] for r in steps_log) / max(1, len(steps_log))
    print(json.dumps({"pairs_per_s": rate, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "steps": summary["steps"]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        data, out, batch, mini, steps = args.child
        _child(data, out, int(batch), None if mini == "-" else int(mini), int(steps))
        return
    from embedray.data import build_debian

    tmp = Path(tempfile.mkdtemp(prefix="embedray-bench-gradcache-"))
    build_debian(tmp / "debian", max_docs=2000, max_queries=1200)
    rows = {}
    for name, (batch, mini) in LAYOUTS.items():
        proc = subprocess.run([sys.executable, __file__, "--child", str(tmp / "debian"), str(tmp / name.replace(" ", "_")),
                               str(batch), "-" if mini is None else str(mini), str(args.steps)],
                              capture_output=True, text=True, check=True)
        rows[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(name, rows[name], flush=True)
    print("\n| layout | in-batch documents per query | pairs/s | peak RSS (MiB) |")
    print("|---|---:|---:|---:|")
    for name, (batch, _) in LAYOUTS.items():
        r = rows[name]
        print(f"| {name} | {2 * batch} | {r['pairs_per_s']:.1f} | {r['peak_rss_mib']:.0f} |")
    cached, plain256, plain32 = rows["batch 256, mini 32"], rows["batch 256"], rows["batch 32"]
    print(f"ratio memory_cached_vs_plain_256 {cached['peak_rss_mib'] / plain256['peak_rss_mib']:.3f}")
    print(f"ratio pairs_per_s_cached_256_vs_plain_32 {cached['pairs_per_s'] / plain32['pairs_per_s']:.3f}")


if __name__ == "__main__":
    main()
