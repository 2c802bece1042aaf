"""Embedding distillation: the student's (projected) embeddings copy the teacher's."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class EmbeddingDistillLoss(nn.Module):
    """Squared distance between L2-normalised student and teacher embeddings of the same texts.

    ``loss = mean_i || normalize(P s_i) - normalize(t_i) ||^2 = mean_i (2 - 2 cos(P s_i, t_i))``,
    where ``P`` is a learned ``nn.Linear(student_dim, teacher_dim, bias=False)`` when the sizes
    differ and the identity otherwise. The teacher embeddings get no gradient.

    ``P`` is a trainable parameter of this loss: the optimizer must include ``loss.parameters()``
    (e.g. ``AdamW([*model.parameters(), *loss.parameters()])``), or ``P`` stays at its random
    initialisation. ``P`` is a training aid only; the exported student does not contain it.

    Args:
        student_dim: size of the student embeddings.
        teacher_dim: size of the teacher embeddings.

    Inputs:
        +----------------------+--------------------------------------------------+
        | argument             | shape                                            |
        +======================+==================================================+
        | student              | ``(..., student_dim)``                           |
        | teacher              | ``(..., teacher_dim)``, the same texts, same order |
        +----------------------+--------------------------------------------------+

    Example:
        ::

            loss_fn = EmbeddingDistillLoss(student_dim=384, teacher_dim=768)
            optimizer = torch.optim.AdamW([*student.parameters(), *loss_fn.parameters()])
            with torch.no_grad():
                t = teacher(texts)                      # (B, 768)
            loss = loss_fn(student(texts), t)           # student(texts): (B, 384)
            loss.backward()
    """

    def __init__(self, student_dim: int, teacher_dim: int) -> None:
        super().__init__()
        if student_dim <= 0 or teacher_dim <= 0:
            raise ValueError(f"dims must be positive, got student_dim={student_dim}, teacher_dim={teacher_dim}")
        self.student_dim = int(student_dim)
        self.teacher_dim = int(teacher_dim)
        self.projection = (nn.Identity() if student_dim == teacher_dim
                           else nn.Linear(student_dim, teacher_dim, bias=False))

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        """Return the scalar loss (mean over rows)."""
        if student.shape[-1] != self.student_dim or teacher.shape[-1] != self.teacher_dim \
                or student.shape[:-1] != teacher.shape[:-1]:
            raise ValueError(f"expected student (..., {self.student_dim}) and teacher (..., {self.teacher_dim}) "
                             f"with the same rows, got {tuple(student.shape)} and {tuple(teacher.shape)}")
        s = F.normalize(self.projection(student), dim=-1)  # (..., teacher_dim)
        t = F.normalize(teacher.detach().to(s.dtype), dim=-1)  # (..., teacher_dim)
        return (s - t).pow(2).sum(-1).mean()

    def extra_repr(self) -> str:
        return f"student_dim={self.student_dim}, teacher_dim={self.teacher_dim}"
