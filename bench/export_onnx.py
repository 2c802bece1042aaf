"""Exports for serving: torch fp32 vs ONNX fp32 / int8 vs OpenVINO fp32 / bf16 (and torch bf16),
quality and speed.

The model is exported once with ``embedray export --format onnx --quantize int8`` and once with
``--format openvino`` into a temporary copy (the source folder is only read), then each variant
is loaded the way ``embedray serve`` and
``embedray eval`` load it (:func:`embedray.models.backends.load_sentence_model`):

- ``torch fp32``: the folder as saved, sentence-transformers on torch (the reference);
- ``torch bf16``: the same under bf16 autocast (:mod:`embedray.models.precision`), when this CPU
  runs bf16 fast;
- ``onnx fp32``: ``onnx/model.onnx`` on onnxruntime;
- ``onnx int8``: ``onnx/model_qint8_avx512_vnni.onnx`` (dynamic int8) on onnxruntime;
- ``openvino fp32`` / ``openvino bf16``: ``openvino/openvino_model.xml`` on the OpenVINO runtime
  with its f32 / bf16 inference precision (bf16 only when this CPU runs bf16 fast).

Quality: nDCG@10 of each on every ``--data`` BEIR folder's ``--split`` with
:func:`embedray.eval.retrieval.evaluate_retrieval` (exact search, as ``embedray eval`` does).
Speed: docs/s encoding the same ``--speed-docs`` corpus texts (the first ``--data`` folder's, a
fixed sample) at batch ``--batch-size``, the variants taking turns for ``--rounds`` rounds after a
warm-up each (median per variant), so a busy neighbour on the machine slows all of them alike.
Threads: ``--threads`` for torch and onnxruntime alike.

Printed: one table per data set, the speed table, then ``ratio`` lines:
``onnx_int8_vs_torch_fp32`` (docs/s), ``onnx_fp32_vs_torch_fp32``, ``onnx_int8_ndcg_vs_fp32``
(nDCG@10 of int8 / torch fp32, the lowest over the data sets) and, with bf16,
``torch_bf16_vs_torch_fp32`` and ``onnx_int8_vs_torch_bf16``; with OpenVINO bf16,
``openvino_bf16_vs_torch_fp32``, ``openvino_bf16_vs_torch_bf16`` and ``openvino_bf16_ndcg_vs_fp32``.

Run:  flock /tmp/embedray-heavy.lock .venv/bin/python bench/export_onnx.py --model minilm-l6 \\
          --data /work/shared/datasets/scifact [--data runs/demo/data] [--json out.json]
      (SciFact's 5,183 abstracts take 2-5 minutes per variant on 2 CPU cores)
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

VARIANTS = ("torch fp32", "torch bf16", "onnx fp32", "onnx int8", "openvino fp32", "openvino bf16")


def load_variant(folder: Path, variant: str, threads: int):
    """The model of one variant, loaded as the server loads it."""
    from embedray.models.backends import INT8_FILE, ONNX_FILE, load_sentence_model

    backend, precision = variant.split()
    if backend == "onnx":
        return load_sentence_model(folder, "onnx", INT8_FILE if precision == "int8" else ONNX_FILE,
                                   threads=threads)
    if backend == "openvino":
        return load_sentence_model(folder, "openvino", threads=threads, precision=precision)
    from embedray.models.precision import use_precision

    model = load_sentence_model(folder, "torch")
    use_precision(model, precision)
    return model


def data_name(path: str) -> str:
    """``scifact`` for ``.../scifact``; a run's ``.../demo-cpu/data`` is ``demo-cpu``."""
    return Path(path).parent.name if Path(path).name == "data" else Path(path).name


def quality(folder: Path, variants: list[str], data_dirs: list[str], split: str, threads: int) -> dict:
    """``{data name: {variant: nDCG@10}}``."""
    from embedray.data.beir import load_beir
    from embedray.eval.retrieval import evaluate_retrieval

    out = {}
    for path in data_dirs:
        data = load_beir(path, split, on_error="raise")
        name = data_name(path)
        out[name] = {}
        for variant in variants:
            res = evaluate_retrieval(load_variant(folder, variant, threads), data, k=100, batch_size=64,
                                     show_progress=False)
            out[name][variant] = round(res.metrics["ndcg@10"], 4)
            print(f"  {name} {variant}: nDCG@10 {out[name][variant]:.4f} ({res.timings.docs_per_s:.1f} docs/s)",
                  flush=True)
    return out


