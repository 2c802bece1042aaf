"""Offline hard-negative mining: embedray vs sentence-transformers' ``mine_hard_negatives``.

Both mine with the same bi-encoder (minilm-l6), the same corpus, the same k, the same FAISS exact
inner-product search and the same cross-encoder rescoring the candidates, in one process, one
after the other. sentence-transformers runs them as installed (fp32); embedray loads the same
folders with its own loaders at ``--precision`` (default ``auto``: bf16 where the CPU has bf16
units, as ``embedray mine`` does):

1. ``sentence_transformers.util.mine_hard_negatives`` (use_faiss, relative_margin, cross_encoder);
2. ``embedray.mining.pipeline.mine`` with an empty cache (cold);
3. ``embedray.mining.pipeline.mine`` again with the same weights (warm: embeddings and
   cross-encoder scores come from the cache, as in a refresh where nothing changed);
4. (``--warm-emb-only``) warm embeddings but an empty score cache: what a refresh costs after
   the corpus embeddings were kept but the candidates changed.

The work differs in one documented way: sentence-transformers sends every one of the k+1
candidates of every query to the cross-encoder and applies its margin to the cross-encoder
scores; embedray selects with the bi-encoder first (rank window + margin) and sends only
``--rescore-candidates`` per query (plus positives) to the cross-encoder, which then drops
likely false negatives (RocketQA-style denoising). The table prints how many pairs each
scored, so the ratio can be read with that in mind.

The cross-encoder is minilm-l6 with a scoring head trained here for ``--ce-train-steps`` steps on
the mined split's (query, positive) pairs and random negatives (cached under
``~/.cache/embedray/bench``; not part of the timings), unless ``--cross-encoder DIR`` names one.
Scoring time does not depend on the head's weights; a trained head only makes the negative
counts meaningful (an untrained one scores everything ~0.5, so every margin drops everything).

Data: ``--data`` (a BEIR folder, ``--split``, never test); by default a Debian subset is built
with ``embedray.data.debian.build_debian`` (``--max-docs``/``--max-queries``), or SciFact's
train split with ``--scifact``. Default sizes finish in about 3-5 minutes on 2 CPU cores.

Printed: the table, then ``ratio vs_st_mine_cold`` (sentence-transformers' wall time over
embedray's cold run).

Run:  .venv/bin/python bench/mine.py [--max-docs 1000 --max-queries 100] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# A high learning rate: the bench's cross-encoder gets only ~40 steps, and at 2e-5..5e-5 a fresh
# head barely leaves 0.5 (every margin then drops every negative).
CE_LR = 2e-4


def _load_data(a):
    from embedray.data.beir import load_beir
    from embedray.models.bundled import cache_dir

    if a.data:
        path, split = Path(a.data), a.split
    elif a.scifact:
        path, split = Path("/work/shared/datasets/scifact"), "train"
    else:
        from embedray.data.debian import build_debian

        # max_queries is shared 80/10/10 over train/dev/test; mining uses the train split.
        path = cache_dir() / "bench" / f"debian-{a.max_docs}-{a.max_queries}"
        if not (path / "corpus.jsonl").is_file():
            build_debian(path, max_docs=a.max_docs, max_queries=int(a.max_queries / 0.8) + 1)
        split = "train"
    if split == "test":
        raise SystemExit("bench/mine.py: refusing to mine the test split")
    data = load_beir(path, split)
    if a.scifact or a.data:  # cap sizes the same way for any BEIR folder: queries first
        import random

        rng = random.Random(0)
        qids = sorted(data.qrels)
        rng.shuffle(qids)
        data.qrels = {q: data.qrels[q] for q in qids[:a.max_queries]}
        keep = {d for q in data.qrels for d in data.qrels[q]}
        others = sorted(set(data.corpus) - keep)
        rng.shuffle(others)
        keep |= set(others[:max(0, a.max_docs - len(keep))])
        data.corpus = {d: data.corpus[d] for d in sorted(keep)}
    data.qrels = {q: r for q, r in list(data.qrels.items())[:a.max_queries]}
    return path, data


class Clock:
    """Wall and process-CPU seconds of a block. On a shared machine the CPU seconds (all threads
    of this process) are the steadier figure; the wall time is what a user waits."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def _bench_cross_encoder(path: Path, data, a) -> Path:
    """Train (once, cached) a minilm-l6 cross-encoder on the split's pairs + random negatives."""
    import hashlib
    import random

    from embedray.data.beir import pairs_from_data
    from embedray.mining.config import CrossEncoderConfig
    from embedray.models.bundled import cache_dir
    from embedray.training.cross_encoder import train_cross_encoder

    key = hashlib.sha1(f"{path}|{data.split}|{sorted(data.qrels)}|{len(data.corpus)}|"
                       f"{a.ce_train_steps}|{a.ce_max_length}|{CE_LR}".encode()).hexdigest()[:12]
    out = cache_dir() / "bench" / f"cross-encoder-{key}"
    if (out / "embedray.json").is_file():
        return out
    rng = random.Random(0)
    ids = sorted(data.corpus)
    negatives = {q: [d for d in rng.sample(ids, 4) if d not in docs][:3] for q, docs in data.qrels.items()}
    cfg = CrossEncoderConfig(base_model="minilm-l6", max_steps=a.ce_train_steps, batch_size=16,
                             learning_rate=CE_LR, negatives_per_query=3, max_length=a.ce_max_length)
    t = time.perf_counter()
    train_cross_encoder(pairs_from_data(data), data.corpus, negatives, cfg, out)
    print(f"trained the bench cross-encoder in {time.perf_counter() - t:.0f} s (not timed below)",
          flush=True)
    return out


