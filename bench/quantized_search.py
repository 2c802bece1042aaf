"""Quantized search: flat vs int8 vs binary (+ fp32 rescoring) FAISS indexes on a BEIR set.

The corpus and the split's queries are encoded once with a bundled model (``minilm-l6``) and the
embeddings cached as ``.npy`` under ``--cache-dir``, so a re-run only builds and searches. Then
each index type of :class:`embedray.mining.index.VectorIndex` is built over the same vectors and
searched with the same queries:

- ``flat``: exact fp32 inner product (the reference);
- ``int8``: FAISS ``SQ8`` codes, scored from the codes (what embedray's ``int8`` does);
- ``int8+rescore``: the same codes, top ``k * factor`` rescored with the fp32 vectors (done here,
  not in the library: it shows what rescoring int8 would buy);
- ``binary``: sign-bit codes (Hamming), top ``k * rescore_factor`` rescored with fp32 (the
  library default factor), plus one row per ``--rescore-factors`` value, and ``binary (mmap)``:
  the same index saved and loaded, its fp32 vectors memory-mapped from ``vectors.npy``.

For each it prints the index bytes (the searched codes), the total bytes (codes + the fp32 vectors
a binary index keeps for rescoring), nDCG@10 and Recall@100 with ``pytrec_eval``
(:func:`embedray.eval.metrics.compute_metrics`), search milliseconds per query (all queries in one
batch, best of ``--repeats``) and overlap@100 with flat, then ``ratio`` lines:
``int8_memory`` / ``binary_memory`` (flat bytes / index bytes), ``binary_total_memory``, and
``int8_ndcg_vs_flat`` / ``binary_ndcg_vs_flat`` (nDCG@10 of the type / flat).

Use the test split to report, the train split to choose settings (``--split train``).

Run:  flock /tmp/embedray-heavy.lock .venv/bin/python bench/quantized_search.py \\
          [--data /work/shared/datasets/scifact --split test] [--json runs/bench-quantized.json]
      (first run encodes 5,183 SciFact abstracts: about 2-4 minutes on 2 CPU cores; then seconds)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402


def _cached_embeddings(path: Path, texts: list[str], kind: str, a, model_box: list) -> np.ndarray:
    """Embeddings of ``texts`` from ``path`` (.npy) if it matches them, else encode and save them."""
    from embedray.eval.retrieval import encode_texts
    from embedray.models.backends import load_encoder

    key = hashlib.sha1("\n".join(texts).encode()).hexdigest()
    stamp = path.with_suffix(".sha1")
    if path.is_file() and stamp.is_file() and stamp.read_text().strip() == key:
        return np.load(path)
    if not model_box:
        model_box.append(load_encoder(a.model, precision=a.precision))
    t = time.perf_counter()
    emb = encode_texts(model_box[0], texts, kind, a.batch_size, show_progress=False)
    print(f"encoded {len(texts)} {kind} texts in {time.perf_counter() - t:.0f} s", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, emb)
    stamp.write_text(key + "\n")
    return emb


def _encode(data, a) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """Doc ids, doc embeddings, query ids and query embeddings (cached)."""
    name = f"{Path(a.data).name}-{a.model}-{a.precision}"
    doc_ids = list(data.corpus)
    queries = data.split_queries()
    query_ids = list(queries)
    box: list = []
    cache = Path(a.cache_dir)
    doc_emb = _cached_embeddings(cache / f"{name}-corpus.npy",
                                 [data.corpus[d].text_for_model for d in doc_ids], "doc", a, box)
    query_emb = _cached_embeddings(cache / f"{name}-queries-{data.split}.npy",
                                   [queries[q] for q in query_ids], "query", a, box)
    return doc_ids, doc_emb, query_ids, query_emb


def _timed_search(search, repeats: int):
    """``search()``'s result and its best wall time over ``repeats`` runs."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = search()
        best = min(best, time.perf_counter() - t)
    return out, best


def _run(query_ids, scores, hits, drop_self: bool, k: int) -> dict[str, dict[str, float]]:
    """``query id -> {doc id: score}`` of the top ``k`` (a query's own id dropped if asked)."""
    run = {}
    for qid, row_s, row_ids in zip(query_ids, scores, hits):
        ranked = [(d, float(s)) for d, s in zip(row_ids, row_s) if not (drop_self and d == qid)]
        run[qid] = dict(ranked[:k])
    return run


def _int8_rescored(index, doc_emb: np.ndarray, q: np.ndarray, k: int, factor: int):
    """Search the int8 codes for ``k * factor`` candidates, rescore them with fp32, keep ``k``."""
    pool = min(len(index), k * factor)
    _, pos = index._index.search(q, pool)  # (m, pool) candidates by int8 score
    exact = np.einsum("mpd,md->mp", doc_emb[np.maximum(pos, 0)], q)  # (m, pool)
    exact[pos < 0] = -np.inf
    order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(pos, order, 1)
    return np.take_along_axis(exact, order, 1), [[index.ids[p] for p in row if p >= 0] for row in top]


