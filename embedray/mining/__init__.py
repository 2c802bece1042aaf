"""Hard-negative mining: embedding cache, FAISS index, negative selection, cross-encoder rescoring.

- :mod:`embedray.mining.config` — ``MiningConfig`` and ``CrossEncoderConfig``.
- :mod:`embedray.mining.cache` — embedding / score cache keyed by (weights fingerprint, text hash).
- :mod:`embedray.mining.index` — ``VectorIndex`` (FAISS) and ``IndexStore`` (versioned publish).
- :mod:`embedray.mining.select` — ``select_negatives``: rank window, margins, NV ratio, sampling.
- :mod:`embedray.mining.rescore` — cross-encoder ``rescore``, ``denoise``, ``rescore_and_denoise``.
- :mod:`embedray.mining.pool` — ``NegativePool``, the versioned pool training reads.
- :mod:`embedray.mining.pipeline` — ``mine_negatives`` and the whole ``mine`` pipeline.
"""
