"""Margin-MSE distillation (Hofstätter et al., 2020): match the teacher's positive-negative margins."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from embedray.losses.score_mse import check_teacher_scores
from embedray.losses.similarity import SIMILARITIES, Similarity, candidate_scores, check_choice


def margins(scores: Tensor) -> Tensor:
    """``(B, 1 + N)`` scores (column 0 the positive) -> ``(B, N)`` margins ``s(q, p) - s(q, n)``."""
    return scores[:, :1] - scores[:, 1:]


class MarginMSELoss(nn.Module):
    """MSE between student and teacher margins ``s(q, p) - s(q, n)``, one per hard negative.

    Only the gaps matter, so the teacher's scores (typically cross-encoder logits) and the
    student's similarities may live on different scales up to a shift. Same formula as
    sentence-transformers' ``MarginMSELoss``, on embeddings.

    Args:
        similarity: ``"dot"`` (default) or ``"cosine"``.
        scale: multiplies the student scores before taking margins.

    Inputs:
        +----------------------+-----------------------------------------------------------+
        | argument             | shape                                                     |
        +======================+===========================================================+
        | q, d_pos             | ``(B, dim)``                                              |
        | d_neg                | ``(B, N, dim)`` or ``(B, dim)``                           |
        | teacher_scores       | ``(B, 1 + N)``: column 0 the positive, then the negatives |
        +----------------------+-----------------------------------------------------------+

    Example:
        ::

            loss_fn = MarginMSELoss()
            ce_scores = cross_encoder.predict(pairs).reshape(B, 1 + N)
            loss = loss_fn(q, d_pos, d_neg, torch.as_tensor(ce_scores))
            loss.backward()
    """

    def __init__(self, similarity: Similarity = "dot", scale: float = 1.0) -> None:
        super().__init__()
        check_choice(similarity, SIMILARITIES, "similarity")
        self.similarity = similarity
        self.scale = float(scale)

    def forward(self, q: Tensor, d_pos: Tensor, d_neg: Tensor, teacher_scores: Tensor) -> Tensor:
        """Return the scalar loss (mean over queries and negatives)."""
        if d_neg is None:
            raise ValueError("MarginMSELoss needs hard negatives (d_neg)")
        student = self.scale * candidate_scores(q, d_pos, d_neg, self.similarity)  # (B, 1 + N)
        check_teacher_scores(student, teacher_scores)
        teacher = teacher_scores.detach().to(student.dtype)
        return F.mse_loss(margins(student), margins(teacher))  # over (B, N)

    def extra_repr(self) -> str:
        return f"similarity={self.similarity!r}, scale={self.scale}"
