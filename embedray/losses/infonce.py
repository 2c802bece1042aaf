"""InfoNCE / MultipleNegativesRankingLoss over embeddings, with duplicate masking and opt-in gather."""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embedray.losses.similarity import SIMILARITIES, Similarity, check_choice, similarity_matrix

#: ``gather_fn(t) -> (gathered, start)``: ``t`` concatenated over all workers along dim 0, and the
#: row where this worker's rows begin. ``embedray.training.gather.gather_fn_for_loss()`` makes one.
GatherFn = Callable[[Tensor], tuple[Tensor, int]]


def ids_to_tensor(ids: Sequence[str]) -> Tensor:
    """Hash string ids to a ``(len(ids),)`` int64 tensor, stable across processes and runs.

    Python's ``hash()`` is salted per process, so workers would disagree; blake2b (8 bytes) is not.
    """
    values = [int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little", signed=True)
              for i in ids]
    return torch.tensor(values, dtype=torch.long)


def info_nce(
    q: Tensor,
    d_pos: Tensor,
    d_neg: Tensor | None = None,
    temperature: float = 0.05,
    q_ids: Tensor | None = None,
    pos_ids: Tensor | None = None,
    neg_ids: Tensor | None = None,
    symmetric: bool = False,
    *,
    similarity: Similarity = "cosine",
    rows: slice | None = None,
    hardest: int | None = None,
) -> Tensor:
    """InfoNCE with in-batch and hard negatives; known positives among the candidates are masked.

    Every query is scored against all positives of the batch and all hard negatives of the batch
    (as in sentence-transformers' MultipleNegativesRankingLoss). A candidate that is a known
    positive of the query (same doc id as the positive of any row with the same query id, or of
    the row itself) is set to ``-inf``, so duplicates are not pushed away.

    Args:
        q: ``(B, dim)`` query embeddings (the whole, possibly gathered, batch).
        d_pos: ``(B, dim)`` positives; row ``i`` is the positive of query ``i``.
        d_neg: ``(B, N, dim)`` hard negatives (``(B, dim)`` for one), or ``None``.
        temperature: logits are ``similarity / temperature``.
        q_ids: ``(B,)`` int64 query ids (rows with equal ids share their positives), or ``None``.
        pos_ids: ``(B,)`` int64 doc ids of the positives. Give with ``neg_ids`` or neither; without
            ids, documents are the same when their embeddings are bitwise identical.
        neg_ids: ``(B, N)`` int64 doc ids of the hard negatives.
        symmetric: also add the doc→query term (each positive against all queries), averaged.
        similarity: ``"cosine"`` or ``"dot"``.
        rows: the rows whose loss terms are computed here (this worker's slice of a gathered batch);
            default all rows.
        hardest: keep only each query's ``hardest`` highest-scoring negatives (in-batch and hard
            ones alike) in its softmax; ``None`` keeps every candidate.

    Returns:
        Scalar loss: mean over ``rows`` of the cross-entropy (averaged over the two directions
        when ``symmetric``).
    """
    rows = rows if rows is not None else slice(0, q.shape[0])
    batch = q.shape[0]
    if d_neg is not None and d_neg.dim() == 2:
        d_neg = d_neg.unsqueeze(1)  # (B, 1, dim)
        neg_ids = neg_ids.unsqueeze(1) if neg_ids is not None and neg_ids.dim() == 1 else neg_ids
    _check_shapes(q, d_pos, d_neg, q_ids, pos_ids, neg_ids)
    cands = d_pos if d_neg is None else torch.cat([d_pos, d_neg.flatten(0, 1)])  # (C = B + B*N, dim)
    target = torch.arange(batch, device=q.device)[rows]  # (b,) own positive = column i of cands
    diag = (torch.arange(len(target), device=q.device), target)

    known, cand_ids = known_positives(cands, batch, q_ids, pos_ids, neg_ids, rows)
    pos_ids = cand_ids[:batch]  # (B,)

    logits = similarity_matrix(q[rows], cands, similarity) / temperature  # (b, C)
    if hardest is not None:
        known = known | _beyond_hardest(logits, known, diag, hardest)
    loss = F.cross_entropy(logits.masked_fill(known, float("-inf")), target)
    if not symmetric:
        return loss

    with torch.no_grad():
        # Query j is a right answer for positive i too when it has the same doc or the same query.
        also_right = pos_ids[rows, None] == pos_ids[None, :]  # (b, B)
        if q_ids is not None:
            also_right |= q_ids[rows, None] == q_ids[None, :]
        also_right[diag] = False
    logits_dq = similarity_matrix(d_pos[rows], q, similarity) / temperature  # (b, B)
    loss_dq = F.cross_entropy(logits_dq.masked_fill(also_right, float("-inf")), target)
    return (loss + loss_dq) / 2


