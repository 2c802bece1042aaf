"""Embedding (and cross-encoder score) cache keyed by (weights fingerprint, text hash).

The complaint this answers (sentence-transformers #3164/#3338, FlagEmbedding #850): mining
re-encodes the whole corpus on every run. sentence-transformers' ``cache_folder`` keys one
``.npy`` by model *name* and the whole corpus, so a fine-tuned model silently reuses stale
embeddings and one changed document re-encodes everything. Here the key is the hash of the
weights and of each document's text, so:

* a second run with the same weights encodes nothing;
* a changed document re-encodes only itself;
* new weights (a refresh after training steps) re-encode everything.

Layout: ``<root>/<fingerprint>/shard-<id>.npy`` (float32 ``(n, d)``) plus ``shard-<id>.json``
(``{"keys": [...]}``). The ``.json`` is renamed into place last and is the commit marker: a
shard without it (a writer killed midway) is ignored, so readers never see a partial shard.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedray.atomic import atomic_open, write_json_atomic
from embedray.digest import files_digest

log = logging.getLogger(__name__)

_MODEL_FILES = ("*.safetensors", "**/*.safetensors")
# Small files that change what a folder computes without changing its weights.
_CONFIG_FILES = ("config.json", "modules.json", "sentence_bert_config.json",
                 "config_sentence_transformers.json", "tokenizer.json", "tokenizer_config.json",
                 "1_Pooling/config.json")


def text_hash(text: str, prompt: str = "") -> str:
    """Hex digest identifying one input text (with the prompt prepended to it)."""
    return hashlib.blake2b(f"{prompt}\x00{text}".encode("utf-8"), digest_size=16).hexdigest()


def pair_hash(query: str, doc: str) -> str:
    """Hex digest identifying one (query, document) pair for the cross-encoder score cache."""
    return hashlib.blake2b(f"{query}\x00\x01{doc}".encode("utf-8"), digest_size=16).hexdigest()


def folder_fingerprint(model_dir: str | os.PathLike) -> str:
    """Fingerprint of a model folder: its safetensors files and the configs next to them.

    Hashes file bytes with blake2b (all-MiniLM-L6-v2's 90 MB take ~0.2 s).
    """
    root = Path(model_dir).resolve()
    files = sorted({p for pat in _MODEL_FILES for p in root.glob(pat)})
    if not files:
        raise ValueError(f"{root}: no *.safetensors weights to fingerprint")
    files += [root / c for c in _CONFIG_FILES if (root / c).is_file()]
    return files_digest(root, files)


def state_dict_fingerprint(state_dict: Mapping[str, object], extra: str = "") -> str:
    """Fingerprint of in-memory weights (a torch ``state_dict``): names, dtypes, shapes, bytes.

    Args:
        state_dict: name → tensor (any dtype/device; copied to CPU when needed).
        extra: anything else that changes outputs (e.g. ``max_seq_length``, pooling).
    """
    import torch

    h = hashlib.blake2b(digest_size=16)
    h.update(extra.encode() + b"\x00")
    for name in sorted(state_dict):
        t = state_dict[name]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode() + b"\x00")
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_fingerprint(model) -> str:
    """Fingerprint of a loaded ``SentenceTransformer``: weights + max length + module layout."""
    extra = (f"max_seq_length={getattr(model, 'max_seq_length', None)}"
             f"|prompts={sorted((getattr(model, 'prompts', None) or {}).items())}|{model}")
    return state_dict_fingerprint(model.state_dict(), extra=extra)


class ShardedCache:
    """Append-only float32 vectors keyed by string, stored in atomically committed shards.

    Args:
        root: the folder of one fingerprint (e.g. ``cache_dir/emb/<weights_fp>``).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._index: dict[str, tuple[int, int]] | None = None  # key → (shard no, row)
        self._shards: list[np.ndarray] = []
        self._seen: set[str] = set()

    def _load(self) -> None:
        if self._index is None:
            self._index = {}
        if not self.root.is_dir():
            return
        for marker in sorted(self.root.glob("shard-*.json")):
            if marker.name in self._seen:
                continue
            npy = marker.with_suffix(".npy")
            try:
                keys = json.loads(marker.read_text(encoding="utf-8"))["keys"]
                arr = np.load(npy, mmap_mode="r")
            except (OSError, ValueError, KeyError) as e:
                log.warning("%s: unreadable cache shard ignored (%s)", marker, e)
                continue
            if len(keys) != arr.shape[0]:
                log.warning("%s: %d keys for %d rows; shard ignored", marker, len(keys), arr.shape[0])
                continue
            self._seen.add(marker.name)
            no = len(self._shards)
            self._shards.append(arr)
            for row, key in enumerate(keys):
                self._index.setdefault(key, (no, row))

    def __len__(self) -> int:
        self._load()
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        self._load()
        return key in self._index

    def missing(self, keys: Sequence[str]) -> list[int]:
        """Positions in ``keys`` that the cache does not hold (shards written since are seen)."""
        self._load()
        return [i for i, k in enumerate(keys) if k not in self._index]

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """Stack the vectors of ``keys`` (all must be present) into ``(len(keys), d)`` float32."""
        self._load()
        rows = [self._shards[s][r] for s, r in (self._index[k] for k in keys)]
        return np.asarray(rows, dtype=np.float32).reshape(len(keys), -1)

    def put(self, keys: Sequence[str], values: np.ndarray) -> Path | None:
        """Write one shard of ``values`` (``(len(keys), d)``) atomically; returns its path."""
        values = np.ascontiguousarray(np.asarray(values, dtype=np.float32).reshape(len(keys), -1))
        if not len(keys):
            return None
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"shard-{uuid.uuid4().hex[:16]}"
        npy, marker = self.root / f"{name}.npy", self.root / f"{name}.json"
        with atomic_open(npy, binary=True) as f:
            np.save(f, values)
        write_json_atomic({"keys": list(keys)}, marker, indent=None)
        self._load()
        return npy


@dataclass
class EncodeResult:
    """Embeddings in input order plus what the cache saved.

    Attributes:
        embeddings: ``(n, d)`` float32.
        n_encoded: texts that were encoded now (cache misses).
        n_cached: texts served from the cache.
    """

    embeddings: np.ndarray
    n_encoded: int
    n_cached: int


def with_precision(weights_fp: str, precision: str, device="cpu") -> str:
    """The cache key of ``weights_fp`` encoded at ``precision`` (resolved on ``device``).

    fp32 keeps the bare weights fingerprint; bf16 embeddings differ from fp32 ones in the last
    digits, so they get their own entries (``<fp>.bf16``) and never stand in for each other.
    """
    from embedray.models.precision import resolve_precision

    resolved = resolve_precision(precision, device)
    return weights_fp if resolved == "fp32" else f"{weights_fp}.{resolved}"


def live_model_key(model) -> str:
    """The weights key of a live :class:`~embedray.models.encoder.BiEncoder`: its weights
    fingerprint at its compute precision on its device."""
    return with_precision(state_dict_fingerprint(model.state_dict()), model.precision, model.device)


def doc_key(prompt: str = "") -> str:
    """The text-key prefix of documents encoded with ``prompt``; queries have :func:`query_key`."""
    return f"d|{prompt}"


def query_key(prompt: str = "") -> str:
    return f"q|{prompt}"


def embedding_cache(cache_dir: str | os.PathLike, weights_fp: str) -> ShardedCache:
    """The embedding cache of one weights fingerprint under ``cache_dir``."""
    return ShardedCache(Path(cache_dir) / "emb" / weights_fp)


def cached_embeddings(texts: Sequence[str], weights_fp: str, cache_dir: str | os.PathLike,
                      prompt: str = "") -> np.ndarray | None:
    """``texts``' embeddings when the cache holds every one of them, else ``None``; reads only.

    For a caller that would encode the same texts with the same weights but should not grow the
    cache with its own results (e.g. a dev evaluation, whose weights are rarely mined again).
    """
    keys = [text_hash(t, prompt) for t in texts]
    if not keys or not (Path(cache_dir) / "emb" / weights_fp).is_dir():
        return None
    cache = embedding_cache(cache_dir, weights_fp)
    return None if cache.missing(keys) else cache.get(keys)


def encode_with_cache(texts: Sequence[str], encode_fn: Callable[[list[str]], np.ndarray],
                      weights_fp: str, cache_dir: str | os.PathLike | None,
                      prompt: str = "") -> EncodeResult:
    """Encode ``texts``, calling ``encode_fn`` only on those the cache does not hold.

    Args:
        texts: the inputs (document text as the model sees it, without the prompt).
        encode_fn: list of texts → ``(n, d)`` embeddings; receives only the misses.
        weights_fp: fingerprint of the weights (:func:`folder_fingerprint`,
            :func:`model_fingerprint` or :func:`state_dict_fingerprint`).
        cache_dir: cache root; ``None`` disables caching (everything is encoded).
        prompt: prepended to each text by the caller's ``encode_fn``; part of the key.

    Returns:
        An :class:`EncodeResult`; duplicate texts are encoded once.
    """
    if cache_dir is None:
        emb = np.asarray(encode_fn(list(texts)), dtype=np.float32)
        return EncodeResult(emb, len(texts), 0)
    cache = embedding_cache(cache_dir, weights_fp)
    keys = [text_hash(t, prompt) for t in texts]
    todo: dict[str, str] = {}
    for i in cache.missing(keys):
        todo.setdefault(keys[i], texts[i])
    if todo:
        new = np.asarray(encode_fn(list(todo.values())), dtype=np.float32)
        cache.put(list(todo), new)
    return EncodeResult(cache.get(keys) if keys else np.zeros((0, 0), np.float32),
                        len(todo), len(keys) - len(todo))
