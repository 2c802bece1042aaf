"""The cross-encoder as a stage of the refresh loop: trained on the base bi-encoder's mined
negatives before training starts, then checked as a reranker on the dev split."""
from __future__ import annotations

from pathlib import Path

from embedray.atomic import write_json_atomic
from embedray.eval.retrieval import evaluate_retrieval
from embedray.mining.cache import doc_key, encode_with_cache, live_model_key
from embedray.mining.pipeline import doc_text
from embedray.models.encoder import BiEncoder, unquantised
from embedray.models.precision import available_device
from embedray.training.cross_encoder import evaluate_reranker, train_cross_encoder
from embedray.training.distill import GATE_FILE
from embedray.training.loop import make_encode_fn

__all__ = ["GATE_FILE", "dev_check", "gate", "rerank_choice", "train_base_cross_encoder"]


def train_base_cross_encoder(job, data, ce_dir: Path, run_dir: Path, targets: list, pool) -> None:
    """Train the cross-encoder into ``ce_dir`` on the (query, positive) training pairs of every
    mining target (:class:`~embedray.pipeline.refresh.MineTarget`) and ``pool``, the negatives the
    base bi-encoder mined for them (the merged data's ids: ``data``'s), then check it on dev
    (:func:`dev_check`)."""
    pairs = [(t.global_id(ex.query_id), t.data.queries[ex.query_id], t.global_id(ex.pos_id))
             for t in targets for ex in t.examples]
    print(f"[embedray] training the cross-encoder on {len(pairs)} pairs + mined negatives", flush=True)
    train_cross_encoder(pairs, data.corpus, pool, job.cross_encoder, ce_dir)
    dev_check(job, ce_dir, run_dir, targets)


def dev_check(job, ce_dir: Path, run_dir: Path, targets: list) -> dict | None:
    """For each target with a dev split, the cross-encoder as a reranker of the base bi-encoder's
    top ``cross_encoder.dev_rerank_depth``: nDCG@10 etc. before and after, written to
    ``cross_encoder_dev.json`` (a multi-task job's holds each task's under ``tasks``) and
    returned; None when no target has a dev split or the depth is 0."""
    depth = job.cross_encoder.dev_rerank_depth
    if not depth:
        return None
    model = BiEncoder.from_config(unquantised(job.model)).eval().to(available_device())  # the one that mined pool v1
    model.precision = job.mining.precision
    weights_fp = live_model_key(model)
    reports = {}
    for t in targets:
        if t.data.dev is None:
            continue
        encode = make_encode_fn(model, t.model)
        # The documents were encoded for mining by the same weights: read them from the cache.
        docs = encode_with_cache([doc_text(d) for d in t.data.dev.corpus.values()],
                                 lambda texts: encode(texts, "doc"), weights_fp, run_dir / "cache",
                                 prompt=doc_key(t.mining.doc_prompt))
        first = evaluate_retrieval(encode, t.data.dev, k=depth, show_progress=False,
                                   corpus_embeddings=docs.embeddings)
        report = evaluate_reranker(str(ce_dir), t.data.dev, first.run, k=depth, precision=job.cross_encoder.precision,
                                   temperature=True, fuse=job.cross_encoder.fuse)
        reports[t.name] = {**report, "depth": depth}
        fused = report.get("fused")
        print(f"[embedray] cross-encoder reranking {t.name + ' ' if t.name else ''}dev top-{depth}: nDCG@10 "
              f"{report['before']['ndcg@10']:.4f} → {report['after']['ndcg@10']:.4f}"
              + (f" (fused with the bi-encoder, weight {fused['alpha']:g}: {fused['after']['ndcg@10']:.4f})"
                 if fused else ""), flush=True)
    if not reports:
        return None
    out = reports[""] if "" in reports else {"tasks": reports}
    write_json_atomic(out, run_dir / "cross_encoder_dev.json")
    return out


def gate(job, report: dict | None) -> dict:
    """Whether the run may use the cross-encoder (``cross_encoder.gate``): not when, on some dev
    split, its reranking has a lower nDCG@10 than the bi-encoder's own ranking. The verdict says
    what it compared and, when it failed, the positive-aware rule denoising falls back to."""
    ce = job.cross_encoder
    if report is None:
        return {"checked": False, "passed": True,
                "why": "no dev check (no dev split, or cross_encoder.dev_rerank_depth: 0)"}
    tasks = report["tasks"] if "tasks" in report else {"": report}
    temperature = _joint_temperature(tasks)
    if not ce.gate:
        return {"checked": False, "passed": True, "why": "cross_encoder.gate: false", **temperature}
    dev = {t: {"bi_encoder": r["before"]["ndcg@10"], "reranked": r["after"]["ndcg@10"], "depth": r.get("depth")}
           for t, r in tasks.items()}
    worse = sorted(t for t, r in dev.items() if r["reranked"] < r["bi_encoder"])
    out = {"checked": True, "passed": not worse, "dev": dev, **temperature}
    ratio = job.mining.max_score_ratio or ce.fallback_max_score_ratio
    if worse and ce.fuse and (fusion := _fusion(tasks, dev)) is not None:
        why = ("it reranks dev worse than the bi-encoder alone, better fused with it (weight "
               f"{fusion['alpha']:g}: " + "; ".join(
                   f"{t + ': ' if t else ''}{fusion['dev'][t]:.4f} vs {dev[t]['bi_encoder']:.4f}" for t in dev) + ")")
        if ce.denoise_fused:
            return {**out, "passed": True, "fusion": fusion, "denoise": True,
                    "why": why + ": the run denoises with the fused score"}
        return {**out, "passed": True, "fusion": fusion, "denoise": False, "fallback": {"max_score_ratio": ratio},
                "why": why + ": the fused score may rerank; denoising uses the bi-encoder's positive-aware rule "
                             f"(max_score_ratio {ratio:g}; cross_encoder.denoise_fused: true denoises by the fused "
                             "score)"}
    if worse:
        out.update(worse=worse, fallback={"max_score_ratio": ratio},
                   why="it reranks dev worse than the bi-encoder ("
                       + "; ".join(f"{t + ': ' if t else ''}{dev[t]['reranked']:.4f} < {dev[t]['bi_encoder']:.4f}"
                                   for t in worse) + ")")
    return out


