"""Dev evaluation during training, through the run's embedding cache: what the loop's
``Hooks.evaluate`` runs for a train job (the loop itself knows no mining or cache settings)."""
from __future__ import annotations

from pathlib import Path

from embedray.eval.retrieval import evaluate_retrieval
from embedray.mining.cache import cached_embeddings, doc_key, encode_with_cache, live_model_key
from embedray.mining.pipeline import doc_text
from embedray.training.data import TrainingData
from embedray.training.loop import make_encode_fn


class DevEvaluation:
    """``Hooks.evaluate`` of one train job: the live model's dev metrics at ``start`` (documents a
    mining round already encoded with these weights come from the cache), at a ``step`` (no
    cache: the weights are new), and at the ``final`` step (encoded documents are written to the
    cache of a mining run, where the pipeline's test evaluation of the same weights finds them)."""

    def __init__(self, job, data: TrainingData, run_dir: str | Path):
        self.job, self.data, self.cache = job, data, Path(run_dir) / "cache"

    def __call__(self, model, when: str) -> dict[str, float]:
        if when == "start":
            return evaluate_dev(model, self.job, self.data, cache_dir=self.cache)
        if when == "final":
            cache = self.cache if self.job.refresh.mode != "off" else None
            return evaluate_dev(model, self.job, self.data, cache_dir=cache, store=True)
        return evaluate_dev(model, self.job, self.data)


class TaskDevEvaluation:
    """``Hooks.evaluate`` of a multi-task job: each retrieval task's dev split, encoded with the
    task's own instructions; ``ndcg@10`` is their mean (what early stopping reads), and every
    task's metrics are there as ``<task>/<metric>``."""

    def __init__(self, job, per_task: dict[str, TrainingData]):
        from dataclasses import replace

        self.job = job
        self.tasks = [(t, per_task[t.name], replace(job.model, query_prompt=t.query_prompt, doc_prompt=t.doc_prompt))
                      for t in job.tasks if per_task[t.name].dev is not None and t.loss.name != "classification"]

    def __bool__(self) -> bool:
        return bool(self.tasks)

    def __call__(self, model, when: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for task, data, model_cfg in self.tasks:
            dev = _capped(data.dev, self.job.train.eval_max_queries)
            metrics = evaluate_retrieval(make_encode_fn(model, model_cfg), dev, show_progress=False).metrics
            out.update({f"{task.name}/{k}": v for k, v in metrics.items()})
        out["ndcg@10"] = sum(out[f"{t.name}/ndcg@10"] for t, _, _ in self.tasks) / len(self.tasks)
        return out


def _capped(dev, max_queries: int | None):
    """``dev`` with at most ``max_queries`` judged queries (the first by id: the same every time)."""
    if max_queries and len(dev.qrels) > max_queries:
        keep = sorted(dev.qrels)[:max_queries]
        return type(dev)(dev.corpus, dev.queries, {q: dev.qrels[q] for q in keep}, dev.split, dev.path)
    return dev


def evaluate_dev(model, job, data: TrainingData, cache_dir: Path | None = None, store: bool = False) -> dict[str, float]:
    """nDCG@10 etc. of the live model on (a deterministic subset of) the dev split.

    With ``cache_dir`` (the run's embedding cache), documents that a mining round already
    encoded with these exact weights are read from it: the teacher's first evaluation reuses
    the corpus its base weights were mined with. With ``store`` too, the documents it encodes
    are written there (the final weights: the pipeline's test evaluation reads them back).
    """
    dev = _capped(data.dev, job.train.eval_max_queries)
    was_training = model.training
    docs = (cached_doc_embeddings(model, job.model, job.mining.doc_prompt, dev.corpus, cache_dir, store)
            if cache_dir is not None else None)
    result = evaluate_retrieval(make_encode_fn(model, job.model), dev, show_progress=False, corpus_embeddings=docs)
    model.train(was_training)
    return result.metrics


def cached_doc_embeddings(model, model_cfg, doc_prompt: str, corpus, cache_dir: Path, store: bool = False,
                          batch_size: int = 64):
    """A corpus (id → Document, in order) as mining encodes it with ``model``'s weights, from the
    run's embedding cache (same weights fingerprint, same text key): ``None`` when any document
    is missing; with ``store``, what the cache lacks is encoded and written to it."""
    texts = [doc_text(d) for d in corpus.values()]
    fp = live_model_key(model)
    prompt = doc_key(doc_prompt)
    if store:
        encode = make_encode_fn(model, model_cfg, batch_size=batch_size)
        return encode_with_cache(texts, lambda batch: encode(batch, "doc"), fp, cache_dir, prompt=prompt).embeddings
    return cached_embeddings(texts, fp, cache_dir, prompt=prompt)


