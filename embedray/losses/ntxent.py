"""NT-Xent (SimCLR, Chen et al., 2020): two views of each text, every other embedding a negative."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embedray.losses.similarity import SIMILARITIES, Similarity, check_choice, similarity_matrix


def nt_xent(a: Tensor, b: Tensor, temperature: float, a_ids: Tensor | None = None, b_ids: Tensor | None = None,
            similarity: Similarity = "cosine") -> Tensor:
    """Normalised temperature-scaled cross-entropy over the ``2B`` embeddings of two views.

    Row ``i`` of ``a`` and row ``i`` of ``b`` are a positive pair; each of the ``2B`` embeddings
    is scored against the ``2B - 1`` others (both views: same-view rows are negatives too, unlike
    InfoNCE), and the loss is the mean cross-entropy over all ``2B`` anchors. Rows that share an
    id (``a_ids`` for view 1, ``b_ids`` for view 2: duplicates in the batch) are not negatives
    of each other.

    Args:
        a, b: ``(B, dim)`` the two views.
        temperature: logits are ``similarity / temperature``.
        a_ids, b_ids: ``(B,)`` int64 ids of the rows' texts, or None.
        similarity: ``"cosine"`` or ``"dot"``.
    """
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"the two views must both be (B, dim), got {tuple(a.shape)} and {tuple(b.shape)}")
    n = a.shape[0]
    z = torch.cat([a, b])  # (2B, dim)
    logits = similarity_matrix(z, z, similarity) / temperature  # (2B, 2B)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(a.device)
    with torch.no_grad():
        same = torch.eye(n, dtype=torch.bool, device=a.device)
        for ids in (a_ids, b_ids):
            if ids is not None:
                same |= ids[:, None] == ids[None, :]
        mask = same.repeat(2, 2)  # a duplicate in either view is the same text in both
        mask[torch.arange(2 * n), target] = False  # each anchor's own positive stays
        mask |= torch.eye(2 * n, dtype=torch.bool, device=a.device)  # never itself
    return F.cross_entropy(logits.masked_fill(mask, float("-inf")), target)


class NTXentLoss(nn.Module):
    """SimCLR's NT-Xent on embeddings: the query and positive of each training row are two views
    of one item (e.g. two span-corrupted copies of a passage, or two dropout passes of a text).

    Args:
        temperature: softmax temperature (SimCLR uses 0.1-0.5 on images; 0.05 suits
            sentence embeddings, as in SimCSE).
        similarity: ``"cosine"`` (default) or ``"dot"``.

    Example:
        ::

            loss_fn = NTXentLoss(temperature=0.05)
            loss = loss_fn(model(view1_texts), model(view2_texts))
            loss.backward()
    """

    def __init__(self, temperature: float = 0.05, *, similarity: Similarity = "cosine") -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        check_choice(similarity, SIMILARITIES, "similarity")
        self.temperature, self.similarity = float(temperature), similarity

    def forward(self, a: Tensor, b: Tensor, a_ids: Tensor | None = None, b_ids: Tensor | None = None) -> Tensor:
        """Return the scalar loss."""
        return nt_xent(a, b, self.temperature, a_ids, b_ids, self.similarity)

    def batch_loss(self, q: Tensor, d_pos: Tensor, d_neg: Tensor | None = None, *, q_ids: Tensor | None = None,
                   pos_ids: Tensor | None = None, neg_ids: Tensor | None = None) -> Tensor:
        """A training batch: query and positive are the two views (hard negatives are not part
        of NT-Xent and are ignored)."""
        return self(q, d_pos, q_ids, pos_ids)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, similarity={self.similarity!r}"
