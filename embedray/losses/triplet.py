"""Triplet margin loss over (anchor, positive, negative) embeddings."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embedray.losses.infonce import known_positives

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
        hardest_negatives: in :meth:`batch_loss`, each query's negatives are its k closest
            documents of the whole batch (other rows' positives and every hard negative, known
            positives excluded): batch-hard triplets. ``None`` (default): its own hard negatives.

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

    def __init__(self, margin: float = 0.2, distance: Distance = "cosine", hardest_negatives: int | None = None) -> None:
        super().__init__()
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        if hardest_negatives is not None and hardest_negatives < 1:
            raise ValueError(f"hardest_negatives must be >= 1 or None, got {hardest_negatives}")
        self.hardest_negatives = hardest_negatives
        check_choice(distance, DISTANCES, "distance")
        self.margin = float(margin)
        self.distance = distance

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        """Return the scalar loss."""
        if anchor.shape != positive.shape or negative.shape[0] != anchor.shape[0]:
            raise ValueError(f"anchor/positive must be (B, dim) and negative (B, [N,] dim); got "
                             f"{tuple(anchor.shape)}, {tuple(positive.shape)}, {tuple(negative.shape)}")
        return triplet(anchor, positive, negative, self.margin, self.distance)

    def batch_loss(self, q: Tensor, d_pos: Tensor, d_neg: Tensor | None = None, *, q_ids: Tensor | None = None,
                   pos_ids: Tensor | None = None, neg_ids: Tensor | None = None) -> Tensor:
        """A training batch: each query is the anchor, its positive the positive, and each of its
        hard negatives a negative; with ``hardest_negatives``, its closest documents of the batch."""
        if self.hardest_negatives is not None:
            return self(q, d_pos, self._batch_hard(q, d_pos, d_neg, q_ids, pos_ids, neg_ids))
        if d_neg is None or d_neg.shape[1] == 0:
            raise ValueError("loss.name: triplet needs a negative per query: set train.num_negatives >= 1")
        return self(q, d_pos, d_neg)

    def _batch_hard(self, q, d_pos, d_neg, q_ids, pos_ids, neg_ids) -> Tensor:
        """``(B, k, dim)``: each query's k closest non-positive documents of the batch."""
        b = q.shape[0]
        has_negs = d_neg is not None and d_neg.shape[1] > 0
        cands = torch.cat([d_pos, d_neg.flatten(0, 1)]) if has_negs else d_pos  # (C, dim)
        known, _ = known_positives(cands, b, q_ids, pos_ids, neg_ids if has_negs else None, slice(0, b))
        with torch.no_grad():
            dist = pairwise_distance(q.unsqueeze(1), cands.unsqueeze(0), self.distance)  # (B, C)
            dist = dist.masked_fill(known, float("inf"))
            dist[torch.arange(b), torch.arange(b)] = float("inf")  # its own positive
            k = min(self.hardest_negatives, cands.shape[0] - 1)
            if k < 1:
                raise ValueError("loss.hardest_negatives: the batch holds no other document")
            idx = dist.topk(k, dim=1, largest=False).indices  # (B, k)
        return cands[idx]  # (B, k, dim), with gradients

    def extra_repr(self) -> str:
        return f"margin={self.margin}, distance={self.distance!r}, hardest_negatives={self.hardest_negatives}"
