"""The model side of the server: token counting, batched encoding, the corpus index.

:class:`EmbedderCore` is what one Ray Serve replica holds (see ``embedray/cluster/serve_app.py``)
and also what the in-process backend of the unit tests uses; it never imports Ray.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embedray.models.precision import use_precision
from embedray.models.prompts import model_prompts, role_prompt
from embedray.serve.batching import Part, padded_chunks
from embedray.serve.corpus import CorpusIndex, Hit, has_index, load_corpus, load_index

log = logging.getLogger(__name__)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_tokenizer(model_dir: str | Path):
    """The Hugging Face tokenizer of a sentence-transformers folder, without loading the model.

    The transformer module's folder comes from ``modules.json`` (the model root in most
    exports).
    """
    from transformers import AutoTokenizer

    root = Path(model_dir)
    sub = ""
    modules = root / "modules.json"
    if modules.is_file():
        for m in json.loads(modules.read_text(encoding="utf-8")):
            if str(m.get("type", "")).endswith("Transformer"):
                sub = m.get("path", "") or ""
                break
    return AutoTokenizer.from_pretrained(str(root / sub), local_files_only=True, trust_remote_code=False)


class TokenCounter:
    """Counts tokens the way the model sees them (special tokens included, no truncation).

    Safe to call from several threads: a fast tokenizer may not be used by two at once
    ("Already borrowed"), so calls take turns.

    Args:
        tokenizer: a Hugging Face tokenizer.
        max_seq_length: the model's limit; longer texts are truncated to it when asked.
    """

    def __init__(self, tokenizer, max_seq_length: int):
        self.tokenizer = tokenizer
        self.max_seq_length = int(max_seq_length)
        self._lock = threading.Lock()

    def count(self, texts: Sequence[str]) -> list[int]:
        """Token count of each text before truncation."""
        if not texts:
            return []
        with self._lock:
            enc = self.tokenizer(list(texts), add_special_tokens=True, truncation=False,
                                 return_attention_mask=False, return_token_type_ids=False, verbose=False)
        return [len(ids) for ids in enc["input_ids"]]


class EmbedderCore:
    """A sentence-transformers model, encoding token-budgeted batches; optionally a corpus index.

    Args:
        model_dir: sentence-transformers folder.
        corpus: BEIR folder or JSONL corpus to index at start-up (``None``: no search).
        index: a saved index (``VectorIndex`` folder or ``IndexStore`` root) over ``corpus``
            built with this model, loaded instead of encoding the corpus.
        index_type: ``flat``, ``int8`` or ``binary`` for the index built from ``corpus`` (a
            loaded ``index`` keeps its own type).
        max_batch_tokens: padded-token budget of one forward pass.
        torch_threads: intra-op threads; 0 keeps torch's default (all cores).
        precision: the transformer's compute precision: ``auto`` (bf16 where the hardware runs it
            fast), ``fp32`` or ``bf16``; pooling and normalisation stay fp32.
        backend: ``torch``, ``onnx`` (onnxruntime runs ``onnx/<onnx_file>`` of the folder, in the
            precision of that file) or ``openvino`` (the folder's ``openvino/`` export, in
            ``precision``; a folder without one is converted once into the model cache,
            :func:`embedray.models.export.converted_openvino`).
        onnx_file: the ONNX file of the ``onnx`` backend, e.g. ``model_qint8_avx512_vnni.onnx``.
        device: torch device of the torch backend (``cpu``, ``cuda``).
        gpu_ids: the GPUs Ray assigned to this replica (reported by :meth:`describe`).
    """

    def __init__(self, model_dir: str | Path, corpus: str | Path | None = None,
                 index: str | Path | None = None, max_batch_tokens: int = 8192, torch_threads: int = 0,
                 precision: str = "auto", index_type: str = "flat", backend: str = "torch",
                 onnx_file: str = "model.onnx", device: str = "cpu", gpu_ids: Sequence[str] = ()):
        import torch

        from embedray.models.backends import has_openvino_export, load_sentence_model

        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        self.source_dir = Path(model_dir)  # the weights a saved corpus index is checked against
        self.converted = backend == "openvino" and not has_openvino_export(model_dir)
        if self.converted:
            from embedray.models.export import converted_openvino

            model_dir = converted_openvino(model_dir)  # once per folder content (ServeConfig.convert)
        self.model = load_sentence_model(model_dir, backend, onnx_file, threads=torch_threads, device=device,
                                         precision=precision)
        self.model.eval()
        self.device, self.gpu_ids = str(getattr(self.model, "device", "cpu")), list(gpu_ids)
        self.backend, self.onnx_file = backend, getattr(self.model, "embedray_onnx_file", None)
        self.precision = use_precision(self.model, precision) if backend == "torch" else self.model.embedray_precision
        self.max_seq_length = int(self.model.max_seq_length or 512)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.normalized = any(type(m).__name__ == "Normalize" for m in self.model)
        self.max_batch_tokens = max(int(max_batch_tokens), self.max_seq_length)
        self.counter = TokenCounter(self.model.tokenizer, self.max_seq_length)
        # The HTTP layer puts the prompt before each text (so that token counts include it);
        # the model is then always called with an explicit empty prompt.
        self.prompts, self.default_prompt_name = model_prompts(self.model)
        self._run_lock = threading.Lock()  # one model run at a time (the health check waits its turn)
        self.corpus: CorpusIndex | None = None
        if corpus is not None:
            self.corpus = self._index_corpus(corpus, index, index_type)

    def _index_corpus(self, corpus: str | Path, index: str | Path | None, index_type: str) -> CorpusIndex:
        """The corpus's index: loaded from ``index`` when that folder holds one built with this
        model, else encoded now (and saved to ``index``, when given, for the next start)."""
        from embedray.mining.cache import folder_fingerprint

        docs = load_corpus(corpus)
        prompt = role_prompt(self.prompts, self.default_prompt_name, "document")
        model = None
        if index is not None:
            try:
                model = folder_fingerprint(self.source_dir)
            except ValueError:  # no safetensors files (an ONNX-only folder): nothing to check against
                log.warning("%s has no safetensors weights: the index in %s is not checked against them",
                            self.source_dir, index)
        if index is not None and has_index(index):
            loaded = load_index(index, docs, self.dim, model=model, doc_prompt=prompt)
            log.info("loaded %s index of %d documents from %s", loaded.index_type, len(loaded), index)
            if loaded.index_type != index_type:
                log.warning("index %s is a %s index; serving it as saved (index_type=%s applies only "
                            "to an index built at start-up)", index, loaded.index_type, index_type)
            return CorpusIndex(docs, index=loaded)
        texts = [prompt + d.text_for_model for d in docs]
        lengths = [min(n, self.max_seq_length) for n in self.counter.count(texts)]
        (emb,) = self.encode_parts([Part(texts, lengths, list(range(len(texts))))])  # (n_docs, dim)
        log.info("indexed %d documents from %s", len(docs), corpus)
        built = CorpusIndex(docs, emb, index_type=index_type)
        if index is not None:
            built.index.meta.update(model=model, doc_prompt=prompt)
            try:
                built.index.save(index, overwrite=Path(index).is_dir() and not any(Path(index).iterdir()))
                log.info("saved the %s index to %s: the next start loads it", built.index_type, index)
            except FileExistsError:  # another replica saved it first
                pass
        return built

    def encode_parts(self, parts: Sequence[Part]) -> list[np.ndarray]:
        """Encode a batch of parts; returns one ``(len(part.texts), dim)`` float32 array per part.

        All texts of the batch are sorted by length and run in forward passes whose padded size
        fits ``max_batch_tokens``.
        """
        texts = [t for p in parts for t in p.texts]
        lengths = [n for p in parts for n in p.lengths]
        out = np.empty((len(texts), self.dim), dtype=np.float32)  # (n_texts, dim)
        with self._run_lock:
            for chunk in padded_chunks(lengths, self.max_batch_tokens):
                out[chunk] = self.model.encode([texts[i] for i in chunk], batch_size=len(chunk), prompt="",
                                               convert_to_numpy=True, show_progress_bar=False)
        results, start = [], 0
        for p in parts:
            results.append(out[start:start + len(p.texts)])
            start += len(p.texts)
        return results

    def check(self) -> None:
        """Raise unless the model encodes a short text into a finite vector (the health check)."""
        (rows,) = self.encode_parts([Part(["health check"], [4], [0])])
        if rows.shape != (1, self.dim) or not np.isfinite(rows).all():
            raise RuntimeError(f"the model returned {rows.shape} / non-finite values for a health-check text")

    def search(self, query_vec: np.ndarray, k: int) -> list[Hit]:
        """Top-``k`` corpus documents for a full-dimension query embedding."""
        if self.corpus is None:
            raise RuntimeError("no corpus is served")
        return self.corpus.search(query_vec, k)

    def describe(self) -> dict[str, Any]:
        """Facts the HTTP layer needs: dims, max tokens, normalization, prompts, corpus size."""
        return {"dim": self.dim, "max_seq_length": self.max_seq_length, "normalized": self.normalized,
                "precision": self.precision, "backend": self.backend, "onnx_file": self.onnx_file,
                "converted": self.converted,
                "corpus_size": len(self.corpus) if self.corpus is not None else 0,
                "index_type": self.corpus.index_type if self.corpus is not None else None,
                "max_batch_tokens": self.max_batch_tokens, "prompts": dict(self.prompts),
                "default_prompt_name": self.default_prompt_name, "device": self.device, "gpu_ids": self.gpu_ids}


class RerankerCore:
    """A cross-encoder scoring (query, text) pairs; calls from several threads take turns (one
    tokenizer, and the forward passes would only compete for the same cores).

    Args:
        model_dir: folder that ``sentence_transformers.CrossEncoder`` loads (one output label).
        torch_threads: intra-op threads; 0 keeps torch's default.
        precision: the transformer's compute precision (``auto``, ``fp32``, ``bf16``); the
            scoring head stays fp32.
    """

    def __init__(self, model_dir: str | Path, torch_threads: int = 0, precision: str = "auto"):
        import torch
        from sentence_transformers import CrossEncoder

        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        self.model = CrossEncoder(str(model_dir), device="cpu", trust_remote_code=False,
                                  local_files_only=True)
        self.max_length = int(getattr(self.model, "max_seq_length", None) or 512)
        self.precision = use_precision(self.model, precision)
        self.lock = threading.Lock()

    def too_long(self, query: str, texts: Sequence[str]) -> list[int]:
        """Positions of texts whose (query, text) pair exceeds the model's max tokens."""
        if not texts:
            return []
        with self.lock:
            enc = self.model.tokenizer([query] * len(texts), list(texts), add_special_tokens=True,
                                       truncation=False, return_attention_mask=False,
                                       return_token_type_ids=False, verbose=False)
        return [i for i, ids in enumerate(enc["input_ids"]) if len(ids) > self.max_length]

    def check(self) -> None:
        """Raise unless the cross-encoder scores one pair with a finite number (the health check)."""
        (score,) = self.score("health", ["check"])
        if not np.isfinite(score):
            raise RuntimeError("the cross-encoder returned a non-finite score for a health-check pair")

    def score(self, query: str, texts: Sequence[str], batch_size: int = 32) -> list[float]:
        """Relevance score of each text for ``query`` (the model's activation, e.g. a sigmoid).

        Pairs longer than the model's max tokens are truncated by the cross-encoder.
        """
        if not texts:
            return []
        with self.lock:
            scores = self.model.predict([(query, t) for t in texts], batch_size=batch_size,
                                        convert_to_numpy=True, show_progress_bar=False)
        return [float(s) for s in np.asarray(scores).reshape(len(texts))]
