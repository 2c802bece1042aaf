"""KL distillation: the student's softmax over each query's candidates copies the teacher's."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embedray.losses.score_mse import check_teacher_scores
from embedray.losses.similarity import (SIMILARITIES, Similarity, candidate_scores, check_choice,
                                        similarity_matrix)


def kl_distill(student_scores: Tensor, teacher_scores: Tensor, student_temperature: float,
               teacher_temperature: float) -> Tensor:
    """``KL(softmax(teacher / T_t) || softmax(student / T_s))`` per query, averaged over queries.

    Args:
        student_scores: ``(B, K)`` student similarities.
        teacher_scores: ``(B, K)`` teacher scores of the same candidates (no gradient).
        student_temperature: ``T_s``.
        teacher_temperature: ``T_t``.

    Returns:
        Scalar loss (>= 0; 0 when the two distributions agree).
    """
    log_p_student = F.log_softmax(student_scores / student_temperature, dim=-1)  # (B, K)
    log_p_teacher = F.log_softmax(teacher_scores.detach() / teacher_temperature, dim=-1)  # (B, K)
    return F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")


class KLDistillLoss(nn.Module):
    """KL divergence from the teacher's to the student's distribution over each query's candidates.

    Candidates of query ``i``: ``[positive_i, negative_i1, ..., negative_iN]``. The teacher's scores
    (cross-encoder logits or teacher bi-encoder similarities) are turned into a softmax with
    temperature ``T_t``; the student's similarities with ``T_s``. No ``T^2`` factor is applied.

    With ``in_batch=True`` the candidates of every query are all ``B * (1 + N)`` documents of the
    batch, in the order ``[d_pos_1 .. d_pos_B, d_neg_11 .. d_neg_1N, d_neg_21 .. d_neg_BN]``: the
    student also learns how the teacher ranks the other queries' positives and negatives.

    Args:
        student_temperature: temperature of the student's softmax (default 0.05, matching the
            InfoNCE temperature for cosine similarity).
        teacher_temperature: temperature of the teacher's softmax (default 1.0, for logits).
        similarity: ``"cosine"`` (default) or ``"dot"``.
        in_batch: score each query against every document of the batch (see above).

    Inputs:
        +----------------------+-----------------------------------------------------------+
        | argument             | shape                                                     |
        +======================+===========================================================+
        | q, d_pos             | ``(B, dim)``                                              |
        | d_neg                | ``(B, N, dim)`` or ``(B, dim)``                           |
        | teacher_scores       | ``(B, 1 + N)``: column 0 the positive, then the negatives |
        |                      | (``in_batch``: ``(B, B * (1 + N))``, the order above)     |
        +----------------------+-----------------------------------------------------------+

    Example:
        ::

            loss_fn = KLDistillLoss(student_temperature=0.05, teacher_temperature=1.0)
            loss = loss_fn(q, d_pos, d_neg, teacher_scores)
            loss.backward()
    """

    def __init__(self, student_temperature: float = 0.05, teacher_temperature: float = 1.0,
                 similarity: Similarity = "cosine", in_batch: bool = False) -> None:
        super().__init__()
        if not (student_temperature > 0 and teacher_temperature > 0):
            raise ValueError("temperatures must be > 0, got "
                             f"student={student_temperature}, teacher={teacher_temperature}")
        check_choice(similarity, SIMILARITIES, "similarity")
        self.student_temperature = float(student_temperature)
        self.teacher_temperature = float(teacher_temperature)
        self.similarity = similarity
        self.in_batch = bool(in_batch)

    def forward(self, q: Tensor, d_pos: Tensor, d_neg: Tensor, teacher_scores: Tensor) -> Tensor:
        """Return the scalar loss."""
        if self.in_batch:
            docs = d_pos if d_neg is None else torch.cat([d_pos, d_neg.reshape(-1, d_pos.shape[-1])])
            student = similarity_matrix(q, docs, self.similarity)  # (B, B * (1 + N))
            if teacher_scores.shape != student.shape:
                raise ValueError(f"teacher_scores must be (batch, batch * (1 + N)) = {tuple(student.shape)} "
                                 f"for in-batch KL, got {tuple(teacher_scores.shape)}")
        else:
            if d_neg is None:
                raise ValueError("KLDistillLoss needs hard negatives (d_neg): one candidate has nothing to rank")
            student = candidate_scores(q, d_pos, d_neg, self.similarity)  # (B, 1 + N)
            check_teacher_scores(student, teacher_scores)
        return kl_distill(student, teacher_scores.to(student.dtype), self.student_temperature,
                          self.teacher_temperature)

    def extra_repr(self) -> str:
        return (f"student_temperature={self.student_temperature}, teacher_temperature={self.teacher_temperature}, "
                f"similarity={self.similarity!r}, in_batch={self.in_batch}")