def _measure(name, index, search, data, query_ids, drop_self, flat_run, a, extra_bytes: int = 0) -> dict:
    from embedray.eval.metrics import compute_metrics

    (scores, hits), secs = _timed_search(search, a.repeats)
    run = _run(query_ids, scores, hits, drop_self, a.k)
    m = compute_metrics(data.qrels, run, (10, a.k))
    ref = flat_run or run
    overlap = float(np.mean([len(set(run[q]) & set(ref[q])) / max(1, len(ref[q])) for q in query_ids]))
    return {"type": name, "index_bytes": index.memory_bytes,
            "total_bytes": index.total_bytes + extra_bytes,
            "ndcg@10": m["ndcg@10"], f"recall@{a.k}": m[f"recall@{a.k}"],
            "search_ms_per_query": 1000 * secs / len(query_ids), f"overlap@{a.k}": overlap,
            "run": run}


def bench(a) -> list[dict]:
    """Build and search every index type; the rows of the table (flat first)."""
    from embedray.data.beir import load_beir
    from embedray.eval.retrieval import resolve_ignore_identical
    from embedray.mining.index import VectorIndex

    data = load_beir(a.data, a.split, missing_docs="keep")
    doc_ids, doc_emb, query_ids, q = _encode(data, a)
    drop_self = resolve_ignore_identical("auto", query_ids, data.corpus)
    depth = a.k + 1 if drop_self else a.k
    rows: list[dict] = []

    def add(name: str, index, search=None, extra_bytes: int = 0) -> None:
        search = search or (lambda: index.search(q, depth))
        rows.append(_measure(name, index, search, data, query_ids, drop_self,
                             rows[0]["run"] if rows else None, a, extra_bytes))

    build = {"flat": {}, "int8": {"index_type": "int8"}, "binary": {"index_type": "binary"}}
    built = {n: VectorIndex.build(doc_emb, doc_ids, use_gpu=False, **kw) for n, kw in build.items()}
    add("flat", built["flat"])
    add("int8", built["int8"])
    add("int8+rescore", built["int8"],
        lambda: _int8_rescored(built["int8"], doc_emb, q, depth, a.int8_rescore_factor), doc_emb.nbytes)
    add("binary", built["binary"])
    with tempfile.TemporaryDirectory(dir=a.cache_dir) as tmp:  # loaded: fp32 rows memory-mapped
        add("binary (mmap)", VectorIndex.load(built["binary"].save(Path(tmp) / "binary"), use_gpu=False))
    for f in a.rescore_factors:
        index = VectorIndex.build(doc_emb, doc_ids, use_gpu=False, index_type="binary", rescore_factor=f)
        add(f"binary×{f}", index)
    return rows


def _print(rows: list[dict], a) -> None:
    cols = ("index_bytes", "total_bytes", "ndcg@10", f"recall@{a.k}", "search_ms_per_query", f"overlap@{a.k}")
    print(f"{'type':<14}" + "".join(f"{c:>21}" for c in cols))
    for r in rows:
        cells = [f"{r[c]:>21,}" if isinstance(r[c], int) else f"{r[c]:>21.4f}" for c in cols]
        print(f"{r['type']:<14}" + "".join(cells))
    by = {r["type"]: r for r in rows}
    flat = by["flat"]
    print(f"ratio int8_memory {flat['index_bytes'] / by['int8']['index_bytes']:.2f}")
    print(f"ratio binary_memory {flat['index_bytes'] / by['binary']['index_bytes']:.2f}")
    print(f"ratio binary_total_memory {flat['total_bytes'] / by['binary']['total_bytes']:.3f}")
    print(f"ratio int8_ndcg_vs_flat {by['int8']['ndcg@10'] / flat['ndcg@10']:.4f}")
    print(f"ratio binary_ndcg_vs_flat {by['binary']['ndcg@10'] / flat['ndcg@10']:.4f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="/work/shared/datasets/scifact", help="a BEIR folder")
    p.add_argument("--split", default="test", help="qrels split whose queries are searched")
    p.add_argument("--model", default="minilm-l6", help="bundled model name or folder")
    p.add_argument("--precision", default="auto", help="encoder precision: auto, fp32 or bf16")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--k", type=int, default=100, help="depth searched and cutoff of recall/overlap")
    p.add_argument("--rescore-factors", default="1,4,20",
                   help="extra binary rows with these rescore factors (comma-separated; '' for none)")
    p.add_argument("--int8-rescore-factor", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3, help="searches timed per type (best kept)")
    p.add_argument("--cache-dir", default="runs/bench-quantized", help="where embeddings are cached")
    p.add_argument("--json", help="also write the rows (without runs) to this file")
    a = p.parse_args(argv)
    a.rescore_factors = [int(f) for f in a.rescore_factors.split(",") if f.strip()]
    rows = bench(a)
    _print(rows, a)
    if a.json:
        out = {"settings": {k: v for k, v in vars(a).items() if k != "json"},
               "rows": [{k: v for k, v in r.items() if k != "run"} for r in rows]}
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
