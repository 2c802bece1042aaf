"""``embedray mine``: offline hard-negative mining + cross-encoder scores → FlagEmbedding JSONL.

FlagEmbedding needs two scripts for this (``hn_mine`` then ``add_reranker_score``) and a
pretrained reranker; this is one command that can also train its own cross-encoder first.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from embedray.mining.config import REFILL, CrossEncoderConfig, MiningConfig
from embedray.mining.index import INDEX_TYPES

HELP = "mine hard negatives offline and rescore them (FlagEmbedding JSONL)"
DESCRIPTION = """\
Mine hard negatives for the queries of one split of a BEIR folder: encode the corpus (through
the embedding cache), search a FAISS index, select negatives (rank window, margins, NV-Retriever
ratio), then optionally rescore them with a cross-encoder, drop likely false negatives and write
FlagEmbedding JSONL {"query", "pos", "neg", "pos_scores", "neg_scores"}.

examples:
  embedray mine --model minilm-l6 --data data/debian --split train --output hn.jsonl
  embedray mine --model minilm-l6 --data data/debian --train-cross-encoder --relative-margin 0.05 \\
      --cache-dir ~/.cache/embedray/mining --output hn.jsonl
"""


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register the ``embedray mine`` flags on ``parser`` (a subcommand parser)."""
    d, c = MiningConfig(), CrossEncoderConfig()
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--model", required=True, metavar="NAME_OR_DIR",
                        help="bi-encoder: bundled name (minilm-l6, mpnet-base, tiny-bert) or folder")
    parser.add_argument("--data", required=True, metavar="BEIR_DIR",
                        help="BEIR folder, or its s3:// / gs:// / hdfs:// URI (mirrored into $EMBEDRAY_CACHE/.data)")
    parser.add_argument("--split", default="train", help="qrels split to mine for (default: train)")
    parser.add_argument("--output", required=True, metavar="JSONL", help="FlagEmbedding JSONL to write")
    parser.add_argument("--pool-output", metavar="JSON", help="also write the id-based negative pool")
    ce = parser.add_mutually_exclusive_group()
    ce.add_argument("--cross-encoder", metavar="DIR", help="cross-encoder folder to rescore/denoise with")
    ce.add_argument("--train-cross-encoder", action="store_true",
                    help="train embedray's cross-encoder on this split's pairs + mined negatives first")
    g = parser.add_argument_group("selection")
    g.add_argument("--k", type=int, default=d.k, help="candidates per query (default: %(default)s)")
    g.add_argument("--num-negatives", type=int, default=d.num_negatives,
                   help="negatives kept per query (default: %(default)s)")
    g.add_argument("--range-min", type=int, default=d.range_min, help="skip the first N candidates")
    g.add_argument("--range-max", type=int, default=None, help="consider candidates up to this rank")
    g.add_argument("--margin", type=float, default=None, dest="absolute_margin",
                   help="keep score <= positive - margin")
    g.add_argument("--relative-margin", type=float, default=None,
                   help="keep score <= positive - |positive| * m (NV-Retriever: 0.05)")
    g.add_argument("--max-score-ratio", type=float, default=None,
                   help="NV-Retriever TopK-PercPos: keep score <= positive * ratio (e.g. 0.95)")
    g.add_argument("--max-score", type=float, default=None, help="drop candidates scoring above")
    g.add_argument("--min-score", type=float, default=None, help="drop candidates scoring below")
    g.add_argument("--sampling", choices=("top", "random"), default=d.sampling_strategy,
                   dest="sampling_strategy", help="take the top survivors or sample them")
    g.add_argument("--rescore-candidates", type=int, default=None,
                   help="candidates per query the cross-encoder scores; the extra ones replace the negatives "
                        f"it drops (default: {REFILL} x --num-negatives within the rank window; --num-negatives: "
                        "none replaced)")
    g.add_argument("--seed", type=int, default=d.seed, help="sampling and cross-encoder seed")
    g.add_argument("--index-factory", default=d.index_factory, help="FAISS index_factory string")
    g.add_argument("--index-type", choices=INDEX_TYPES, default=d.index_type,
                   help="flat (the factory as given), int8 (4x smaller) or binary (32x smaller, "
                        "fp32-rescored) (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="encoder batch size")
    g.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=d.precision,
                   help="compute precision of the bi-encoder and the cross-encoder: auto = bf16 where the "
                        "hardware runs it fast (CUDA bf16, CPU AMX/AVX512-BF16), else fp32 (default: %(default)s)")
    g.add_argument("--query-prompt", default="", help="text prepended to queries")
    g.add_argument("--doc-prompt", "--corpus-prompt", default="", help="text prepended to documents")
    x = parser.add_argument_group("cross-encoder")
    x.add_argument("--denoise-margin", type=float, default=c.denoise_margin,
                   help="drop a negative with ce >= positive ce - margin (default: %(default)s)")
    x.add_argument("--ce-base-model", default=c.base_model, help="backbone of a trained cross-encoder")
    x.add_argument("--ce-loss", choices=("bce", "listnet", "lambda"), default=c.loss)
    x.add_argument("--ce-epochs", type=int, default=c.epochs)
    x.add_argument("--ce-max-steps", type=int, default=c.max_steps, help="-1 = all epochs")
    x.add_argument("--ce-max-length", type=int, default=c.max_length, help="tokens per pair")
    x.add_argument("--ce-output", metavar="DIR",
                   help="where a trained cross-encoder is saved (default: <output>.cross-encoder)")
    x.add_argument("--eval-split", default=None,
                   help="after training, evaluate the cross-encoder as a reranker of the "
                        "bi-encoder's top-100 on this split (e.g. dev)")
    r = parser.add_argument_group("resources")
    r.add_argument("--cache-dir", metavar="DIR", help="embedding/score cache (default: none)")
    r.add_argument("--ray", action="store_true", help="encode the corpus with Ray Data actors")
    r.add_argument("--num-actors", type=int, default=1, help="encoder actors with --ray")
    r.add_argument("--cpus-per-actor", type=float, default=0.5, help="CPUs per actor with --ray")
    r.add_argument("--gpus-per-actor", type=float, default=0, help="GPUs per actor with --ray")
    return parser