def rerank_choice(report: dict, depth: int) -> dict:
    """How to rerank a first stage, from :func:`evaluate_reranker`'s dev ``report`` on it:
    ``mode`` ``cross_encoder`` when the cross-encoder alone reranks dev at least as well,
    ``fused`` (with ``alpha``) when only its score fused with the first stage's reranks dev
    better, None when neither helps; ``why`` says it with the dev figures."""
    before, alone = report["before"]["ndcg@10"], report["after"]["ndcg@10"]
    fused = report.get("fused")
    out = {"mode": None, "depth": depth, "dev": {"first_stage": before, "cross_encoder": alone}}
    if fused:
        out["dev"].update(fused=fused["after"]["ndcg@10"], alpha=fused["alpha"])
    if alone >= before:
        return {**out, "mode": "cross_encoder",
                "why": f"on dev it reranks the trained teacher's top-{depth} from {before:.4f} to {alone:.4f}"}
    if fused and fused["alpha"] > 0 and fused["after"]["ndcg@10"] > before:
        return {**out, "mode": "fused", "alpha": fused["alpha"],
                "why": f"on dev it alone reranks the trained teacher's top-{depth} worse ({alone:.4f} < {before:.4f}), "
                       f"fused with it (weight {fused['alpha']:g}) better ({fused['after']['ndcg@10']:.4f})"}
    return {**out, "why": f"on dev the cross-encoder does not improve the trained teacher's top-{depth} (alone "
                          f"{alone:.4f}" + (f", fused at best {fused['after']['ndcg@10']:.4f}" if fused else "")
                          + f" vs {before:.4f})"}


def _fusion(tasks: dict, dev: dict) -> dict | None:
    """``{"alpha", "dev": {task: fused nDCG@10}}``: one weight for every dev split (the best mean
    nDCG@10 over their queries together, a tie to the smaller weight), when the fused score
    ranks every split at least as well as the bi-encoder and one better; None otherwise (no
    fused reports, or the best weight is 0: the bi-encoder's own order)."""
    curves = {t: r["fused"] for t, r in tasks.items() if r.get("fused", {}).get("ndcg@10")}
    if len(curves) != len(tasks):
        return None
    total: dict[float, float] = {}
    for c in curves.values():
        for a, v in c["ndcg@10"].items():
            total[float(a)] = total.get(float(a), 0.0) + v * max(1, c.get("queries", 1))
    best = max(total.values())
    alpha = min(a for a, v in total.items() if v >= best - 1e-12)
    fused = {t: at_weight(c["ndcg@10"], alpha) for t, c in curves.items()}
    if alpha == 0 or any(fused[t] < dev[t]["bi_encoder"] for t in dev) or \
            not any(fused[t] > dev[t]["bi_encoder"] for t in dev):
        return None
    # The fused scores' temperature at that weight, for score_source: fused (none in older reports).
    temps = {t: at_weight(c.get("temperature", {}), alpha, None) for t, c in curves.items()}
    return {"alpha": alpha, "dev": fused,
            **_joint_temperature({t: {"temperature": v} for t, v in temps.items() if v is not None})}


_MISSING = object()


def at_weight(curve: dict, alpha: float, default=_MISSING):
    """A curve's value at ``alpha`` (its keys are floats, or strings once read back from JSON);
    ``default`` when it has none (without one, that is an error)."""
    value = next((v for a, v in curve.items() if abs(float(a) - alpha) < 1e-9), default)
    if value is _MISSING:
        raise KeyError(f"no value at weight {alpha:g}")
    return value


def _joint_temperature(tasks: dict) -> dict:
    """``{"temperature": T}``: the grid temperature with the lowest negative log-likelihood over
    every task's dev queries together (:func:`~embedray.training.distill.choose_temperature`);
    empty when the reports chose none."""
    chosen = [r["temperature"] for r in tasks.values() if r.get("temperature", {}).get("queries")]
    if not chosen:
        return {}
    total: dict[float, float] = {}
    for c in chosen:
        for t, nll in c["nll"].items():
            total[float(t)] = total.get(float(t), 0.0) + nll * c["queries"]
    return {"temperature": min(total, key=total.get)}