def run_st(data, model, ce, a) -> tuple[Clock, dict]:
    """sentence-transformers' mine_hard_negatives over the same pairs and corpus."""
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    anchors, positives = [], []
    for q, docs in data.qrels.items():
        for d, rel in docs.items():
            if rel > 0 and d in data.corpus:
                anchors.append(data.queries[q])
                positives.append(data.corpus[d].text_for_model)
    corpus = [doc.text_for_model for doc in data.corpus.values()]
    with Clock() as clock:
        out = mine_hard_negatives(Dataset.from_dict({"query": anchors, "positive": positives}), model,
                                  corpus=corpus, cross_encoder=ce, range_max=a.k,
                                  relative_margin=a.relative_margin, num_negatives=a.num_negatives,
                                  sampling_strategy="top", batch_size=a.batch_size, use_faiss=True,
                                  output_format="labeled-list", output_scores=True, verbose=False)
    max_pos = max(sum(1 for r in docs.values() if r > 0) for docs in data.qrels.values())
    n_queries = len(set(anchors))
    info = {"ce_pairs": n_queries * (a.k + max_pos) + len(anchors),
            "negatives": sum(len(row) - 1 for row in out["positive"]),
            "negatives_by_query": {row["query"]: row["positive"][1:] for row in out}}
    return clock, info