def known_positives(cands: Tensor, batch: int, q_ids: Tensor | None, pos_ids: Tensor | None,
                    neg_ids: Tensor | None, rows: slice) -> tuple[Tensor, Tensor]:
    """``(known, cand_ids)``: ``known[i, c]`` is True when candidate ``c`` (of ``[positives,
    flattened negatives]``) is a known positive of query ``rows[i]`` other than its own (column
    ``i``): the same document as the positive of any row with the same query id, or of the row
    itself. ``cand_ids`` are the candidates' ``(C,)`` doc ids."""
    with torch.no_grad():
        cand_ids = _candidate_ids(cands, pos_ids, neg_ids)  # (C,)
        own = cand_ids[:batch]  # (B,)
        if q_ids is None:
            known = own[rows, None] == cand_ids[None, :]  # (b, C)
        else:
            # known[i, c]: (query i, candidate c) is the (query, positive) pair of some row. Pairs are
            # keyed exactly as q * C + c over dense re-numberings of the query and doc ids.
            qd = torch.unique(q_ids, return_inverse=True)[1]  # (B,) in [0, B)
            cd = torch.unique(cand_ids, return_inverse=True)[1]  # (C,) in [0, C)
            n = cands.shape[0]
            known = torch.isin(qd[rows, None] * n + cd[None, :], qd * n + cd[:batch])  # (b, C)
        target = torch.arange(batch, device=cands.device)[rows]
        known[torch.arange(len(target), device=cands.device), target] = False
    return known, cand_ids


def _beyond_hardest(logits: Tensor, known: Tensor, diag: tuple[Tensor, Tensor], k: int) -> Tensor:
    """``(b, C)`` mask of the negatives that are not among each row's ``k`` highest-scoring ones."""
    with torch.no_grad():
        negs = logits.detach().masked_fill(known, float("-inf"))
        negs[diag] = float("-inf")
        k = min(k, negs.shape[1])
        keep = torch.zeros_like(known)
        keep.scatter_(1, negs.topk(k, dim=1).indices, True)
        keep &= torch.isfinite(negs)
        keep[diag] = True
        return ~keep


def _candidate_ids(cands: Tensor, pos_ids: Tensor | None, neg_ids: Tensor | None) -> Tensor:
    """Doc ids of the candidates ``(C,)``: the given ids, else equal for bitwise-equal embeddings."""
    if pos_ids is None:
        # Duplicate texts encoded without dropout give identical rows; with dropout, pass ids.
        return torch.unique(cands.detach(), dim=0, return_inverse=True)[1]
    return pos_ids if neg_ids is None else torch.cat([pos_ids, neg_ids.flatten()])


def _check_shapes(q, d_pos, d_neg, q_ids, pos_ids, neg_ids) -> None:
    batch = q.shape[0]
    if q.dim() != 2 or d_pos.shape != q.shape:
        raise ValueError(f"q and d_pos must both be (batch, dim), got {tuple(q.shape)} and {tuple(d_pos.shape)}")
    if d_neg is not None and (d_neg.dim() != 3 or d_neg.shape[0] != batch or d_neg.shape[2] != q.shape[1]):
        raise ValueError(f"d_neg must be (batch={batch}, N, dim={q.shape[1]}), got {tuple(d_neg.shape)}")
    if neg_ids is not None and d_neg is None:
        raise ValueError("neg_ids given without d_neg")
    if d_neg is not None and (pos_ids is None) != (neg_ids is None):
        raise ValueError("with hard negatives give both pos_ids and neg_ids, or neither")
    for name, ids, shape in (("q_ids", q_ids, (batch,)), ("pos_ids", pos_ids, (batch,)),
                             ("neg_ids", neg_ids, None if d_neg is None else tuple(d_neg.shape[:2]))):
        if ids is not None and (tuple(ids.shape) != shape or ids.dtype != torch.long):
            raise ValueError(f"{name} must be an int64 tensor of shape {shape}, got {ids.dtype} {tuple(ids.shape)}")


