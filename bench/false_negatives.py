"""Denoisers where the false negatives are known: planted duplicates of training positives.

Debian has packages whose descriptions are identical (case and spacing aside: transitional
packages, ``-doc`` / ``-data`` companions) or identical once version numbers are masked
(versioned library packages); the dataset builder drops the first kind because such a query has
several right answers. Here each such pair ``(A, B)`` (:func:`embedray.mining.false_negatives.duplicate_pairs`)
becomes a training query — A's summary, positive A's description — and B's description is put
in the corpus unlabelled: whenever the miner selects B as a negative of A's query, it has
selected a known false negative. Beside them: ``--queries`` ordinary training queries (unique
packages, as the builder keeps them) and distractor descriptions up to ``--docs``.

The pool is mined once by the base bi-encoder (``minilm-l6``, ``precision: auto``) with no
filter: every candidate of the top ``--k`` is kept, so each denoiser sees the same list. Then
each denoiser filters it:

- ``none``: nothing removed (the reference: how many planted false negatives were selected);
- ``positive-aware``: NV-Retriever's TopK-PercPos on the bi-encoder's scores
  (``mining.max_score_ratio`` 0.95: a candidate scoring above 95% of its positive's score is
  dropped), what the pipeline falls back to when the cross-encoder gate fails;
- ``cross-encoder``: a cross-encoder trained here as a run trains its own (minilm-l6 backbone,
  fresh head, on these training pairs and the undenoised pool: ``--ce-steps`` steps), then
  ``denoise_margin`` 0.05 (a negative scoring within 0.05 of the positive's probability is
  dropped), as ``refresh.denoise`` does; or ``--cross-encoder DIR``, one trained elsewhere;
- ``fused α``: the same cross-encoder's logit fused with the bi-encoder's score,
  ``α · z(CE) + (1 − α) · z(bi)`` over each query's positive and candidates, a negative within
  ``--fusion-margin`` (0.1) of its positive's fused score or above it dropped: what a run denoises
  with when the cross-encoder gate passes it fused (a run picks ``α`` on dev; here each of ``--alphas``).

Per denoiser and kind (exact / versioned / all): ``selected`` (planted false negatives in the
undenoised pool), ``removed`` and ``recall`` (= removed / selected), and the other negatives
removed with them (``cost`` = their share of the other negatives).

Run:  .venv/bin/python bench/false_negatives.py [--queries 1000 --docs 6000 --k 10] [--json out.json]
      (about 10 minutes on 2 CPU cores, most of it training and running the cross-encoder)
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build(a, packages: dict) -> tuple[dict, dict, dict, dict]:
    """corpus (id → Document), queries (id → text), positives (id → [doc]), planted (id → {doc: kind})."""
    from embedray.data.beir import Document
    from embedray.data.debian import drop_ambiguous
    from embedray.mining.false_negatives import duplicate_pairs

    pairs = duplicate_pairs(packages, a.seed)
    by_kind: dict[str, list] = {}
    for p in pairs:
        by_kind.setdefault(p.kind, []).append(p)
    chosen = [p for kind in sorted(by_kind) for p in by_kind[kind][:a.planted]]
    members = {n for p in pairs for n in (p.query, p.duplicate)}
    kept, _ = drop_ambiguous(packages)
    rank = lambda n: hashlib.sha1(f"{a.seed}:{n}".encode()).hexdigest()  # noqa: E731
    others = sorted((n for n in kept if n not in members), key=rank)
    ordinary, distractors = others[:a.queries], others[a.queries:]
    corpus = {}
    for p in chosen:
        corpus[p.query] = Document(p.query, packages[p.query][1], "")
        corpus[p.duplicate] = Document(p.duplicate, packages[p.duplicate][1], "")
    for n in ordinary:
        corpus[n] = Document(n, kept[n][1], "")
    for n in distractors[:max(0, a.docs - len(corpus))]:
        corpus[n] = Document(n, kept[n][1], "")
    queries = {f"q:{p.query}": packages[p.query][0] for p in chosen} | {f"q:{n}": kept[n][0] for n in ordinary}
    positives = {q: [q[2:]] for q in queries}
    planted = {f"q:{p.query}": {p.duplicate: p.kind} for p in chosen}
    return corpus, queries, positives, planted


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="minilm-l6", help="the bi-encoder that mines (bundled name or folder)")
    p.add_argument("--planted", type=int, default=150, help="planted pairs of each kind (at most)")
    p.add_argument("--queries", type=int, default=1000, help="ordinary training queries beside the planted ones")
    p.add_argument("--docs", type=int, default=6000, help="corpus size (distractors fill it up)")
    p.add_argument("--k", type=int, default=10, help="candidates per query every denoiser sees")
    p.add_argument("--max-score-ratio", type=float, default=0.95, help="positive-aware rule")
    p.add_argument("--denoise-margin", type=float, default=0.05, help="cross-encoder rule")
    p.add_argument("--cross-encoder", help="a trained cross-encoder folder instead of training one here")
    p.add_argument("--ce-steps", type=int, default=300, help="steps of the cross-encoder trained here")
    p.add_argument("--fusion-margin", type=float, default=0.1,
                   help="fused rule: drop a negative within this many standard deviations of the positive")
    p.add_argument("--alphas", default="0.25,0.5,0.75",
                   help="fused denoisers: comma-separated weights of the cross-encoder ('' for none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()

    from embedray.data.debian import DEFAULT_LISTS_DIR, _ensure_translation_files, read_descriptions
    from embedray.mining.config import CrossEncoderConfig, MiningConfig
    from embedray.mining.false_negatives import planted_report
    from embedray.mining.pipeline import mine
    from embedray.mining.pool import NegativePool
    from embedray.models.backends import load_encoder
    from embedray.training.cross_encoder import train_cross_encoder

    t0 = time.perf_counter()
    packages, _ = read_descriptions(_ensure_translation_files(Path(DEFAULT_LISTS_DIR)))
    corpus, queries, positives, planted = build(a, packages)
    kinds = sorted({k for v in planted.values() for k in v.values()})
    print(f"{len(corpus)} documents, {len(queries)} training queries, {len(planted)} of them with a planted "
          f"duplicate ({', '.join(f'{sum(k in v.values() for v in planted.values())} {k}' for k in kinds)})",
          flush=True)
    model = load_encoder(a.model, precision="auto")
    cfg = MiningConfig(k=a.k, num_negatives=a.k, range_min=0, seed=a.seed)
    pools: dict[str, NegativePool] = {}
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="embedray-bench-fn-") as tmp:
        cache = Path(tmp) / "cache"
        t = time.perf_counter()
        pools["none"] = mine(corpus, queries, positives, model, cfg, cache_dir=cache).pool
        timings["mine_s"] = time.perf_counter() - t
        t = time.perf_counter()
        ratio_cfg = dataclasses.replace(cfg, max_score_ratio=a.max_score_ratio)
        pools["positive-aware"] = mine(corpus, queries, positives, model, ratio_cfg, cache_dir=cache).pool
        timings["positive_aware_s"] = time.perf_counter() - t
        ce_dir = Path(a.cross_encoder) if a.cross_encoder else Path(tmp) / "cross-encoder"
        ce_cfg = CrossEncoderConfig(base_model="minilm-l6", max_steps=a.ce_steps, batch_size=16, negatives_per_query=4,
                                    max_length=128, denoise_margin=a.denoise_margin,
                                    fusion_margin=a.fusion_margin, seed=a.seed)
        if not a.cross_encoder:
            t = time.perf_counter()
            train_pairs = [(q, queries[q], positives[q][0]) for q in sorted(queries)]
            train_cross_encoder(train_pairs, corpus, pools["none"], ce_cfg, ce_dir)
            timings["ce_train_s"] = time.perf_counter() - t
        t = time.perf_counter()
        pools["cross-encoder"] = mine(corpus, queries, positives, model, cfg, cross_encoder=str(ce_dir),
                                      ce_cfg=ce_cfg, cache_dir=cache).pool
        timings["ce_denoise_s"] = time.perf_counter() - t
        for alpha in [float(x) for x in a.alphas.split(",") if x.strip()]:
            t = time.perf_counter()  # the cross-encoder's scores come from the score cache
            pools[f"fused α={alpha:g}"] = mine(corpus, queries, positives, model, cfg, cross_encoder=str(ce_dir),
                                               ce_cfg=ce_cfg, cache_dir=cache, fusion_alpha=alpha).pool
            timings[f"fused_{alpha:g}_s"] = time.perf_counter() - t

    results: dict[str, dict] = {}
    every = {q: set(v) for q, v in planted.items()}
    for name, pool in pools.items():
        results[name] = {"all": planted_report(pools["none"], pool, every)}
        for kind in kinds:
            only = {q: {d for d, k in v.items() if k == kind} for q, v in planted.items()}
            results[name][kind] = planted_report(pools["none"], pool, only, known=every)
    print(f"\nplanted false negatives among {a.k} candidates per query, {a.model} mining "
          f"({time.perf_counter() - t0:.0f} s)")
    print(f"{'denoiser':16s} {'kind':10s} {'selected':>8s} {'removed':>8s} {'recall':>7s} {'others removed':>15s} {'cost':>6s}")
    for name, by_kind in results.items():
        for kind, r in by_kind.items():
            recall = f"{r['recall']:.1%}" if r["recall"] is not None else "-"
            cost = f"{r['cost']:.1%}" if r["cost"] is not None else "-"
            print(f"{name:16s} {kind:10s} {r['selected']:8d} {r['removed']:8d} {recall:>7s} "
                  f"{r['others_removed']:>8d}/{r['others_selected']:<6d} {cost:>6s}")
    ce_scores = [s for negs in pools["cross-encoder"].negatives.values() for _, s in negs]
    pos_scores = [s for ps in pools["cross-encoder"].positive_scores.values() for s in ps.values()]
    if pos_scores:
        print(f"cross-encoder probabilities: positives median {statistics.median(pos_scores):.3f}, "
              f"kept negatives {len(ce_scores)} (median {statistics.median(ce_scores) if ce_scores else float('nan'):.3f})")
    for name in results:
        if name == "none":
            continue
        r = results[name]["all"]
        key = name.replace("-", "_").replace(" α=", "_")
        print(f"ratio {key}_recall {r['recall'] if r['recall'] is not None else float('nan'):.3f}")
        print(f"ratio {key}_cost {r['cost'] if r['cost'] is not None else float('nan'):.3f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "documents": len(corpus), "queries": len(queries),
                                            "results": results, "timings": timings}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