def run_embedray(data, model, ce, a, cache: Path | None, weights_fp: str) -> tuple[Clock, object]:
    from embedray.mining.config import CrossEncoderConfig, MiningConfig
    from embedray.mining.pipeline import mine

    cfg = MiningConfig(k=a.k, num_negatives=a.num_negatives, relative_margin=a.relative_margin,
                       rescore_candidates=a.rescore_candidates, batch_size=a.batch_size)
    ce_cfg = CrossEncoderConfig(score_batch_size=a.batch_size, denoise_margin=a.denoise_margin)
    with Clock() as clock:
        res = mine(data.corpus, data.queries, data.qrels, model, cfg, cross_encoder=ce, ce_cfg=ce_cfg,
                   cache_dir=cache, weights_fp=weights_fp)
    return clock, res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="BEIR folder (default: a Debian subset built here)")
    p.add_argument("--split", default="train")
    p.add_argument("--scifact", action="store_true", help="use SciFact's train split")
    p.add_argument("--max-docs", type=int, default=1000, help="corpus size (default: %(default)s)")
    p.add_argument("--max-queries", type=int, default=100, help="queries mined (default: %(default)s)")
    p.add_argument("--k", type=int, default=20, help="candidates per query (range_max)")
    p.add_argument("--num-negatives", type=int, default=5)
    p.add_argument("--relative-margin", type=float, default=0.05)
    p.add_argument("--rescore-candidates", type=int, default=8,
                   help="embedray: candidates per query sent to the cross-encoder")
    p.add_argument("--denoise-margin", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--cross-encoder", help="a trained cross-encoder folder (default: fresh head)")
    p.add_argument("--ce-max-length", type=int, default=128)
    p.add_argument("--ce-train-steps", type=int, default=40,
                   help="steps of the bench's own cross-encoder (default: %(default)s)")
    p.add_argument("--warm-emb-only", action="store_true",
                   help="also time a run with warm embeddings but no score cache")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="embedray's compute precision (default: %(default)s)")
    p.add_argument("--json", help="write the figures to this JSON file")
    a = p.parse_args(argv)

    import torch
    from sentence_transformers import SentenceTransformer

    from embedray.mining.cache import folder_fingerprint, with_precision
    from embedray.models.backends import load_encoder
    from embedray.models.bundled import resolve_model
    from embedray.models.cross_encoder import load_cross_encoder

    torch.set_num_threads(a.threads)
    path, data = _load_data(a)
    model_dir = resolve_model("minilm-l6")
    model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    ce_dir = a.cross_encoder or _bench_cross_encoder(path, data, a)
    ce = load_cross_encoder(ce_dir, max_length=a.ce_max_length, device="cpu", precision="fp32")
    our_model = load_encoder(model_dir, device="cpu", precision=a.precision)
    our_ce = load_cross_encoder(ce_dir, max_length=a.ce_max_length, device="cpu", precision=a.precision)
    weights_fp = with_precision(folder_fingerprint(model_dir), a.precision)
    print(f"data: {path} ({data.split}): {len(data.corpus)} docs, {len(data.qrels)} queries; "
          f"k={a.k}, num_negatives={a.num_negatives}, relative_margin={a.relative_margin}; "
          f"torch threads={a.threads}; load average {os.getloadavg()[0]:.1f}", flush=True)

    # Warm up both models (first forward passes, lazy inits) so that neither side pays for it.
    for m, c in ((model, ce), (our_model, our_ce)):
        m.encode(["warm up"] * 8, batch_size=8)
        c.predict([("warm up", "warm up")] * 8, batch_size=8)
    rows = {}
    st_clock, st = run_st(data, model, ce, a)
    rows["sentence-transformers"] = {"wall_s": st_clock.wall, "cpu_s": st_clock.cpu,
                                     "ce_pairs": st["ce_pairs"], "negatives": st["negatives"],
                                     "docs_encoded": len(data.corpus)}
    print(f"sentence-transformers mine_hard_negatives: {st_clock.wall:.1f} s wall, "
          f"{st_clock.cpu:.1f} s CPU", flush=True)
    cache = Path(tempfile.mkdtemp(prefix="embedray-bench-cache-"))
    try:
        runs = [("embedray (cold cache)", *run_embedray(data, our_model, our_ce, a, cache, weights_fp))]
        runs.append(("embedray (warm cache)", *run_embedray(data, our_model, our_ce, a, cache, weights_fp)))
        if a.warm_emb_only:
            shutil.rmtree(cache / "ce", ignore_errors=True)
            runs.append(("embedray (warm embeddings only)",
                         *run_embedray(data, our_model, our_ce, a, cache, weights_fp)))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    for name, clock, res in runs:
        print(f"{name}: {clock.wall:.1f} s wall, {clock.cpu:.1f} s CPU", flush=True)
        rows[name] = {"wall_s": clock.wall, "cpu_s": clock.cpu, "ce_pairs": res.counts["pairs_scored"],
                      "negatives": res.counts["negatives_kept"],
                      "removed_by_ce": res.counts["negatives_removed"],
                      "docs_encoded": res.counts["docs_encoded"],
                      "phases_s": {k: round(v, 2) for k, v in res.timings.items()}}
    cold = runs[0][2]
    # how many of embedray's negatives sentence-transformers also picked (texts), cold run
    texts = {d: doc.text_for_model for d, doc in data.corpus.items()}
    both = sum(len({texts[d] for d, _ in negs} & set(st["negatives_by_query"].get(data.queries[q], [])))
               for q, negs in cold.pool.negatives.items())
    overlap = both / max(1, cold.pool.num_negatives)

    st_row = rows["sentence-transformers"]
    print(f"\n{'run':33} {'wall s':>7} {'ST/this':>7} {'CPU s':>7} {'ST/this':>7} {'CE pairs':>8} "
          f"{'negs':>5} {'CE drop':>7} {'docs enc':>8}")
    for name, r in rows.items():
        print(f"{name:33} {r['wall_s']:7.1f} {st_row['wall_s'] / r['wall_s']:7.2f} {r['cpu_s']:7.1f} "
              f"{st_row['cpu_s'] / max(r['cpu_s'], 1e-3):7.2f} {r['ce_pairs']:8d} {r['negatives']:5d} "
              f"{r.get('removed_by_ce', '-'):>7} {r['docs_encoded']:8d}")
    print(f"embedray cold phases (s): {rows['embedray (cold cache)']['phases_s']}")
    print(f"overlap of embedray's negatives with sentence-transformers': {overlap:.1%} "
          "(different selection: bi-encoder margin + CE denoise vs CE margin)")
    speedup = {name: {"wall": st_row["wall_s"] / r["wall_s"], "cpu": st_row["cpu_s"] / max(r["cpu_s"], 1e-3)}
               for name, r in rows.items() if name != "sentence-transformers"}
    print(f"embedray precision: {our_model.embedray_precision}")
    print(f"ratio vs_st_mine_cold {speedup['embedray (cold cache)']['wall']:.3f}")
    if a.json:
        out = {"data": str(path), "split": data.split, "docs": len(data.corpus),
               "queries": len(data.qrels), "args": vars(a), "runs": rows, "overlap": overlap,
               "speedup_vs_st": speedup, "load_avg": os.getloadavg()}
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
