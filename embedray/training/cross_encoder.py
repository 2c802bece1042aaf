"""Training and evaluating embedray's cross-encoder: (query, positive) pairs and mined
negatives, then reranking as a check.

No pretrained reranker can be had offline, so it is trained here, with sentence-transformers'
``CrossEncoderTrainer`` and its ``BinaryCrossEntropyLoss`` (pointwise) or ``ListNetLoss`` /
``LambdaLoss`` (listwise): the trainer brings seeding, LR schedule, gradient clipping and a
loadable model folder with a model card.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from embedray.atomic import replace_dir, write_json_atomic
from embedray.data.beir import Document, JudgedPair, RetrievalData
from embedray.mining.config import CrossEncoderConfig
from embedray.mining.fusion import ALPHAS, fuse_run
from embedray.mining.pool import NegativePool
from embedray.models.cross_encoder import load_cross_encoder

log = logging.getLogger(__name__)



def _text(doc: Document | str) -> str:
    return doc.text_for_model if isinstance(doc, Document) else str(doc)


def build_training_rows(train_pairs: Sequence[JudgedPair], corpus: Mapping[str, Document | str],
                        negatives: Mapping[str, Sequence[str]] | NegativePool,
                        cfg: CrossEncoderConfig) -> dict[str, list]:
    """Columns for the trainer: labelled pairs (``bce``) or labelled lists (listwise).

    Each query contributes its positives and up to ``cfg.negatives_per_query`` of its mined
    negatives (hardest first). Queries without negatives still give positive pairs (``bce``)
    but are left out of listwise training, which needs a negative to rank against.
    """
    if isinstance(negatives, NegativePool):
        negatives = {q: negatives.negative_ids(q) for q in negatives.negatives}
    by_query: dict[str, tuple[str, list[str]]] = {}
    for qid, qtext, did in train_pairs:
        by_query.setdefault(qid, (qtext, []))[1].append(did)
    if cfg.loss == "bce":
        cols: dict[str, list] = {"query": [], "document": [], "label": []}
        for qid, (qtext, pos) in by_query.items():
            negs = [d for d in negatives.get(qid, ()) if d in corpus][:cfg.negatives_per_query]
            for did, label in [(d, 1.0) for d in pos] + [(d, 0.0) for d in negs]:
                cols["query"].append(qtext)
                cols["document"].append(_text(corpus[did]))
                cols["label"].append(label)
        return cols
    cols = {"query": [], "docs": [], "labels": []}
    for qid, (qtext, pos) in by_query.items():
        negs = [d for d in negatives.get(qid, ()) if d in corpus][:cfg.negatives_per_query]
        if not negs:
            continue
        cols["query"].append(qtext)
        cols["docs"].append([_text(corpus[d]) for d in pos + negs])
        cols["labels"].append([1.0] * len(pos) + [0.0] * len(negs))
    return cols


def _loss(model, cfg: CrossEncoderConfig):
    import torch
    from sentence_transformers.cross_encoder import losses

    if cfg.loss == "bce":
        # Weight positives by the negatives per query, as sentence-transformers' MS MARCO BCE
        # recipe does, so that the 1:N imbalance does not push every score down.
        return losses.BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(float(cfg.negatives_per_query)))
    if cfg.loss == "listnet":
        return losses.ListNetLoss(model)
    return losses.LambdaLoss(model)


def head_parameter_names(model) -> list[str]:
    """Names of the fresh scoring head's parameters (classifier, and the pooler feeding it)."""
    return [n for n, _ in model.named_parameters() if any(
        part in ("classifier", "pooler", "score") for part in n.split("."))]


def _optimizer(model, cfg: CrossEncoderConfig):
    """AdamW with the head at ``head_learning_rate`` (``None``: the trainer's own optimizer)."""
    from embedray.training.optim import adamw

    if cfg.head_learning_rate is None:
        return None
    head = set(head_parameter_names(model))
    if not head:
        raise ValueError(f"cross-encoder config: field 'head_learning_rate': {cfg.base_model} has no "
                         "classifier/pooler parameters to give it")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if n not in head], "lr": cfg.learning_rate},
              {"params": [p for n, p in named if n in head], "lr": cfg.head_learning_rate}]
    return adamw(groups, lr=cfg.learning_rate, weight_decay=0.0)