class InfoNCELoss(nn.Module):
    """InfoNCE / MultipleNegativesRankingLoss on embeddings, with in-batch and hard negatives.

    For each query, the matched positive must score higher than every other positive in the
    batch and every hard negative in the batch. The training loop encodes the texts and passes
    embeddings; the loss never sees the model.

    Args:
        temperature: softmax temperature (default 0.05). Give this or ``scale``, not both.
        scale: ``1 / temperature``, as sentence-transformers spells it (``scale=20`` ==
            ``temperature=0.05``).
        symmetric: add the doc→query term (each positive against all queries), averaged with the
            query→doc term.
        similarity: ``"cosine"`` (default) or ``"dot"``.
        hardest_negatives: keep only each query's k highest-scoring negatives (in-batch and hard
            ones, after masking known positives) in its softmax: hardest in-batch negative
            selection; ``None`` (default) keeps every candidate.
        gather_fn: opt-in cross-worker negatives. ``None`` (default): only this worker's batch. Pass
            ``embedray.training.gather.gather_fn_for_loss()`` under DDP to score local queries
            against the documents of all workers; see that module for the loss-scaling convention.
            Every worker must then pass the same set of inputs (ids or not, negatives or not).

    Inputs:
        +------------------------------+----------------------------------------------------+
        | argument                     | shape                                              |
        +==============================+====================================================+
        | q, d_pos                     | ``(B, dim)``                                       |
        | d_neg (optional)             | ``(B, N, dim)`` or ``(B, dim)``                    |
        | q_ids, pos_ids (optional)    | ``(B,)`` int64, e.g. from :func:`ids_to_tensor`    |
        | neg_ids (optional)           | ``(B, N)`` int64                                   |
        +------------------------------+----------------------------------------------------+

        A candidate with the same doc id as a known positive of the query is masked out; rows with
        the same ``q_ids`` share their positives. Without ids, bitwise-identical embeddings count as
        the same document (reliable only without dropout: pass ids in training).

    Example:
        ::

            loss_fn = InfoNCELoss(temperature=0.05)
            q, d_pos = model(queries), model(positives)               # (B, dim) each
            d_neg = model(negatives).view(B, N, -1)                   # (B, N, dim)
            loss = loss_fn(q, d_pos, d_neg,
                           pos_ids=ids_to_tensor(pos_doc_ids),
                           neg_ids=ids_to_tensor(neg_doc_ids_flat).view(B, N))
            loss.backward()
    """

    def __init__(
        self,
        temperature: float | None = None,
        *,
        scale: float | None = None,
        symmetric: bool = False,
        similarity: Similarity = "cosine",
        gather_fn: GatherFn | None = None,
        hardest_negatives: int | None = None,
    ) -> None:
        super().__init__()
        if hardest_negatives is not None and hardest_negatives < 1:
            raise ValueError(f"hardest_negatives must be >= 1 or None, got {hardest_negatives}")
        self.hardest_negatives = hardest_negatives
        if temperature is not None and scale is not None:
            raise ValueError("give temperature or scale (= 1 / temperature), not both")
        temperature = 1.0 / scale if scale is not None else (0.05 if temperature is None else temperature)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        check_choice(similarity, SIMILARITIES, "similarity")
        self.temperature = float(temperature)
        self.symmetric = symmetric
        self.similarity = similarity
        self.gather_fn = gather_fn

    @property
    def scale(self) -> float:
        """``1 / temperature``."""
        return 1.0 / self.temperature

    def forward(
        self,
        q: Tensor,
        d_pos: Tensor,
        d_neg: Tensor | None = None,
        q_ids: Tensor | None = None,
        pos_ids: Tensor | None = None,
        neg_ids: Tensor | None = None,
    ) -> Tensor:
        """Return the scalar loss for this worker's queries (see the class docstring for shapes)."""
        rows = None
        if self.gather_fn is not None:
            local = q.shape[0]
            q, start = self.gather_fn(q)
            rows = slice(start, start + local)
            d_pos, d_neg, q_ids, pos_ids, neg_ids = (
                None if t is None else self.gather_fn(t)[0] for t in (d_pos, d_neg, q_ids, pos_ids, neg_ids))
        return info_nce(q, d_pos, d_neg, self.temperature, q_ids, pos_ids, neg_ids, self.symmetric,
                        similarity=self.similarity, rows=rows, hardest=self.hardest_negatives)

    def batch_loss(self, q: Tensor, d_pos: Tensor, d_neg: Tensor | None = None, *, q_ids: Tensor | None = None,
                   pos_ids: Tensor | None = None, neg_ids: Tensor | None = None) -> Tensor:
        """The loss of one training batch (queries, positives, ``(B, N, dim)`` hard negatives and
        their ids), the form every task loss takes in the training loop."""
        return self(q, d_pos, d_neg, q_ids, pos_ids, neg_ids)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, symmetric={self.symmetric}, similarity={self.similarity!r}, "
                f"gather={self.gather_fn is not None}, hardest_negatives={self.hardest_negatives}")