def _configs(a: dict[str, Any]) -> tuple[MiningConfig, CrossEncoderConfig]:
    mining = MiningConfig(
        k=a["k"], num_negatives=a["num_negatives"], range_min=a["range_min"], range_max=a["range_max"],
        absolute_margin=a["absolute_margin"], relative_margin=a["relative_margin"],
        max_score_ratio=a["max_score_ratio"], max_score=a["max_score"], min_score=a["min_score"],
        sampling_strategy=a["sampling_strategy"], seed=a["seed"],
        rescore_candidates=a["rescore_candidates"], index_factory=a["index_factory"],
        index_type=a.get("index_type") or "flat",
        batch_size=a["batch_size"], query_prompt=a["query_prompt"], doc_prompt=a["doc_prompt"],
        precision=a.get("precision") or "auto")
    ce = CrossEncoderConfig(base_model=a["ce_base_model"], loss=a["ce_loss"], epochs=a["ce_epochs"],
                            max_steps=a["ce_max_steps"], max_length=a["ce_max_length"], seed=a["seed"],
                            denoise_margin=a["denoise_margin"], precision=a.get("precision") or "auto")
    return mining, ce


def run(args: argparse.Namespace | dict[str, Any]) -> int:
    """Run ``embedray mine``; returns the exit code (0 ok, 2 bad input or config).

    Args:
        args: the namespace from :func:`add_mine_arguments`, or a dict with the same keys.
    """
    from embedray.data.beir import load_beir
    from embedray.data.errors import DataError
    from embedray.data.remote import MIRROR_DIR, local_data
    from embedray.models.bundled import UnknownModelError, cache_dir

    defaults = vars(add_arguments(argparse.ArgumentParser()).parse_args(
        ["--model", "-", "--data", "-", "--output", "-"]))
    a = {**defaults, **(vars(args) if isinstance(args, argparse.Namespace) else dict(args))}
    try:
        if a["split"] == "test":
            raise ValueError("--split test: mine writes training data, and the test split only measures; "
                             "mine train (or dev)")
        cfg, ce_cfg = _configs(a)
        a["data"] = str(local_data(a["data"], "--data", cache_dir() / MIRROR_DIR))  # --eval-split reads it too
        data = load_beir(a["data"], a["split"])
        summary = _mine_split(a, data, cfg, ce_cfg)
    except (UnknownModelError, FileNotFoundError, DataError, ValueError) as e:
        print(f"embedray mine: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


def _mine_split(a: dict[str, Any], data, cfg: MiningConfig, ce_cfg: CrossEncoderConfig) -> dict:
    from sentence_transformers import SentenceTransformer

    from embedray.mining.cache import folder_fingerprint, with_precision
    from embedray.mining.pipeline import mine
    from embedray.models.bundled import resolve_model
    from embedray.models.precision import use_precision

    model_dir = resolve_model(a["model"])
    model = SentenceTransformer(str(model_dir), trust_remote_code=False, local_files_only=True)
    weights_fp = with_precision(folder_fingerprint(model_dir), use_precision(model, cfg.precision))
    encode_corpus = None
    if a.get("ray"):
        from embedray.cluster.encode import ray_encode_fn
        from embedray.cluster.runtime import ensure_ray

        ensure_ray()
        encode_corpus = ray_encode_fn(model_dir, cfg.batch_size, a["num_actors"], a["cpus_per_actor"],
                                      a["gpus_per_actor"], prompt=cfg.doc_prompt, precision=cfg.precision)
    _say(f"{data.path}: {len(data.corpus)} documents, {len(data.qrels)} {data.split} queries")
    with tempfile.TemporaryDirectory(prefix="embedray-mine-") as scratch:
        # Training a cross-encoder mines twice (before and after); a scratch cache makes the
        # second round reuse the first round's embeddings when no --cache-dir was given.
        cache_dir = a.get("cache_dir") or (scratch if a.get("train_cross_encoder") else None)
        common = dict(model=model, cfg=cfg, cache_dir=cache_dir, weights_fp=weights_fp,
                      encode_corpus=encode_corpus, show_progress=True)
        summary: dict[str, Any] = {}
        ce = a.get("cross_encoder")
        if a.get("train_cross_encoder"):
            ce, summary["cross_encoder"] = _train_ce(a, data, common, ce_cfg)
        res = mine(data.corpus, data.queries, data.qrels, cross_encoder=ce, ce_cfg=ce_cfg, **common)
    n, left_out = _write_flag(res.pool, data, a["output"], with_scores=ce is not None, prompt=cfg.query_prompt)
    if left_out:
        _say(f"{sum(left_out.values())} {data.split} queries left out of {a['output']}: "
             + ", ".join(f"{reason} {count}" for reason, count in left_out.items()))
    if a.get("pool_output"):
        res.pool.save(a["pool_output"])
    summary.update({"output": str(Path(a["output"]).resolve()), "rows": n, "left_out": dict(left_out),
                    **res.telemetry()})
    return summary


def _train_ce(a: dict[str, Any], data, common: dict, ce_cfg: CrossEncoderConfig):
    """Mine bi-encoder negatives, train the cross-encoder on them, optionally evaluate it."""
    from embedray.data.beir import pairs_from_data
    from embedray.mining.pipeline import mine
    from embedray.training.cross_encoder import train_cross_encoder

    first = mine(data.corpus, data.queries, data.qrels, **common)
    out = Path(a.get("ce_output") or f"{a['output']}.cross-encoder")
    _say(f"training the cross-encoder ({ce_cfg.loss}) on {len(data.qrels)} queries → {out}")
    path = train_cross_encoder(pairs_from_data(data), data.corpus, first.pool, ce_cfg, out)
    info: dict[str, Any] = {"path": str(path)}
    if a.get("eval_split"):
        info["rerank"] = _eval_reranker(a, path, common, ce_cfg.precision)
    return path, info


def _eval_reranker(a: dict[str, Any], ce_path: Path, common: dict, precision: str) -> dict:
    from embedray.data.beir import load_beir
    from embedray.mining.index import VectorIndex
    from embedray.mining.pipeline import encode_queries_and_corpus, st_encode_fn
    from embedray.training.cross_encoder import evaluate_reranker

    dev = load_beir(a["data"], a["eval_split"])
    qs = {q: dev.queries[q] for q in dev.qrels if q in dev.queries}
    cfg: MiningConfig = common["cfg"]
    enc = encode_queries_and_corpus(st_encode_fn(common["model"], cfg.batch_size, cfg.query_prompt,
                                                 cfg.doc_prompt), qs, dev.corpus, cfg,
                                    common["weights_fp"], common["cache_dir"])
    k = min(100, len(enc.doc_ids))
    scores, ids = VectorIndex.build(enc.doc_emb, enc.doc_ids).search(enc.query_emb, k)
    run = {q: dict(zip(ids[i], scores[i].tolist())) for i, q in enumerate(enc.query_ids)}
    result = evaluate_reranker(ce_path, dev, run, k=k, precision=precision)
    _say(f"reranker on {a['eval_split']}: nDCG@10 {result['before']['ndcg@10']:.4f} → "
         f"{result['after']['ndcg@10']:.4f}")
    return result


def _write_flag(pool, data, path: str | Path, with_scores: bool, prompt: str = "") -> tuple[int, Counter]:
    """Write the pool as FlagEmbedding JSONL (texts; scores when a cross-encoder gave them; the
    query prompt the queries were mined with as each row's ``prompt``). Returns the rows written
    and the queries left out by reason."""
    from embedray.data.flag import FlagExample, write_flag_jsonl

    left_out: Counter = Counter()

    def rows():
        for qid in data.qrels:
            negs = pool.negatives.get(qid)
            if negs is None:
                left_out["no positive judgement"] += 1
                continue
            pos_ids = [d for d, rel in data.qrels[qid].items() if rel > 0 and d in data.corpus]
            if with_scores:  # positives the cross-encoder scored, in qrels order
                pos_ids = [d for d in pos_ids if d in pool.positive_scores.get(qid, {})]
            if not pos_ids:
                left_out["no positive " + ("the cross-encoder scored" if with_scores else "in the corpus")] += 1
                continue
            yield FlagExample(
                query=data.queries[qid], pos=[data.corpus[d].text_for_model for d in pos_ids],
                neg=[data.corpus[d].text_for_model for d, _ in negs],
                pos_scores=[pool.positive_scores[qid][d] for d in pos_ids] if with_scores else None,
                neg_scores=[float(s) for _, s in negs] if with_scores else None,
                prompt=prompt or None)

    return write_flag_jsonl(rows(), path), left_out


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
