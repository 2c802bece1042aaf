"""The cross-encoder as a stage of the refresh loop: trained on the base bi-encoder's mined
negatives before training starts, then checked as a reranker on the dev split."""
from __future__ import annotations

from pathlib import Path

from embedray.atomic import write_json_atomic
from embedray.eval.retrieval import evaluate_retrieval
from embedray.mining.cache import doc_key, encode_with_cache, live_model_key
from embedray.mining.pipeline import doc_text, mine
from embedray.models.encoder import BiEncoder
from embedray.training.cross_encoder import evaluate_reranker, train_cross_encoder
from embedray.training.loop import make_encode_fn


def train_base_cross_encoder(job, data, ce_dir: Path, run_dir: Path, positives: dict[str, set[str]],
                             examples: list) -> None:
    """Train the cross-encoder into ``ce_dir`` on (query, positive) training pairs and the
    negatives the base bi-encoder mines; with a dev split, report it as a reranker of the
    bi-encoder's top ``cross_encoder.dev_rerank_depth`` (``cross_encoder_dev.json``)."""
    model = BiEncoder.from_config(job.model).eval()
    model.precision = job.mining.precision
    encode = make_encode_fn(model, job.model)
    weights_fp = live_model_key(model)
    base = mine(data.corpus, data.queries, positives, encode, job.mining,
                cache_dir=run_dir / "cache", weights_fp=weights_fp)
    pairs = [(ex.query_id, data.queries[ex.query_id], ex.pos_id) for ex in examples]
    print(f"[embedray] training the cross-encoder on {len(pairs)} pairs + mined negatives", flush=True)
    train_cross_encoder(pairs, data.corpus, base.pool, job.cross_encoder, ce_dir)
    depth = job.cross_encoder.dev_rerank_depth
    if data.dev is not None and depth:
        # The documents were just encoded for mining by the same weights: read them from the cache.
        docs = encode_with_cache([doc_text(d) for d in data.dev.corpus.values()],
                                 lambda texts: encode(texts, "doc"), weights_fp, run_dir / "cache",
                                 prompt=doc_key(job.mining.doc_prompt))
        first = evaluate_retrieval(encode, data.dev, k=depth, show_progress=False,
                                   corpus_embeddings=docs.embeddings)
        report = evaluate_reranker(str(ce_dir), data.dev, first.run, k=depth, precision=job.cross_encoder.precision)
        write_json_atomic({**report, "depth": depth}, run_dir / "cross_encoder_dev.json")
        print(f"[embedray] cross-encoder reranking dev top-{depth}: nDCG@10 {report['before']['ndcg@10']:.4f} "
              f"→ {report['after']['ndcg@10']:.4f}", flush=True)
