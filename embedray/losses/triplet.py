"""Triplet margin loss over (anchor, positive, negative) embeddings."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from embedray.losses.similarity import DISTANCES, Distance, check_choice, pairwise_distance


def triplet(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float, distance: Distance) -> Tensor:
    """Mean of ``relu(dist(a, p) - dist(a, n) + margin)`` over all (row, negative) pairs.

    Args:
        anchor: ``(B, dim)``.
        positive: ``(B, dim)``.
        negative: ``(B, dim)`` or ``(B, N, dim)`` (each row's N negatives).
        margin: how much farther than the positive each negative must be.
        distance: ``"cosine"`` (1 - cos), ``"euclidean"`` or ``"dot"`` (-a·b).

    Returns:
        Scalar loss.
    """
    if negative.dim() == 2:
        negative = negative.unsqueeze(1)  # (B, 1, dim)
    d_pos = pairwise_distance(anchor, positive, distance)  # (B,)
    d_neg = pairwise_distance(anchor.unsqueeze(1), negative, distance)  # (B, N)
    return F.relu(d_pos.unsqueeze(1) - d_neg + margin).mean()


class TripletLoss(nn.Module):
    """Triplet loss: the anchor must be closer to its positive than to its negative by ``margin``.

    ``loss = mean(max(0, dist(anchor, positive) - dist(anchor, negative) + margin))``, as in
    sentence-transformers' ``TripletLoss`` (Schroff et al., 2015), on embeddings.

    Args:
        margin: required gap between the distances (default 0.2, suited to the cosine distance of
            normalised embeddings; sentence-transformers uses 5 with unnormalised euclidean).
        distance: ``"cosine"`` (default, ``1 - cos``), ``"euclidean"`` or ``"dot"`` (``-a·b``).

    Inputs:
        +----------------------+------------------------------------------+
        | argument             | shape                                    |
        +======================+==========================================+
        | anchor, positive     | ``(B, dim)``                             |
        | negative             | ``(B, dim)`` or ``(B, N, dim)``          |
        +----------------------+------------------------------------------+

    Example:
        ::

            loss_fn = TripletLoss(margin=0.2, distance="cosine")
            loss = loss_fn(model(anchors), model(positives), model(negatives))
            loss.backward()
    """

    def __init__(self, margin: float = 0.2, distance: Distance = "cosine") -> None:
        super().__init__()
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        check_choice(distance, DISTANCES, "distance")
        self.margin = float(margin)
        self.distance = distance

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        """Return the scalar loss."""
        if anchor.shape != positive.shape or negative.shape[0] != anchor.shape[0]:
            raise ValueError(f"anchor/positive must be (B, dim) and negative (B, [N,] dim); got "
                             f"{tuple(anchor.shape)}, {tuple(positive.shape)}, {tuple(negative.shape)}")
        return triplet(anchor, positive, negative, self.margin, self.distance)

    def batch_loss(self, q: Tensor, d_pos: Tensor, d_neg: Tensor | None = None, **ids) -> Tensor:
        """A training batch: each query is the anchor, its positive the positive, and each of its
        hard negatives a negative (ids are not needed: every triplet names its own negatives)."""
        if d_neg is None or d_neg.shape[1] == 0:
            raise ValueError("loss.name: triplet needs a negative per query: set train.num_negatives >= 1")
        return self(q, d_pos, d_neg)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, distance={self.distance!r}"
