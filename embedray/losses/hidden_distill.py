"""Hidden-state distillation: each student layer's token states copy those of a teacher layer."""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class HiddenStateDistillLoss(nn.Module):
    """Mean squared error between student and teacher token states over real (unpadded) tokens.

    A layer-reduced student keeps some of the teacher's layers (e.g. 0, 2 and 5 of 6); its k-th
    layer then copies the output of the teacher layer it was initialised from. Every token of
    every text is a target (a ``(seq, hidden)`` signal per text, not one vector), which heals
    the skipped layers in few steps (the patient / intermediate-layer distillation of PKD and
    TinyBERT). ``loss = mean over layers of mean over real tokens of mean_h (s - t)^2``.

    Student and teacher must have the same hidden size (a layer-reduced copy has); the teacher
    states get no gradient.

    Inputs:
        +----------------+------------------------------------------------------------------+
        | argument       | shape                                                            |
        +================+==================================================================+
        | student        | sequence of ``(B, L, H)``: the student layers that are distilled  |
        | teacher        | sequence of ``(B, L, H)``: the matching teacher layers, same order |
        | attention_mask | ``(B, L)``, 1 for real tokens, 0 for padding                      |
        +----------------+------------------------------------------------------------------+

    Example:
        ::

            loss_fn = HiddenStateDistillLoss()
            s = student_backbone(**tok, output_hidden_states=True).hidden_states   # 1 + 3 tensors
            with torch.no_grad():
                t = teacher_backbone(**tok, output_hidden_states=True).hidden_states  # 1 + 6
            loss = loss_fn(s[1:], [t[1], t[3], t[6]], tok["attention_mask"])
    """

    def forward(self, student: Sequence[Tensor], teacher: Sequence[Tensor], attention_mask: Tensor) -> Tensor:
        """Return the scalar loss."""
        if len(student) != len(teacher) or not student:
            raise ValueError(f"need one teacher layer per student layer, got {len(student)} student "
                             f"and {len(teacher)} teacher layers")
        mask = attention_mask.unsqueeze(-1).float()                        # (B, L, 1)
        tokens = mask.sum().clamp_min(1.0)
        total = 0.0
        for s, t in zip(student, teacher):
            if s.shape != t.shape or s.shape[:2] != attention_mask.shape:
                raise ValueError(f"student {tuple(s.shape)} and teacher {tuple(t.shape)} states must match "
                                 f"each other and the mask {tuple(attention_mask.shape)}")
            diff = (s.float() - t.detach().float()).pow(2) * mask         # (B, L, H)
            total = total + diff.sum() / (tokens * s.shape[-1])
        return total / len(student)