def train_cross_encoder(train_pairs: Sequence[JudgedPair], corpus: Mapping[str, Document | str],
                        negatives: Mapping[str, Sequence[str]] | NegativePool,
                        cfg: CrossEncoderConfig, out_dir: str | os.PathLike) -> Path:
    """Train a cross-encoder (fresh head on ``cfg.base_model``) and save it to ``out_dir``.

    Args:
        train_pairs: ``(query_id, query_text, positive_doc_id)`` rows (:func:`embedray.data.beir.pairs_from_data`).
        corpus: doc id → :class:`Document` or text.
        negatives: query id → mined negative doc ids (or a :class:`NegativePool`).
        cfg: loss, steps, learning rate, seed, max length.
        out_dir: destination folder; written aside and renamed into place (an existing folder
            is replaced).

    Returns:
        The folder, loadable with ``CrossEncoder(path)``.
    """
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import (
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )
    from transformers import PrinterCallback, TrainerCallback

    class _LogCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            log.info("cross-encoder step %d: %s", state.global_step, logs)

    rows = build_training_rows(train_pairs, corpus, negatives, cfg)
    n_rows = len(rows["query"])
    if n_rows == 0:
        raise ValueError("no training rows: the cross-encoder needs (query, positive) pairs "
                         "(and, for listwise losses, mined negatives)")
    out = Path(out_dir).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)  # the fresh head is initialised in the constructor
    # cfg.precision covers training too: the transformer runs under autocast, head and loss in fp32
    model = load_cross_encoder(cfg.base_model, max_length=cfg.max_length, num_labels=1, precision=cfg.precision)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.tmp-") as tmp:
        args = CrossEncoderTrainingArguments(
            output_dir=str(Path(tmp) / "trainer"), num_train_epochs=cfg.epochs,
            max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate, warmup_steps=cfg.warmup_ratio, seed=cfg.seed,
            data_seed=cfg.seed, save_strategy="no", report_to="none", disable_tqdm=True,
            dataloader_pin_memory=False,
            logging_steps=max(1, cfg.max_steps // 10 if cfg.max_steps > 0 else 50))
        trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=Dataset.from_dict(rows),
                                      loss=_loss(model, cfg), optimizers=(_optimizer(model, cfg), None))
        # The trainer prints its loss dicts to stdout; send them to logging (stdout belongs to
        # the CLI's JSON summary).
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(_LogCallback)
        result = trainer.train()
        staged = Path(tmp) / "model"
        model.save_pretrained(str(staged))
        meta = {"kind": "cross-encoder", "base_model": cfg.base_model,
                "training": {**asdict(cfg), "rows": n_rows, "queries": len({p[0] for p in train_pairs}),
                             "steps": int(result.global_step),
                             "train_loss": float(result.training_loss),
                             "seconds": round(time.perf_counter() - start, 2)},
                "metrics": {}}
        (staged / "embedray.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        replace_dir(staged, out)
    log.info("trained cross-encoder on %d rows in %.1fs → %s", n_rows, time.perf_counter() - start, out)
    return out


def rerank(ce, queries: Mapping[str, str], doc_texts: Mapping[str, str],
           run: Mapping[str, Mapping[str, float]], k: int = 100,
           batch_size: int = 32) -> dict[str, dict[str, float]]:
    """Rescore the top ``k`` documents of each query of ``run`` with the cross-encoder.

    Returns:
        query id → {doc id: cross-encoder score} over those top-``k`` documents.
    """
    from embedray.mining.rescore import rescore

    keys, pairs = [], []
    for qid, docs in run.items():
        top = sorted(docs.items(), key=lambda kv: -kv[1])[:k]
        for did, _ in top:
            if did in doc_texts:
                keys.append((qid, did))
                pairs.append((queries[qid], doc_texts[did]))
    scores = rescore(ce, pairs, batch_size=batch_size)
    out: dict[str, dict[str, float]] = {}
    for (qid, did), s in zip(keys, scores):
        out.setdefault(qid, {})[did] = float(s)
    return out


def choose_alpha(qrels: Mapping[str, Mapping[str, int]], bi_run: Mapping[str, Mapping[str, float]],
                 ce_run: Mapping[str, Mapping[str, float]], alphas: Sequence[float] = ALPHAS) -> dict:
    """The weight ``α`` whose fused ranking (:func:`embedray.mining.fusion.fuse`) of ``ce_run``'s
    candidates has the highest nDCG@10 on ``qrels`` (dev judgements; never tune on test); a tie
    goes to the smaller ``α``.

    Returns:
        ``{"alpha": α, "ndcg@10": {α: nDCG@10}, "queries": n}``.
    """
    from embedray.eval.metrics import compute_metrics

    curve = {float(a): compute_metrics(qrels, fuse_run(bi_run, ce_run, a), ks=(10,))["ndcg@10"] for a in alphas}
    best = max(curve.values())
    return {"alpha": min(a for a, v in curve.items() if v >= best - 1e-12), "ndcg@10": curve,
            "queries": sum(1 for q in ce_run if q in qrels)}


def evaluate_reranker(ce, data: RetrievalData, first_stage_run: Mapping[str, Mapping[str, float]],
                      k: int = 100, batch_size: int = 32, precision: str = "auto",
                      temperature: bool = False, fuse: bool | float = False) -> dict[str, dict[str, float]]:
    """nDCG/Recall/MRR of the bi-encoder's top-``k`` before and after cross-encoder reranking.

    Args:
        ce: a loaded ``CrossEncoder`` or its folder (then its ``embedray.json`` gets the metrics).
        data: the evaluation split (dev; never tune on test).
        first_stage_run: query id → {doc id: bi-encoder score}, at least the top ``k``.
        k: depth reranked; both runs are cut to it so that only the order differs.
        batch_size: cross-encoder batch size.
        precision: compute precision of a cross-encoder loaded from its folder.
        temperature: also choose the temperature of its logits on these queries (dev only).
        fuse: also rank by its score fused with the bi-encoder's (:mod:`embedray.eval.fusion`):
            ``True`` chooses the weight on these queries (dev only), a number uses that weight.

    Returns:
        ``{"before": metrics, "after": metrics}`` from :func:`embedray.eval.metrics.compute_metrics`;
        with ``temperature``, also ``"temperature"``: the temperature of the cross-encoder's
        logits chosen on these queries (:func:`embedray.training.distill.choose_temperature`);
        with ``fuse``, also ``"fused"``: ``{"alpha", "after": metrics}`` (and, when chosen here,
        each weight's nDCG@10 under ``"ndcg@10"``; with ``temperature``, each weight's choice of
        the fused scores' temperature under ``"temperature"``).
    """
    from embedray.eval.metrics import compute_metrics
    from embedray.training.distill import choose_temperature

    folder = Path(ce) if isinstance(ce, (str, os.PathLike)) else None
    model = load_cross_encoder(ce, precision=precision) if folder is not None else ce
    queries = {q: data.queries[q] for q in data.qrels if q in data.queries and q in first_stage_run}
    before = {q: dict(sorted(first_stage_run[q].items(), key=lambda kv: -kv[1])[:k]) for q in queries}
    texts = {d: doc.text_for_model for d, doc in data.corpus.items()}
    after = rerank(model, queries, texts, before, k=k, batch_size=batch_size)
    ks = sorted({10, min(100, k), k})
    result = {"before": compute_metrics(data.qrels, before, ks=ks),
              "after": compute_metrics(data.qrels, after, ks=ks)}
    if temperature:
        result["temperature"] = choose_temperature(data.qrels, after)
    if fuse is not False:
        chosen = choose_alpha(data.qrels, before, after) if fuse is True else {"alpha": float(fuse)}
        result["fused"] = {**chosen, "after": compute_metrics(data.qrels, fuse_run(before, after, chosen["alpha"]),
                                                              ks=ks)}
        if temperature:  # the fused scores' temperature at each weight tried (the gate picks one weight)
            weights = chosen.get("ndcg@10", {chosen["alpha"]: None})
            result["fused"]["temperature"] = {float(a): choose_temperature(data.qrels, fuse_run(before, after, float(a)),
                                                                           logits=True) for a in weights}
    if folder is not None and (folder / "embedray.json").is_file():
        meta = json.loads((folder / "embedray.json").read_text(encoding="utf-8"))
        meta.setdefault("metrics", {})[f"rerank_{data.split}"] = {**result, "k": k}
        write_json_atomic(meta, folder / "embedray.json")
    return result
