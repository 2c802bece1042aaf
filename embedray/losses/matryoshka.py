"""Matryoshka representation learning: apply a loss at several truncated embedding sizes."""
from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


def truncate(x: Tensor, dim: int) -> Tensor:
    """Keep the first ``dim`` features of ``x (..., full_dim)`` and L2-normalise: ``(..., dim)``."""
    return F.normalize(x[..., :dim], dim=-1)


class MatryoshkaLoss(nn.Module):
    """Weighted sum of a base loss evaluated on truncated, re-normalised embeddings (Kusupati et al., 2022).

    ``loss = sum_k weights[k] * base_loss(truncate(args, dims[k]))``. The trained model's first
    ``dims[k]`` features are then usable on their own (smaller index, faster search).

    Which arguments are truncated: every floating-point tensor argument (positional or keyword)
    with at least 2 dims whose last dim equals the full embedding size (the last dim of the first
    positional argument). Ids, labels and teacher scores pass through unchanged; a score tensor
    whose last dim happened to equal the embedding size would be truncated too, so do not wrap
    distillation losses in this class.

    Args:
        base_loss: any loss here whose ``forward`` takes embeddings first (InfoNCE, triplet,
            contrastive, SimCSE).
        dims: embedding sizes to train, e.g. ``[384, 192, 96, 48]``; each must be <= the full size.
            Include the full size to also train the full embedding.
        weights: one weight per dim (default all 1).

    Inputs:
        Exactly those of ``base_loss``.

    Example:
        ::

            loss_fn = MatryoshkaLoss(InfoNCELoss(temperature=0.05), dims=[384, 192, 96, 48])
            loss = loss_fn(q, d_pos, d_neg, pos_ids=pos_ids, neg_ids=neg_ids)   # q: (B, 384)
            loss.backward()
    """

    def __init__(self, base_loss: nn.Module, dims: Sequence[int] = (384, 192, 96, 48),
                 weights: Sequence[float] | None = None) -> None:
        super().__init__()
        dims = [int(d) for d in dims]
        if not dims or any(d <= 0 for d in dims) or len(set(dims)) != len(dims):
            raise ValueError(f"dims must be distinct positive ints, got {dims}")
        weights = [1.0] * len(dims) if weights is None else [float(w) for w in weights]
        if len(weights) != len(dims) or any(w < 0 for w in weights):
            raise ValueError(f"weights must be {len(dims)} non-negative numbers (one per dim), got {weights}")
        self.base_loss = base_loss
        self.dims = dims
        self.weights = weights

    def forward(self, *args, **kwargs) -> Tensor:
        """Return ``sum_k weights[k] * base_loss(*truncated_args, **truncated_kwargs)``."""
        if not args or not isinstance(args[0], Tensor):
            raise ValueError("MatryoshkaLoss needs the embeddings as the first positional argument")
        full = args[0].shape[-1]
        if max(self.dims) > full:
            raise ValueError(f"matryoshka dims {self.dims} exceed the embedding size {full}")

        def is_embedding(x) -> bool:
            return isinstance(x, Tensor) and x.is_floating_point() and x.dim() >= 2 and x.shape[-1] == full

        total = 0.0
        for dim, weight in zip(self.dims, self.weights):
            cut_args = [truncate(a, dim) if is_embedding(a) else a for a in args]
            cut_kwargs = {k: truncate(v, dim) if is_embedding(v) else v for k, v in kwargs.items()}
            total = total + weight * self.base_loss(*cut_args, **cut_kwargs)
        return total

    def batch_loss(self, q: Tensor, d_pos: Tensor, d_neg: Tensor | None = None, **ids) -> Tensor:
        """The base loss's :meth:`batch_loss` at each truncated size."""
        if max(self.dims) > q.shape[-1]:
            raise ValueError(f"matryoshka dims {self.dims} exceed the embedding size {q.shape[-1]}")
        return sum(weight * self.base_loss.batch_loss(truncate(q, dim), truncate(d_pos, dim),
                                                      None if d_neg is None else truncate(d_neg, dim), **ids)
                   for dim, weight in zip(self.dims, self.weights))

    def extra_repr(self) -> str:
        return f"dims={self.dims}, weights={self.weights}"


class MatryoshkaScoreLoss(MatryoshkaLoss):
    """A score-distillation loss at several truncated sizes of the student's embeddings, each
    against the same teacher scores: the small prefixes learn the teacher's ranking as well.

    ``loss = sum_k weights[k] * score_loss(truncate(q), truncate(d_pos), truncate(d_neg), teacher_scores)``.
    Only the student's embeddings are cut; the teacher's scores (of any shape) pass unchanged.

    Args:
        base_loss: ``KLDistillLoss``, ``MarginMSELoss`` or ``ScoreMSELoss``.
        dims, weights: as for :class:`MatryoshkaLoss`.
    """

    def forward(self, q: Tensor, d_pos: Tensor, d_neg: Tensor | None, teacher_scores: Tensor) -> Tensor:
        if max(self.dims) > q.shape[-1]:
            raise ValueError(f"matryoshka dims {self.dims} exceed the embedding size {q.shape[-1]}")
        total = 0.0
        for dim, weight in zip(self.dims, self.weights):
            cut = [truncate(q, dim), truncate(d_pos, dim), None if d_neg is None else truncate(d_neg, dim)]
            total = total + weight * self.base_loss(*cut, teacher_scores)
        return total


class MatryoshkaEmbedDistillLoss(MatryoshkaLoss):
    """Embedding distillation at several sizes, for a student of the teacher's size: the
    student's first ``k`` features (renormalised) copy the teacher's first ``k`` (renormalised).

    ``loss = sum_k weights[k] * mean_i || truncate(s_i, k) - truncate(t_i, k) ||^2``. A teacher's
    prefixes often rank well on their own; this hands that to the student's short embeddings.

    Args:
        dims, weights: as for :class:`MatryoshkaLoss`.
    """

    def __init__(self, dims, weights=None) -> None:
        super().__init__(nn.Identity(), dims, weights)

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        if student.shape != teacher.shape:
            raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} embeddings "
                             "must have one shape (a student of the teacher's size)")
        if max(self.dims) > student.shape[-1]:
            raise ValueError(f"matryoshka dims {self.dims} exceed the embedding size {student.shape[-1]}")
        teacher = teacher.detach().to(student.dtype)
        total = 0.0
        for dim, weight in zip(self.dims, self.weights):
            total = total + weight * (truncate(student, dim) - truncate(teacher, dim)).pow(2).sum(-1).mean()
        return total