def speed(folder: Path, variants: list[str], texts: list[str], batch_size: int, rounds: int,
          threads: int) -> dict[str, float]:
    """Median docs/s of each variant on ``texts``, the variants taking turns."""
    models = {v: load_variant(folder, v, threads) for v in variants}
    for model in models.values():
        model.encode(texts[:batch_size], batch_size=batch_size)  # warm-up
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(rounds):
        for variant, model in models.items():
            start = time.perf_counter()
            model.encode(texts, batch_size=batch_size, show_progress_bar=False)
            times[variant].append(len(texts) / (time.perf_counter() - start))
    return {v: round(statistics.median(t), 1) for v, t in times.items()}


def corpus_sample(path: str, n: int, seed: int = 0) -> list[str]:
    """A fixed random sample of ``n`` document texts (title + text, as evaluation encodes them)."""
    from embedray.data.beir import iter_corpus

    docs = list(iter_corpus(Path(path) / "corpus.jsonl"))
    docs = random.Random(seed).sample(docs, min(n, len(docs)))
    return [d.text_for_model for d in docs]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="minilm-l6", help="bundled name or sentence-transformers folder")
    p.add_argument("--data", action="append", required=True, help="BEIR folder (repeat for several)")
    p.add_argument("--split", default="test", help="qrels split scored (default: %(default)s)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of: " + ", ".join(VARIANTS))
    p.add_argument("--speed-docs", type=int, default=512, help="texts per speed round")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()

    import torch

    from embedray.models.export import export_model
    from embedray.models.precision import cpu_bf16_is_fast

    torch.set_num_threads(a.threads)
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown or "torch fp32" not in variants:
        p.error(f"variants: {sorted(unknown)} unknown or torch fp32 (the reference) missing; choose from "
                f"{', '.join(VARIANTS)}")
    if not cpu_bf16_is_fast():
        variants = [v for v in variants if v not in ("torch bf16", "openvino bf16")]
    with tempfile.TemporaryDirectory(prefix="embedray-bench-onnx-") as tmp:
        folder = Path(tmp) / "model"
        start = time.perf_counter()
        record = export_model(a.model, folder, quantize="int8")
        if any(v.startswith("openvino") for v in variants):
            record["files"].update(export_model(folder, fmt="openvino")["files"])
        export_s = time.perf_counter() - start
        print(f"exported {a.model} in {export_s:.1f} s: " + ", ".join(
            f"{n} {f['size_mb']} MB (min cosine {f.get('min_cosine', f.get('bf16_min_cosine'))})"
            for n, f in record["files"].items()), flush=True)
        ndcg = quality(folder, variants, a.data, a.split, a.threads)
        docs_s = speed(folder, variants, corpus_sample(a.data[0], a.speed_docs), a.batch_size, a.rounds, a.threads)

    for name, row in ndcg.items():
        print(f"\n{name} ({a.split}) nDCG@10")
        for variant, value in row.items():
            print(f"  {variant:13s} {value:.4f}  ({value / row['torch fp32']:.2%} of torch fp32)")
    print(f"\nencode speed ({a.speed_docs} docs of {data_name(a.data[0])}, batch {a.batch_size}, "
          f"{a.threads} threads, median of {a.rounds})")
    for variant, value in docs_s.items():
        print(f"  {variant:13s} {value:7.1f} docs/s  x{value / docs_s['torch fp32']:.2f}")
    if "onnx int8" in docs_s:
        print(f"ratio onnx_int8_vs_torch_fp32 {docs_s['onnx int8'] / docs_s['torch fp32']:.3f}")
        worst = min(row["onnx int8"] / row["torch fp32"] for row in ndcg.values())
        print(f"ratio onnx_int8_ndcg_vs_fp32 {worst:.4f}")
    if "onnx fp32" in docs_s:
        print(f"ratio onnx_fp32_vs_torch_fp32 {docs_s['onnx fp32'] / docs_s['torch fp32']:.3f}")
    if "torch bf16" in docs_s:
        print(f"ratio torch_bf16_vs_torch_fp32 {docs_s['torch bf16'] / docs_s['torch fp32']:.3f}")
        if "onnx int8" in docs_s:
            print(f"ratio onnx_int8_vs_torch_bf16 {docs_s['onnx int8'] / docs_s['torch bf16']:.3f}")
    if "openvino bf16" in docs_s:
        print(f"ratio openvino_bf16_vs_torch_fp32 {docs_s['openvino bf16'] / docs_s['torch fp32']:.3f}")
        if "torch bf16" in docs_s:
            print(f"ratio openvino_bf16_vs_torch_bf16 {docs_s['openvino bf16'] / docs_s['torch bf16']:.3f}")
        worst = min(row["openvino bf16"] / row["torch fp32"] for row in ndcg.values())
        print(f"ratio openvino_bf16_ndcg_vs_fp32 {worst:.4f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"model": a.model, "split": a.split, "export": record,
                                            "export_s": round(export_s, 1), "ndcg@10": ndcg, "docs_per_s": docs_s,
                                            "threads": a.threads, "batch_size": a.batch_size}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
