"""``embedray eval``: score one or more models on a BEIR split and print a comparison table."""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, fields
from datetime import datetime, timezone
from typing import Any

from embedray.eval.config import EvalConfig

HELP = "evaluate retrieval (nDCG@10, Recall@k, MRR@10) on a BEIR folder"
DESCRIPTION = """\
Evaluate embedding models on a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv):
encode every document (title + " " + text) and the split's queries, search exactly by cosine
similarity, and report nDCG@10, Recall@10, Recall@100 and MRR@10 as BEIR/MTEB compute them.

examples:
  embedray eval --model minilm-l6 --data ../shared/datasets/scifact --split test
  embedray eval --model minilm-l6 --model runs/x/student --data data/debian --output eval.json
"""


def _columns(k: int) -> list[str]:
    """nDCG@10, Recall@10, Recall@100, MRR@10 and docs/s; cutoffs above ``k`` shrink to ``k``."""
    c10, c100 = min(10, k), min(100, k)
    return list(dict.fromkeys([f"ndcg@{c10}", f"recall@{c10}", f"recall@{c100}", f"mrr@{c10}",
                               "docs/s"]))


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register the ``embedray eval`` flags on ``parser`` (a subcommand parser)."""
    d = EvalConfig()
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--model", action="append", required=True, metavar="NAME_OR_PATH",
                        help="bundled model (minilm-l6, mpnet-base, tiny-bert) or a local "
                             "sentence-transformers folder; repeat to compare several")
    parser.add_argument("--data", required=True, metavar="BEIR_DIR",
                        help="BEIR folder with corpus.jsonl, queries.jsonl and qrels/<split>.tsv, or its s3:// / "
                             "gs:// / hdfs:// URI (mirrored once into $EMBEDRAY_CACHE/.data)")
    parser.add_argument("--split", default=d.split, help="qrels split to score (default: %(default)s)")
    parser.add_argument("--k", type=int, default=d.k,
                        help="documents retrieved per query (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size,
                        help="texts per encoder batch (default: %(default)s)")
    parser.add_argument("--max-seq-length", type=int, default=d.max_seq_length, metavar="N",
                        help="tokens per text (default: the model folder's own, e.g. 256 for MiniLM)")
    parser.add_argument("--query-prompt", "--query-prefix", default=d.query_prompt, metavar="STR",
                        help="text prepended to every query, e.g. 'query: ' (default: the model's own query prompt, "
                             "if it has one, else none)")
    parser.add_argument("--doc-prompt", "--doc-prefix", default=d.doc_prompt, metavar="STR",
                        help="text prepended to every document, e.g. 'passage: ' (default: the model's own document "
                             "prompt, if it has one, else none)")
    parser.add_argument("--ignore-identical-ids", choices=("auto", "on", "off"),
                        default=d.ignore_identical_ids,
                        help="drop a query's own id from its ranking; auto = when at least half "
                             "of the query ids are corpus ids, as in ArguAna (default: %(default)s)")
    parser.add_argument("--missing-docs", choices=("keep", "skip", "raise"), default=d.missing_docs,
                        help="judgements naming documents absent from the corpus: keep them as "
                             "relevant-but-unretrievable like BEIR/MTEB, skip them (counted) or "
                             "stop with an error (default: %(default)s)")
    parser.add_argument("--truncate-dim", type=int, default=d.truncate_dim, metavar="N",
                        help="evaluate only the first N embedding dimensions (Matryoshka)")
    parser.add_argument("--device", default=d.device,
                        help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=d.precision,
                        help="compute precision of the encoder: auto = bf16 where the hardware runs it "
                             "fast (CUDA bf16, CPU AMX/AVX512-BF16), else fp32 (default: %(default)s)")
    parser.add_argument("--backend", choices=("torch", "onnx", "openvino"), default=d.backend,
                        help="what runs the transformer: torch, onnx (onnxruntime on the folder's "
                             "'embedray export') or openvino (its '--format openvino' export, in "
                             "--precision); CPU only (default: %(default)s)")
    parser.add_argument("--onnx-file", default=d.onnx_file, metavar="NAME",
                        help="the onnx backend's file under MODEL/onnx/, e.g. "
                             "model_qint8_avx512_vnni.onnx for int8; the openvino backend's int8 file: "
                             "openvino_model_qint8_quantized.xml (default: %(default)s)")
    parser.add_argument("--output", metavar="JSON", help="also write all results to this JSON file")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def run(args: argparse.Namespace | dict[str, Any]) -> int:
    """Run ``embedray eval``; returns the process exit code (0 ok, 2 bad input).

    Args:
        args: the parsed namespace from :func:`add_eval_arguments`, or a dict with the same keys
            (``model`` may be a string or a list).
    """
    from embedray.atomic import write_json_atomic
    from embedray.data.beir import load_beir
    from embedray.data.errors import DataError
    from embedray.data.remote import MIRROR_DIR, local_data
    from embedray.eval.report import format_table
    from embedray.eval.retrieval import evaluate_retrieval
    from embedray.models.backends import load_encoder
    from embedray.models.bundled import UnknownModelError, cache_dir

    a = dict(vars(args)) if isinstance(args, argparse.Namespace) else dict(args)
    try:
        cfg = EvalConfig(**{f.name: a[f.name] for f in fields(EvalConfig) if a.get(f.name) is not None})
        models = [a["model"]] if isinstance(a.get("model"), str) else list(a.get("model") or [])
        if not models:
            raise ValueError("give at least one --model")
        folder = local_data(a["data"], "--data", cache_dir() / MIRROR_DIR, not a.get("no_progress"))
        data = load_beir(folder, cfg.split, on_error="raise", missing_docs=cfg.missing_docs)
        _say(f"{data.path}: {len(data.corpus)} documents, {len(data.qrels)} {cfg.split} queries")
        rows: dict[str, dict[str, Any]] = {}
        results: dict[str, Any] = {}
        for i, name in enumerate(models):
            label = name if name not in rows else f"{name} #{i + 1}"
            _say(f"[{i + 1}/{len(models)}] {name}: loading")
            model = load_encoder(name, cfg.device, cfg.max_seq_length, cfg.precision, cfg.backend,
                                 cfg.onnx_file)
            res = evaluate_retrieval(model, data, k=cfg.k, batch_size=cfg.batch_size,
                                     query_prompt=cfg.query_prompt, doc_prompt=cfg.doc_prompt,
                                     ignore_identical_ids=cfg.ignore_identical_ids,
                                     show_progress=not a.get("no_progress", False),
                                     truncate_dim=cfg.truncate_dim)
            res.settings["max_seq_length"] = model.max_seq_length
            res.settings["precision"] = model.embedray_precision
            res.settings["backend"] = cfg.backend
            rows[label] = {**res.metrics, "docs/s": res.timings.docs_per_s}
            results[label] = {"model": name, **res.to_dict()}
            _say(f"[{i + 1}/{len(models)}] {name}: nDCG@10 {res.metrics.get('ndcg@10', float('nan')):.4f} "
                 f"({model.embedray_precision})")
    except (UnknownModelError, FileNotFoundError, DataError, ValueError) as e:
        print(f"embedray eval: error: {e}", file=sys.stderr)
        return 2
    print(f"\n{data.path.name} ({cfg.split}, {len(data.qrels)} queries, {len(data.corpus)} docs)")
    print(format_table(rows, _columns(cfg.k)))
    if a.get("output"):
        out = write_json_atomic({"data": str(data.path), "split": cfg.split,
                                 "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                 "config": asdict(cfg), "results": results}, a["output"])
        _say(f"wrote {out}")
    return 0


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
