"""embedray's own cross-encoder as a model: a bundled backbone with a 1-logit head, loaded
offline. Training it on mined negatives is :mod:`embedray.training.cross_encoder`'s.

A saved folder is what ``sentence_transformers.CrossEncoder(path)`` loads (num_labels=1), plus
``embedray.json`` with the training settings (and reranker metrics once evaluated).
"""
from __future__ import annotations

import os


def load_cross_encoder(name_or_path: str | os.PathLike, max_length: int | None = 256,
                       device: str | None = None, num_labels: int | None = None, precision: str = "auto"):
    """Load a cross-encoder folder (or put a fresh head on a bundled backbone), offline.

    Args:
        name_or_path: a folder saved by :func:`embedray.training.cross_encoder.train_cross_encoder`, any CrossEncoder folder, or
            a bundled name / bi-encoder folder (then the head is new and untrained).
        max_length: max tokens of a (query, document) pair.
        device: torch device; ``None`` lets sentence-transformers pick.
        num_labels: force a head size (1 for a fresh scoring head).
        precision: the transformer's compute precision when scoring (``auto``, ``fp32``,
            ``bf16``; the scoring head stays fp32), see :mod:`embedray.models.precision`.
    """
    from sentence_transformers import CrossEncoder

    from embedray.models.bundled import resolve_model
    from embedray.models.precision import use_precision

    path = resolve_model(name_or_path)
    model = CrossEncoder(str(path), num_labels=num_labels, max_length=max_length, device=device,
                         trust_remote_code=False, local_files_only=True)
    use_precision(model, precision)
    return model
