"""Score distillation by MSE: the student's scores copy the teacher's over each query's candidates."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from embedray.losses.similarity import SIMILARITIES, Similarity, candidate_scores, check_choice


def check_teacher_scores(student: Tensor, teacher: Tensor) -> None:
    """Raise a clear error when teacher scores do not line up with the candidate list."""
    if teacher.shape != student.shape:
        raise ValueError(f"teacher_scores must be (batch, 1 + N) = {tuple(student.shape)} "
                         f"(column 0 the positive, then the negatives), got {tuple(teacher.shape)}")


class ScoreMSELoss(nn.Module):
    """MSE between student and teacher similarity scores over each query's candidate list.

    The candidate list of query ``i`` is ``[positive_i, negative_i1, ..., negative_iN]`` (no
    in-batch candidates). The teacher (e.g. a cross-encoder or a larger bi-encoder) scored the same
    pairs beforehand. Student score = ``scale * sim(q, d)``.

    Args:
        similarity: ``"dot"`` (default, as in sentence-transformers' ``MarginMSELoss``) or ``"cosine"``.
        scale: multiplies the student scores, to bring them to the teacher's range (normalised
            embeddings give scores in [-1, 1], cross-encoder logits are wider).

    Inputs:
        +----------------------+-----------------------------------------------------------+
        | argument             | shape                                                     |
        +======================+===========================================================+
        | q, d_pos             | ``(B, dim)``                                              |
        | d_neg                | ``(B, N, dim)``, ``(B, dim)`` or ``None``                 |
        | teacher_scores       | ``(B, 1 + N)``: column 0 the positive, then the negatives |
        +----------------------+-----------------------------------------------------------+

    Example:
        ::

            loss_fn = ScoreMSELoss(scale=10.0)
            loss = loss_fn(q, d_pos, d_neg, teacher_scores)   # teacher_scores: (B, 1 + N)
            loss.backward()
    """

    def __init__(self, similarity: Similarity = "dot", scale: float = 1.0) -> None:
        super().__init__()
        check_choice(similarity, SIMILARITIES, "similarity")
        self.similarity = similarity
        self.scale = float(scale)

    def forward(self, q: Tensor, d_pos: Tensor, d_neg: Tensor | None, teacher_scores: Tensor) -> Tensor:
        """Return the scalar loss (mean over queries and candidates)."""
        student = self.scale * candidate_scores(q, d_pos, d_neg, self.similarity)  # (B, 1 + N)
        check_teacher_scores(student, teacher_scores)
        return F.mse_loss(student, teacher_scores.detach().to(student.dtype))

    def extra_repr(self) -> str:
        return f"similarity={self.similarity!r}, scale={self.scale}"
