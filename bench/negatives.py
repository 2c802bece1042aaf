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
is reported on dev and test. Each run evaluates dev every ``--curve-every`` steps (the curve of
dev nDCG@10 against step, ``--plot``); every final model is evaluated on dev and test (test is
never used for anything else), and the differences between runs come with a paired bootstrap
interval over queries. Refresh overhead = the summed optimizer-step time of run 3 ÷ run 2 (the
same steps and queries per batch; the dev evaluations, checkpoints and pool v1 preparation excluded), the
refresher actor re-encoding, re-indexing, re-mining and rescoring beside the trainers being the
difference; the loops' whole wall times are printed beside it, and, from the refreshed run
alone, how much slower its steps are while a refresh is in flight than while none is (free of
the drift between runs). ``--runs`` can add
``static+denoised`` (run 2's pool denoised, never refreshed) to separate the two effects, and
``refreshed+denoised-idle`` (run 3 with the refresher under ``SCHED_IDLE``, ``refresh.niceness:
idle``, instead of nice 10: its overhead against how late its pools arrive); a refreshed run
ending in ``-everyK`` refreshes every K steps instead of ``--every`` (``refreshed+denoised-every20``);
``refreshed+denoised-sync`` refreshes synchronously (``refresh.mode: sync``: training waits while the
refresh uses every core), so its pools switch at the very steps it snapshots, whatever the load;
``refreshed`` and ``refreshed-sync`` refresh without denoising (with ``static`` and
``static+denoised``, the two effects apart: each pair differing in one of them is compared);
``static+denoised+refill`` replaces each dropped negative with the next candidate kept
(``mining.rescore_candidates``), ``static+positive-aware`` denoises by NV-Retriever's rule instead.
Denoised runs replace the negatives they drop as ``mining.rescore_candidates``' default does
(``--rescore-candidates 3``: none replaced). A finished run's result stays in its folder and is
reused by a later invocation with the same arguments (``--rerun`` trains again). ``--max-docs 0
--max-queries 0`` takes the whole Debian dataset (``--eval-queries`` sizes its dev and test
splits); ``--curve-every -1`` leaves every dev evaluation out of the loop (each encodes the whole
corpus), the base and final models still evaluated on dev and test.

``--data`` runs the same comparison on another BEIR folder with train and test judgements (e.g.
SciFact); without a dev split, a seeded ``--dev-queries`` of its train queries are held out as
dev (train on the rest; the corpus, queries and test judgements are linked, not copied).

Run:  .venv/bin/python bench/negatives.py [--max-docs 2000 --max-queries 2000 --steps 240 --every 40]
      [--json runs/bench-negatives.json] [--plot runs/bench-negatives/curve.png]
      (about 55 minutes on 2 CPU cores)
      .venv/bin/python bench/negatives.py --data ../shared/datasets/scifact --every 80 --max-doc-length 128
      --max-seq-length 128 --curve-every 120 --out runs/bench-negatives-scifact --runs static,refreshed+denoised-sync,
      static+denoised,refreshed-sync,static+denoised+refill,static+positive-aware,refreshed-sync-every40
      (about 80 minutes on 2 CPU cores with bf16 units)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RUNS = {
    "in-batch": {"train": {"negatives": "none"}, "refresh": {"mode": "off"}},
    "static": {"refresh": {"mode": "static", "denoise": False}},
    "refreshed+denoised": {"refresh": {"mode": "async", "denoise": True}},
    "static+denoised": {"refresh": {"mode": "static", "denoise": True}},
    "refreshed+denoised-idle": {"refresh": {"mode": "async", "denoise": True, "niceness": "idle"}},
    "refreshed+denoised-sync": {"refresh": {"mode": "sync", "denoise": True}},
    # Denoised, each dropped negative replaced by the next candidate the denoiser keeps
    # (mining.rescore_candidates: three candidates scored per negative kept).
    "static+denoised+refill": {"refresh": {"mode": "static", "denoise": True}, "mining": {"rescore_candidates": 9}},
    # NV-Retriever's positive-aware rule instead of a cross-encoder (what a failed gate falls back to).
    "static+positive-aware": {"refresh": {"mode": "static", "denoise": False}, "mining": {"max_score_ratio": 0.95}},
    "refreshed": {"refresh": {"mode": "async", "denoise": False}},
    "refreshed-sync": {"refresh": {"mode": "sync", "denoise": False}},
}
DEFAULT_RUNS = "in-batch,static,refreshed+denoised"
EVERY = re.compile(r"(?P<run>.+?)(?:-every(?P<every>[1-9][0-9]*))?")


def _run(name: str) -> tuple[str, int | None]:
    """A ``--runs`` entry: one of :data:`RUNS`, a refreshed one optionally with ``-everyK`` (refresh
    every K steps instead of ``--every``)."""
    m = EVERY.fullmatch(name)
    if m is None or m["run"] not in RUNS or (m["every"] and not m["run"].startswith("refreshed")):
        raise SystemExit(f"--runs: unknown run {name!r}; choose from {', '.join(RUNS)} "
                         "(a refreshed one may end in -everyK)")
    return m["run"], int(m["every"]) if m["every"] else None


WORKERS = 2


def _job(a, data_dir: Path, out: Path, name: str, ce: Path | None):
    from embedray.config import build_config
    from embedray.pipeline.config import TrainJobConfig

    pairs = data_dir / "train_pairs.jsonl"  # Debian's builder writes them; other folders: qrels/train.tsv
    raw = {
        "data": {"path": str(data_dir), "train_pairs": str(pairs) if pairs.is_file() else None,
                 "dev_split": "dev", "test_split": "test"},
        "model": {"name_or_path": "minilm-l6"},
        "loss": {"name": "infonce", "temperature": 0.05, "gather_across_workers": True},
        "train": {"max_steps": a.steps, "batch_size": a.batch_size, "num_negatives": 1, "negatives": "pool",
                  "lr": 3e-5, "max_query_length": 32, "max_doc_length": a.max_doc_length,
                  "eval_every": max(a.curve_every, 0),
                  "checkpoint_every": a.steps, "num_threads": 1, "seed": a.seed},
        "cluster": {"num_workers": WORKERS, "cpus_per_worker": 0.875, "storage_path": str(out), "run_name": name},
        "mining": {"k": 20, "num_negatives": 3, "range_min": 1, "batch_size": 64, "seed": a.seed,
                   "rescore_candidates": a.rescore_candidates},
        "cross_encoder": {"base_model": "minilm-l6", "loss": a.ce_loss, "max_steps": a.ce_steps, "batch_size": 8,
                          "negatives_per_query": 2, "learning_rate": a.ce_lr, "max_length": 128,
                          "denoise_margin": a.denoise_margin, "denoise_fused": a.denoise_fused, "seed": a.seed},
        "refresh": {"every": a.every, "num_cpus": 0.25, "cross_encoder": str(ce) if ce else None},
    }
    if a.max_seq_length:
        raw["model"]["max_seq_length"] = a.max_seq_length
    if a.curve_every < 0:  # no dev evaluation inside the loop: the bench evaluates the final model itself
        raw["data"]["dev_split"] = None
    m = EVERY.fullmatch(name)
    if m["every"]:
        raw["refresh"]["every"] = int(m["every"])
    for section, values in RUNS.get(m["run"], {}).items():
        raw[section] = {**raw.get(section, {}), **values}
    return build_config(TrainJobConfig, raw, name)


def _evaluate(model_dir: str, data_dir: Path, max_seq_length: int | None = None) -> dict:
    from embedray.data.beir import load_beir
    from embedray.eval.metrics import per_query_ndcg
    from embedray.eval.retrieval import evaluate_retrieval
    from embedray.models.backends import load_encoder

    model = load_encoder(model_dir)
    if max_seq_length:
        model.max_seq_length = max_seq_length
    out, docs = {}, None
    for split in ("dev", "test"):  # one corpus encode for both splits (the same corpus, in the same order)
        data = load_beir(data_dir, split, missing_docs="keep")
        res = evaluate_retrieval(model, data, k=100, show_progress=False, corpus_embeddings=docs,
                                 return_embeddings=docs is None)
        docs = res.doc_embeddings if docs is None else docs
        out[split] = res.metrics["ndcg@10"]
        out[f"{split}_run"] = res.run
        out[f"{split}_per_query"] = per_query_ndcg(data.qrels, res.run)
    return out


def _logs(run_dir: Path) -> dict:
    path = run_dir / "detailed_training_logs.json"
    return json.loads(path.read_text()) if path.is_file() else {"steps": [], "events": []}


def _curve(logs: dict) -> list[tuple[int, float]]:
    """(step, dev nDCG@10) of every dev evaluation the loop logged (step 0, every ``eval_every``, final)."""
    seen = {}
    for e in logs["events"]:
        if e["kind"] == "dev" and "ndcg@10" in e:
            seen[e["step"]] = e["ndcg@10"]
    return sorted(seen.items())


def _step_seconds(logs: dict, pairs_per_step: int) -> float:
    """Summed optimizer-step time (each step's pairs ÷ its pairs/s): evaluations and checkpoints excluded."""
    return sum(pairs_per_step / r["pairs_per_s"] for r in logs["steps"] if r.get("pairs_per_s"))


def inflight_slowdown(logs: dict) -> tuple[float, float] | None:
    """Within one refreshed run: how much slower a step is while a refresh is in flight (snapshot
    taken, pool not yet published) than while none is, and the share of steps with one in flight.
    Both rates come from the same run, free of the drift between runs that the ratio to the static
    run carries. A refresh still running when training ends is not in the events: its steps count
    as free. None when either kind of step is missing."""
    busy = set()
    for e in logs["events"]:
        if e["kind"] == "refresh" and e.get("snapshot_step") is not None:
            busy.update(range(e["snapshot_step"] + 1, e["step"] + 1))
    rows = [(r["step"], 1 / r["pairs_per_s"]) for r in logs["steps"] if r.get("pairs_per_s")]
    on = [t for step, t in rows if step in busy]
    off = [t for step, t in rows if step not in busy]
    if not on or not off:
        return None
    return (sum(on) / len(on)) / (sum(off) / len(off)), len(on) / len(rows)


def _pool_switches(logs: dict) -> list[int]:
    return [e["step"] for e in logs["events"] if e["kind"] == "pool" and e.get("version", 1) > 1]


def plot_curves(rows: dict, path: Path) -> Path:
    """dev nDCG@10 against step, one line per run (dotted, in its colour: a refreshed run's new pools)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from embedray.training.plots import save_figure

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in rows.items():
        if r.get("curve"):
            line, = ax.plot(*zip(*r["curve"]), "o-", ms=3, label=name)
            for step in r.get("pool_switches", []):
                ax.axvline(step, color=line.get_color(), ls=":", lw=0.8)
    ax.set(xlabel="optimizer step", ylabel="dev nDCG@10",
           title="dev nDCG@10 by step (dotted: a refreshed pool in use)")
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, path)


COMPARISONS = [("in-batch", "static"), ("static", "refreshed+denoised"), ("in-batch", "refreshed+denoised"),
               ("static", "static+denoised"), ("static", "refreshed+denoised-idle"),
               ("refreshed+denoised", "refreshed+denoised-idle"),
               # With and without refreshing, each denoised; with and without denoising, each refreshed.
               ("static+denoised", "refreshed+denoised"), ("static+denoised", "refreshed+denoised-sync"),
               ("refreshed", "refreshed+denoised"), ("refreshed-sync", "refreshed+denoised-sync"),
               ("static", "static+denoised+refill"), ("static+denoised", "static+denoised+refill"),
               ("static", "static+positive-aware")]


def debian_subset(out: Path, max_docs: int, max_queries: int, seed: int, eval_queries: int = 0) -> Path:
    """The Debian BEIR folder of this size under ``out``, built on first use. ``max_docs`` /
    ``max_queries`` 0: the whole dataset; ``eval_queries``: the dev and test splits' size instead
    of their share of the queries."""
    from embedray.data.debian import build_debian

    data_dir = out / (f"debian-{max_docs or 'all'}-{max_queries or 'all'}"
                      + (f"-eval{eval_queries}" if eval_queries else ""))
    if not (data_dir / "corpus.jsonl").is_file():
        build_debian(data_dir, max_docs=max_docs or None, max_queries=max_queries or None, seed=seed,
                     split_queries={"dev": eval_queries, "test": eval_queries} if eval_queries else None)
    return data_dir


def denoising(name: str) -> bool:
    """Whether run ``name`` denoises with the cross-encoder (``refresh.denoise``)."""
    return bool(RUNS[_run(name)[0]]["refresh"].get("denoise"))


def heldout_dev(src: Path, out: Path, dev_queries: int, seed: int) -> Path:
    """``src`` itself when it has a dev split; else a BEIR folder under ``out`` whose dev split is a
    seeded ``dev_queries`` of ``src``'s train queries and whose train split is the rest. The
    corpus, queries and test judgements are symlinks to ``src``'s."""
    import random

    from embedray.atomic import atomic_dir
    from embedray.data.beir import beir_file

    src = src.expanduser().resolve()
    if (src / "qrels" / "dev.tsv").is_file():
        return src
    for split in ("train", "test"):
        if not (src / "qrels" / f"{split}.tsv").is_file():
            raise SystemExit(f"--data {src}: no qrels/{split}.tsv (this bench trains on train and reports test)")
    dest = out / f"{src.name}-dev{dev_queries}-seed{seed}"
    if (dest / "qrels" / "dev.tsv").is_file():
        return dest
    lines = (src / "qrels" / "train.tsv").read_text(encoding="utf-8").splitlines()
    header, rows = (lines[0], lines[1:]) if lines and lines[0].startswith("query-id") else ("", lines)
    qids = sorted({r.split("\t")[0] for r in rows if r.strip()})
    if not 0 < dev_queries < len(qids):
        raise SystemExit(f"--dev-queries must be between 1 and {len(qids) - 1} ({len(qids)} train queries), "
                         f"got {dev_queries}")
    dev = set(random.Random(seed).sample(qids, dev_queries))
    with atomic_dir(dest) as tmp:
        (tmp / "qrels").mkdir()
        for what in ("corpus", "queries"):
            f = beir_file(src, what)
            (tmp / f.name).symlink_to(f)
        (tmp / "qrels" / "test.tsv").symlink_to(src / "qrels" / "test.tsv")
        for split, keep in (("train", lambda q: q not in dev), ("dev", lambda q: q in dev)):
            body = [r for r in rows if r.strip() and keep(r.split("\t")[0])]
            (tmp / "qrels" / f"{split}.tsv").write_text("\n".join(([header] if header else []) + body) + "\n",
                                                       encoding="utf-8")
    return dest


RESULT_FILE = "bench_result.json"


def reuse_gate(out: Path, name: str, done: list[str]) -> bool:
    """Copy the cross-encoder gate verdict (and its dev report) of an earlier run into run
    ``name``'s folder, so the run skips the dev check: every run of the bench gates the same
    cross-encoder against the same base model on the same dev queries. True when copied."""
    from embedray.atomic import write_bytes_atomic
    from embedray.training.distill import GATE_FILE

    dest = out / name
    if (dest / GATE_FILE).is_file():
        return False
    for prev in done:
        if (out / prev / GATE_FILE).is_file():
            for f in (GATE_FILE, "cross_encoder_dev.json"):
                if (out / prev / f).is_file():
                    write_bytes_atomic((out / prev / f).read_bytes(), dest / f)
            return True
    return False


def _telemetry(logs: dict) -> list[dict]:
    return [e for e in logs["events"] if e["kind"] == "refresh"]


def _run_args(a) -> dict:
    """The arguments that shape a run's result (not which runs, where the report goes, --rerun)."""
    return {k: v for k, v in vars(a).items() if k not in ("runs", "json", "plot", "rerun")}


def _same_args(p, a, kept: dict) -> bool:
    """Whether saved ``kept`` arguments are these result-shaping ones (one it lacks counts as its default)."""
    return {k: kept.get(k, p.get_default(k)) for k in _run_args(a)} == _run_args(a)


def _saved(path: Path) -> dict | None:
    """A saved result (``args`` and what was measured with them), None where there is none."""
    return json.loads(path.read_text()) if path.is_file() else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-docs", type=int, default=2000, help="Debian documents (0: all)")
    p.add_argument("--max-queries", type=int, default=2000, help="over train/dev/test, 80/10/10 (0: all)")
    p.add_argument("--eval-queries", type=int, default=0,
                   help="Debian: dev and test queries each, instead of 10%% of --max-queries each")
    p.add_argument("--data", default=None, help="a BEIR folder with train and test judgements instead of the "
                   "Debian subset (--max-docs/--max-queries then unused)")
    p.add_argument("--dev-queries", type=int, default=100,
                   help="with --data lacking a dev split: train queries held out as dev")
    p.add_argument("--max-doc-length", type=int, default=96, help="document tokens while training")
    p.add_argument("--max-seq-length", type=int, default=None,
                   help="the model's token limit for every encode (mining, evaluation); default: the model's (256)")
    p.add_argument("--steps", type=int, default=240)
    p.add_argument("--batch-size", type=int, default=8, help="per worker (2 workers)")
    p.add_argument("--every", type=int, default=40, help="refresh every K optimizer steps")
    p.add_argument("--curve-every", type=int, default=40,
                   help="evaluate dev every K steps (0: start and end only; -1: never inside the loop, each a "
                        "corpus encode: the base and final models are still evaluated)")
    p.add_argument("--ce-steps", type=int, default=150)
    p.add_argument("--ce-loss", default="listnet", help="cross-encoder loss: bce, listnet or lambda")
    p.add_argument("--ce-lr", type=float, default=5e-5)
    p.add_argument("--denoise-margin", type=float, default=0.0,
                   help="drop a negative whose cross-encoder score >= the positive's - margin")
    p.add_argument("--no-denoise-fused", dest="denoise_fused", action="store_false",
                   help="a cross-encoder the gate passes only fused with the bi-encoder does not denoise; the "
                        "positive-aware rule does (cross_encoder.denoise_fused: false)")
    p.add_argument("--rescore-candidates", type=int, default=None,
                   help="mining.rescore_candidates of every run but static+denoised+refill (its own 9): candidates "
                        "a denoising cross-encoder scores per query (3: dropped negatives not replaced; default: "
                        "the project's, 9 for the 3 negatives mined)")
    p.add_argument("--rerank-depth", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", default=DEFAULT_RUNS, help="comma-separated, of: " + ", ".join(RUNS))
    p.add_argument("--out", default="runs/bench-negatives")
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None, help="PNG of dev nDCG@10 against step")
    p.add_argument("--rerun", action="store_true", help="train every run again, even one whose evaluated "
                   f"result is in its folder under --out ({RESULT_FILE}); a run without one always starts afresh")
    a = p.parse_args()

    from embedray.atomic import write_json_atomic
    from embedray.cluster.runtime import ensure_ray
    from embedray.cluster.train import run_training
    from embedray.data.beir import load_beir
    from embedray.eval.metrics import paired_bootstrap
    from embedray.pipeline.refresh import base_cross_encoder
    from embedray.training.cross_encoder import evaluate_reranker
    from embedray.training.data import load_training_data

    runs = a.runs.split(",")
    every = {name: _run(name)[1] or a.every for name in runs}  # a bad name fails now, not after an hour
    out = Path(a.out).resolve()
    data_dir = (heldout_dev(Path(a.data), out, a.dev_queries, a.seed) if a.data
                else debian_subset(out, a.max_docs, a.max_queries, a.seed, a.eval_queries))
    ensure_ray()

    rows: dict[str, dict] = {}
    finals: dict[str, dict] = {}
    base = _evaluate("minilm-l6", data_dir, a.max_seq_length)
    rows["base minilm-l6"] = {"dev": base["dev"], "test": base["test"]}
    print(f"base minilm-l6: dev {base['dev']:.4f} test {base['test']:.4f}", flush=True)

    # The cross-encoder is trained (and handed to every run, for its gate verdict) only when a run
    # denoises with it; without, no run sees one.
    ce = out / "cross-encoder" if any(map(denoising, runs)) else None
    if ce is None:
        print("no run denoises: no cross-encoder", flush=True)
    else:
        trained = _saved(ce / RESULT_FILE)
        if (ce / "config.json").is_file() and (a.rerun or trained is None or not _same_args(p, a, trained["args"])):
            shutil.rmtree(ce)  # trained with other arguments (or --rerun): train it again
        if not (ce / "config.json").is_file():
            job = _job(a, data_dir, out, "cross-encoder-prep", None)
            t0 = time.perf_counter()
            data = load_training_data(job.data)
            base_cross_encoder(job, data, ce, out)
            print(f"cross-encoder trained in {time.perf_counter() - t0:.0f} s", flush=True)
            write_json_atomic({"args": _run_args(a)}, ce / RESULT_FILE)
        rerank = {}
        for split in ("dev", "test"):
            r = evaluate_reranker(str(ce), load_beir(data_dir, split, missing_docs="keep"), base[f"{split}_run"],
                                  k=a.rerank_depth)
            rerank[split] = r["after"]["ndcg@10"]
        rows[f"cross-encoder rerank of base top-{a.rerank_depth}"] = rerank
        print(f"cross-encoder rerank: dev {rerank['dev']:.4f} test {rerank['test']:.4f}", flush=True)

    done: list[str] = []
    for name in runs:
        saved = out / name / RESULT_FILE
        kept = None if a.rerun else _saved(saved)
        if kept is not None:  # finished by an earlier invocation with these arguments
            if not _same_args(p, a, kept["args"]):
                raise SystemExit(f"{saved}: from a run with other arguments ({kept['args']}); use --rerun "
                                 "or another --out")
            finals[name], rows[name] = kept["eval"], kept["row"]
            done.append(name)
            print(f"{name}: dev {rows[name]['dev']:.4f} test {rows[name]['test']:.4f} (reused {saved})", flush=True)
            continue
        if (out / name).exists():  # an unfinished or outdated attempt: start afresh, not from its checkpoints
            shutil.rmtree(out / name)
        job = _job(a, data_dir, out, name, ce)
        if reuse_gate(out, name, done):
            print(f"{name}: the cross-encoder gate's verdict comes from an earlier run", flush=True)
        t0 = time.perf_counter()
        summary = run_training(job)
        total = time.perf_counter() - t0
        ev = _evaluate(summary["final_model"], data_dir, a.max_seq_length)
        finals[name] = ev
        logs = _logs(out / name)
        tel = _telemetry(logs)
        steps_s = _step_seconds(logs, a.batch_size * WORKERS)
        rows[name] = {"dev": ev["dev"], "test": ev["test"], "train_wall_s": summary["wall_s"], "total_wall_s": total,
                      "step_s": steps_s, "final_loss": summary["final_loss"], "refreshes": tel,
                      "curve": _curve(logs), "pool_switches": _pool_switches(logs)}
        write_json_atomic(json.loads(json.dumps({"args": _run_args(a), "eval": ev, "row": rows[name]}, default=float)),
                          saved)
        done.append(name)
        print(f"{name}: dev {ev['dev']:.4f} test {ev['test']:.4f}  optimizer steps {steps_s:.0f} s, loop "
              f"{summary['wall_s']:.0f} s (with mining {total:.0f} s)", flush=True)

    print("\n| run | dev nDCG@10 | test nDCG@10 | optimizer steps (s) | loop wall (s) |\n|---|---|---|---|---|")
    for name, r in rows.items():
        walls = f"{r['step_s']:.0f} | {r['train_wall_s']:.0f}" if "train_wall_s" in r else " | "
        print(f"| {name} | {r['dev']:.4f} | {r['test']:.4f} | {walls} |")
    steps_seen = sorted({s for r in rows.values() for s, _ in r.get("curve", [])})
    if steps_seen:
        curved = [n for n, r in rows.items() if r.get("curve")]
        print("\ndev nDCG@10 by step\n| step | " + " | ".join(curved) + " |\n|---|" + "---|" * len(curved))
        for step in steps_seen:
            cells = [f"{dict(rows[n]['curve']).get(step, float('nan')):.4f}" for n in curved]
            print(f"| {step} | " + " | ".join(cells) + " |")
    bootstrap = {}
    extra = [("static", n) for n in finals if n.startswith("refreshed") and ("static", n) not in COMPARISONS]
    for a_name, b_name in COMPARISONS + extra:
        if a_name in finals and b_name in finals:
            for split in ("dev", "test"):
                bs = paired_bootstrap(finals[a_name][f"{split}_per_query"], finals[b_name][f"{split}_per_query"],
                                      seed=a.seed)
                bootstrap[f"{b_name} - {a_name} ({split})"] = bs
                print(f"{b_name} − {a_name}, {split}: {bs['diff']:+.4f} [{bs['low']:+.4f}, {bs['high']:+.4f}] "
                      f"({bs['queries']} queries, 95% paired bootstrap)")
    summary_out = {"bootstrap": bootstrap}
    for name in (n for n in rows if n.startswith("refreshed")):
        for r in rows[name]["refreshes"]:
            if r.get("failed"):
                print(f"{name}: refresh from step {r.get('snapshot_step')} failed: {r.get('error')}")
                continue
            overlap = "n/a" if r.get("overlap@10") is None else f"{r['overlap@10']:.2f}"
            print(f"{name}: refresh v{r['version']}: snapshot step {r['snapshot_step']}, in use from step "
                  f"{r['finished_step']}; kept {r['negatives_kept']}, removed {r['negatives_removed']} "
                  f"(false-negative rate {r['false_negative_rate']:.3f}), overlap@10 with the previous pool "
                  f"{overlap}, wall {r['wall_s']:.0f} s (encode {r['encode_s'] or 0:.0f} / index "
                  f"{r['index_s'] or 0:.1f} / search {r['search_s'] or 0:.1f} / rescore {r['rescore_s'] or 0:.0f})")
        if "static" not in rows:
            continue
        ratio = rows[name]["step_s"] / rows["static"]["step_s"]
        loop_ratio = rows[name]["train_wall_s"] / rows["static"]["train_wall_s"]
        suffix = (name.removeprefix("refreshed+denoised") if name.startswith("refreshed+denoised")
                  else "_undenoised" + name.removeprefix("refreshed")).replace("-", "_")
        if RUNS[_run(name)[0]]["refresh"]["mode"] == "sync":
            # Training waits for each refresh: the cost is in the loop's wall time, not in its steps.
            ratio = loop_ratio
            print(f"{name}: refresh cost (sync every {every[name]}: training waits; whole loops, dev evaluations "
                  f"included, ÷ static): {loop_ratio:.2f}×")
        else:
            print(f"{name}: refresh overhead (optimizer-step time, async every {every[name]} ÷ static): {ratio:.2f}× "
                  f"(whole loops, dev evaluations included: {loop_ratio:.2f}×)")
        summary_out.update({f"refresh_overhead{suffix}": ratio, f"refresh_overhead_loop{suffix}": loop_ratio})
        print(f"ratio refresh_overhead{suffix} {ratio:.3f}")
        within = inflight_slowdown(_logs(out / name))
        if within:
            slow, share = within
            summary_out.update({f"refresh_inflight_slowdown{suffix}": slow, f"refresh_inflight_share{suffix}": share})
            print(f"{name}: a step with a refresh in flight takes {slow:.2f}× one without ({share:.0%} of the steps "
                  f"had one): overhead within the run {1 + share * (slow - 1):.2f}×")
            print(f"ratio refresh_inflight_slowdown{suffix} {slow:.3f}")
        for split in ("dev", "test"):
            print(f"ratio {split}_refreshed_vs_static{suffix} {rows[name][split] / rows['static'][split]:.4f}")
    if a.plot:
        print(f"plot: {plot_curves(rows, Path(a.plot))}")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "rows": rows, **summary_out}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
