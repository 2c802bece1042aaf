"""Corpus encoding on Ray Data: a pool of encoder actors over length-sorted batches.

Each actor loads the bi-encoder once (a folder, optionally overwritten with a weights snapshot
from the object store, as the refresher publishes them) and encodes batches of documents with
fractional CPUs or one GPU. Documents are sorted by length before batching so that a batch
pads little. The embedding cache (:mod:`embedray.mining.cache`) is consulted first: only
documents whose (weights fingerprint, text hash) is missing are sent to the actors, and what
they return is written back to the cache as a shard. Optionally the freshly encoded rows are
also written as Parquet shards (id, key, embedding) by Ray Data itself.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray

from embedray.cluster.runtime import OFFLINE_ENV
from embedray.data.beir import Document
from embedray.mining.cache import (doc_key, embedding_cache, folder_fingerprint, state_dict_fingerprint,
                                   text_hash, with_precision)

log = logging.getLogger(__name__)


class EncoderActor:
    """Ray Data callable class: ``{"id", "key", "text"}`` batch → ``{"id", "key", "embedding"}``.

    Args:
        model_dir: sentence-transformers folder of the bi-encoder.
        batch_size: texts per forward pass.
        prompt: text prepended to each document (``None``: the model's ``document`` prompt).
        state_dict: optional weights to load over the folder's (a snapshot from training).
        device: torch device (``None``: CUDA when the actor got a GPU, else CPU).
        num_threads: torch intra-op threads (match the actor's CPU share).
        precision: the transformer's compute precision (``auto``: bf16 where the actor's
            device runs it fast), see :mod:`embedray.models.precision`.
    """

    def __init__(self, model_dir: str, batch_size: int = 32, prompt: str | None = None,
                 state_dict: dict | None = None, device: str | None = None, num_threads: int = 1,
                 precision: str = "auto"):
        for k, v in OFFLINE_ENV.items():
            os.environ.setdefault(k, v)
        import torch
        from sentence_transformers import SentenceTransformer

        from embedray.models.precision import use_precision

        torch.set_num_threads(max(1, num_threads))
        if device is None:
            device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
        self.model = SentenceTransformer(model_dir, device=device, trust_remote_code=False,
                                         local_files_only=True)
        if isinstance(state_dict, ray.ObjectRef):  # Ray Data pickles constructor kwargs as is
            state_dict = ray.get(state_dict)
        if state_dict is not None:
            self.model.load_state_dict(state_dict)
        use_precision(self.model, precision)
        self.batch_size, self.prompt = batch_size, prompt

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch["text"]]
        emb = self.model.encode_document(texts, batch_size=self.batch_size, prompt=self.prompt,
                                         normalize_embeddings=True, convert_to_numpy=True,
                                         show_progress_bar=False)  # (batch, dim)
        return {"id": batch["id"], "key": batch["key"], "embedding": emb.astype(np.float32)}


def _rows(docs) -> tuple[list[str], list[str]]:
    """(ids, model texts) from Documents, ``(id, text)`` pairs or ``{"id"/"_id", "text", "title"}``."""
    ids, texts = [], []
    for d in docs:
        if isinstance(d, Document):
            ids.append(d.id)
            texts.append(d.text_for_model)
        elif isinstance(d, dict):
            ids.append(str(d.get("id", d.get("_id"))))
            texts.append(Document("", d["text"], d.get("title") or "").text_for_model)
        else:
            ids.append(str(d[0]))
            texts.append(str(d[1]))
    return ids, texts


def _dataset_rows(ds: "ray.data.Dataset") -> tuple[list[str], list[str]]:
    """Read ``id``/``_id``, ``text`` and optional ``title`` from a Ray Dataset into the driver.

    The driver needs every id and text hash anyway (the index is built there); texts are hashed
    here rather than in tasks to keep one code path with list input.
    """
    cols = set(ds.columns())
    id_col = "id" if "id" in cols else "_id"
    if id_col not in cols or "text" not in cols:
        raise ValueError(f"the corpus dataset needs an 'id' (or '_id') and a 'text' column; "
                         f"it has {sorted(cols)}")
    keep = [c for c in (id_col, "title", "text") if c in cols]
    df = ds.select_columns(keep).to_pandas()
    titles = df["title"].fillna("").astype(str) if "title" in df else [""] * len(df)
    return _rows({"id": i, "text": t, "title": ti}
                 for i, t, ti in zip(df[id_col].astype(str), df["text"].astype(str), titles))


def encode_corpus_ray(docs: Sequence[Document] | Sequence[tuple[str, str]] | "ray.data.Dataset" | str | os.PathLike,
                      model_dir_or_spec: str | os.PathLike, batch_size: int = 32, num_actors: int = 1,
                      num_cpus_per_actor: float = 0.5, num_gpus: float = 0,
                      cache_dir: str | os.PathLike | None = None, weights_fp: str | None = None,
                      output_dir: str | os.PathLike | None = None, prompt: str = "",
                      state_dict: Any = None, precision: str = "auto") -> tuple[list[str], np.ndarray]:
    """Encode a corpus with an actor pool on Ray Data, through the embedding cache.

    Args:
        docs: :class:`Document` list, ``(id, text)`` pairs, a Ray Dataset with ``id``/``_id``,
            ``text`` (and ``title``) columns, or the path of a BEIR ``corpus.jsonl`` / ``corpus.parquet``.
        model_dir_or_spec: a bundled model name or sentence-transformers folder.
        batch_size: texts per forward pass (a Ray batch holds 4 of them).
        num_actors: encoder actors in the pool.
        num_cpus_per_actor: CPUs reserved per actor (fractions share a core).
        num_gpus: GPUs per actor (0 on CPU machines; 1 puts each actor on its own GPU).
        cache_dir: embedding cache root; ``None`` encodes everything and caches nothing.
        weights_fp: fingerprint of the weights; default: of ``state_dict`` if given, else of the
            folder's safetensors.
        output_dir: if set, the encoded rows are also written there as Parquet shards.
        prompt: text prepended to each document (part of the cache key).
        state_dict: weights to load over the folder's in every actor (a dict or an ObjectRef,
            e.g. a training snapshot put in the object store).
        precision: the encoders' compute precision (``auto``, ``fp32``, ``bf16``).

    Returns:
        ``(ids, embeddings)``: ids in input order (file order for a path or Dataset) and float32
        ``(n, dim)`` L2-normalised embeddings.
    """
    from embedray.models.bundled import resolve_model

    model_dir = resolve_model(model_dir_or_spec)
    if isinstance(docs, (str, os.PathLike)):
        path = Path(docs).expanduser().resolve()
        docs = ray.data.read_parquet(str(path)) if path.suffix.lower() == ".parquet" else ray.data.read_json(str(path))
    ids, texts = _dataset_rows(docs) if isinstance(docs, ray.data.Dataset) else _rows(docs)
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate document ids in the corpus")
    if weights_fp is None:
        weights_fp = (state_dict_fingerprint(ray.get(state_dict) if isinstance(state_dict, ray.ObjectRef)
                                             else state_dict)
                      if state_dict is not None else folder_fingerprint(model_dir))
        weights_fp = with_precision(weights_fp, precision, "cuda" if num_gpus else "cpu")
    keys = [text_hash(t, doc_key(prompt)) for t in texts]
    cache = embedding_cache(cache_dir, weights_fp) if cache_dir is not None else None
    todo = sorted(set(cache.missing(keys)) if cache is not None else range(len(ids)),
                  key=lambda i: -len(texts[i]))  # longest first: batches of similar length
    seen: set[str] = set()
    todo = [i for i in todo if not (keys[i] in seen or seen.add(keys[i]))]  # duplicate texts once
    log.info("encode_corpus_ray: %d docs, %d to encode (%d cached)", len(ids), len(todo),
             len(ids) - len(todo))
    new = _encode_on_actors([{"id": ids[i], "key": keys[i], "text": texts[i]} for i in todo],
                            str(model_dir), batch_size, num_actors, num_cpus_per_actor, num_gpus,
                            prompt, state_dict, output_dir, precision)
    if cache is not None:
        if new:
            cache.put(list(new), np.stack(list(new.values())))
        return ids, cache.get(keys) if keys else np.zeros((0, 0), np.float32)
    return ids, np.stack([new[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)


def _encode_on_actors(rows: list[dict], model_dir: str, batch_size: int, num_actors: int,
                      num_cpus: float, num_gpus: float, prompt: str, state_dict: Any,
                      output_dir: str | os.PathLike | None, precision: str = "auto") -> dict[str, np.ndarray]:
    """Run the actor pool over ``rows`` (already length-sorted); key → embedding."""
    if not rows:
        return {}
    if not ray.is_initialized():
        from embedray.cluster.runtime import ensure_ray

        ensure_ray()
    # from_items keeps the list order inside and across blocks, so batches stay length-sorted.
    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // (batch_size * 4), 64)))
    encoded = ds.map_batches(
        EncoderActor, batch_size=batch_size * 4, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_actors),  # `concurrency=` is deprecated in 2.60
        num_cpus=num_cpus, num_gpus=num_gpus or None, udf_modifying_row_count=False,
        fn_constructor_kwargs={"model_dir": model_dir, "batch_size": batch_size,
                               "prompt": prompt or None, "state_dict": state_dict,
                               "num_threads": max(1, round(num_cpus)), "precision": precision},
    ).materialize()
    if output_dir is not None:
        encoded.write_parquet(str(Path(output_dir).expanduser().resolve()))
    out: dict[str, np.ndarray] = {}
    for batch in encoded.iter_batches(batch_size=4096, batch_format="numpy"):
        for key, vec in zip(batch["key"], batch["embedding"]):
            out[str(key)] = np.asarray(vec, np.float32)
    return out


def ray_encode_fn(model_dir_or_spec: str | os.PathLike, batch_size: int = 32, num_actors: int = 1,
                  num_cpus_per_actor: float = 0.5, num_gpus: float = 0, state_dict: Any = None,
                  prompt: str = "", precision: str = "auto"):
    """A ``texts → embeddings`` function on the actor pool, for ``mine(..., encode_corpus=...)``.

    The mining pipeline consults the cache itself and passes only the misses.
    """
    def encode(texts: list[str]) -> np.ndarray:
        pairs = [(str(i), t) for i, t in enumerate(texts)]
        _, emb = encode_corpus_ray(pairs, model_dir_or_spec, batch_size, num_actors,
                                   num_cpus_per_actor, num_gpus, cache_dir=None, weights_fp="-",
                                   prompt=prompt, state_dict=state_dict, precision=precision)
        return emb
    return encode
