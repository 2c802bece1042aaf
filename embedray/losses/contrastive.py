"""Pairwise contrastive loss (Hadsell et al., 2006) over two embeddings and a 1/0 label."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embedray.losses.similarity import check_choice, pairwise_distance

CONTRASTIVE_DISTANCES = ("cosine", "euclidean")


def contrastive(a: Tensor, b: Tensor, labels: Tensor, margin: float, distance: str = "cosine") -> Tensor:
    """``mean(0.5 * (y * d^2 + (1 - y) * relu(margin - d)^2))`` with ``d = dist(a, b)``.

    Args:
        a: ``(B, dim)``.
        b: ``(B, dim)``.
        labels: ``(B,)``, 1 for a similar pair, 0 for a dissimilar one.
        margin: dissimilar pairs are pushed until they are at least ``margin`` apart.
        distance: ``"cosine"`` (1 - cos) or ``"euclidean"``.

    Returns:
        Scalar loss.
    """
    d = pairwise_distance(a, b, distance)  # (B,)
    y = labels.to(d.dtype)  # (B,)
    return (0.5 * (y * d.pow(2) + (1 - y) * F.relu(margin - d).pow(2))).mean()


class ContrastiveLoss(nn.Module):
    """Contrastive loss on pairs labelled 1 (similar) or 0 (dissimilar).

    Similar pairs are pulled together (squared distance); dissimilar pairs are pushed apart until
    their distance reaches ``margin``. Same formula as sentence-transformers' ``ContrastiveLoss``
    (cosine distance, margin 0.5, mean over the batch), on embeddings.

    Args:
        margin: minimum distance for dissimilar pairs (default 0.5).
        distance: ``"cosine"`` (default, ``1 - cos``) or ``"euclidean"``.

    Inputs:
        +----------------------+---------------------------------------+
        | argument             | shape                                 |
        +======================+=======================================+
        | a, b                 | ``(B, dim)``                          |
        | labels               | ``(B,)``: 1 if similar, 0 if not      |
        +----------------------+---------------------------------------+

    Example:
        ::

            loss_fn = ContrastiveLoss(margin=0.5)
            loss = loss_fn(model(texts_a), model(texts_b), torch.tensor([1, 0, 1]))
            loss.backward()
    """

    def __init__(self, margin: float = 0.5, distance: str = "cosine") -> None:
        super().__init__()
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        check_choice(distance, CONTRASTIVE_DISTANCES, "distance")
        self.margin = float(margin)
        self.distance = distance

    def forward(self, a: Tensor, b: Tensor, labels: Tensor) -> Tensor:
        """Return the scalar loss."""
        if a.shape != b.shape or labels.shape != a.shape[:1]:
            raise ValueError(f"a and b must be (B, dim) and labels (B,); got {tuple(a.shape)}, "
                             f"{tuple(b.shape)}, {tuple(labels.shape)}")
        if ((labels != 0) & (labels != 1)).any():
            raise ValueError("labels must be 0 or 1")
        return contrastive(a, b, labels, self.margin, self.distance)

    def batch_loss(self, q: Tensor, d_pos: Tensor, d_neg: Tensor | None = None, **ids) -> Tensor:
        """A training batch as labelled pairs: (query, positive) similar, (query, each of its hard
        negatives) dissimilar."""
        if d_neg is None or d_neg.shape[1] == 0:
            raise ValueError("loss.name: contrastive needs dissimilar pairs: set train.num_negatives >= 1")
        b, n = d_neg.shape[:2]
        a = torch.cat([q, q.repeat_interleave(n, dim=0)])                 # (B + B*N, dim)
        other = torch.cat([d_pos, d_neg.reshape(b * n, -1)])               # (B + B*N, dim)
        labels = torch.cat([q.new_ones(b), q.new_zeros(b * n)])
        return self(a, other, labels)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, distance={self.distance!r}"
