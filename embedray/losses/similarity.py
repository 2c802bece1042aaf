"""Similarity and distance functions shared by the losses (pure tensor math, no state)."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Similarity = Literal["cosine", "dot"]
SIMILARITIES = ("cosine", "dot")
Distance = Literal["cosine", "euclidean", "dot"]
DISTANCES = ("cosine", "euclidean", "dot")


def check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    """Raise ``ValueError`` naming the valid choices when ``value`` is not one of them."""
    if value not in choices:
        raise ValueError(f"{what} must be one of {list(choices)}, got {value!r}")


def similarity_matrix(a: Tensor, b: Tensor, kind: Similarity = "cosine") -> Tensor:
    """All-pairs similarity.

    Args:
        a: ``(n, dim)`` embeddings.
        b: ``(m, dim)`` embeddings.
        kind: ``"cosine"`` (L2-normalise both, then dot) or ``"dot"``.

    Returns:
        ``(n, m)`` similarities.
    """
    if kind == "cosine":
        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    return a @ b.T  # (n, m)


def candidate_scores(q: Tensor, d_pos: Tensor, d_neg: Tensor | None, kind: Similarity = "cosine") -> Tensor:
    """Score each query against its own candidate list ``[positive, negative_1, ..., negative_N]``.

    Args:
        q: ``(batch, dim)`` query embeddings.
        d_pos: ``(batch, dim)`` positive document embeddings.
        d_neg: ``(batch, N, dim)`` (or ``(batch, dim)`` for one) hard negatives, or ``None``.
        kind: ``"cosine"`` or ``"dot"``.

    Returns:
        ``(batch, 1 + N)`` scores; column 0 is the positive.
    """
    cands = d_pos.unsqueeze(1)  # (batch, 1, dim)
    if d_neg is not None:
        d_neg = d_neg.unsqueeze(1) if d_neg.dim() == 2 else d_neg
        cands = torch.cat([cands, d_neg], dim=1)  # (batch, 1 + N, dim)
    if kind == "cosine":
        q, cands = F.normalize(q, dim=-1), F.normalize(cands, dim=-1)
    return torch.einsum("bd,bkd->bk", q, cands)  # (batch, 1 + N)


def pairwise_distance(a: Tensor, b: Tensor, kind: Distance = "cosine") -> Tensor:
    """Row-wise distance between matching rows (broadcasts over leading dims).

    Args:
        a: ``(..., dim)`` embeddings.
        b: ``(..., dim)`` embeddings, broadcastable against ``a``.
        kind: ``"cosine"`` (``1 - cos``), ``"euclidean"`` (L2) or ``"dot"`` (``-a·b``).

    Returns:
        ``(...)`` distances.
    """
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(a, b, dim=-1)
    if kind == "euclidean":
        # (a - b).norm has an undefined gradient at 0; the epsilon keeps identical rows finite.
        return ((a - b).pow(2).sum(-1) + 1e-12).sqrt()
    return -(a * b).sum(-1)
