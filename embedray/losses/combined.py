"""Distillation objective: the contrastive task loss plus weighted score / embedding distillation."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

WEIGHT_KEYS = ("task", "score", "embed", "hidden")


class DistillationObjective(nn.Module):
    """``total = w_task * task + w_score * score + w_embed * embed + w_hidden * hidden``, with the
    parts for logging.

    Args:
        task_loss: the contrastive loss (e.g. ``InfoNCELoss`` or ``MatryoshkaLoss(InfoNCELoss())``);
            called as ``task_loss.batch_loss(q, d_pos, d_neg, **task_kwargs)``.
        score_loss: ``ScoreMSELoss``, ``MarginMSELoss`` or ``KLDistillLoss``, or ``None``; called as
            ``score_loss(q, d_pos, d_neg, teacher_scores)``.
        embed_loss: ``EmbeddingDistillLoss`` or ``None``; called as ``embed_loss(student_emb, teacher_emb)``.
            Its projection is a parameter of this module: give ``objective.parameters()`` to the
            optimizer too.
        hidden_loss: ``HiddenStateDistillLoss`` or ``None``; called once per group of
            ``hidden`` (queries, documents) and averaged.
        weights: ``{"task": w, "score": w, "embed": w, "hidden": w}``; missing keys default to 1.
        temperature: the task loss's; ``teacher_cosines`` are divided by it to become teacher
            scores on the student's logit scale (cosine / temperature).

    Inputs:
        +----------------------+-------------------------------------------------------------------+
        | argument             | meaning                                                           |
        +======================+===================================================================+
        | q, d_pos, d_neg      | student embeddings ``(B, dim)``, ``(B, dim)``, ``(B, N, dim)``     |
        | teacher_scores       | ``(B, 1 + N)`` teacher scores of ``[pos, negs]`` (if score_loss)   |
        | teacher_cosines      | or the teacher bi-encoder's cosines, scaled here by temperature   |
        | teacher_emb          | teacher embeddings of the rows of ``student_emb`` (if embed_loss)  |
        | student_emb          | default ``torch.cat([q, d_pos])``                                 |
        | hidden               | ``[(student_states, teacher_states, attention_mask), ...]``, one   |
        |                      | group per tokenised batch (if hidden_loss)                        |
        | **task_kwargs        | passed to the task loss (``q_ids``, ``pos_ids``, ``neg_ids``)      |
        +----------------------+-------------------------------------------------------------------+

    Returns:
        ``(total, parts)``: the scalar to backpropagate, and ``{"task", "score", "embed", "hidden", "total"}``
        (the unweighted parts present, detached) for logging.

    Example:
        ::

            objective = DistillationObjective(InfoNCELoss(), MarginMSELoss(), EmbeddingDistillLoss(384, 768),
                                              weights={"task": 1.0, "score": 0.5, "embed": 1.0})
            total, parts = objective(q, d_pos, d_neg, teacher_scores=ce, teacher_emb=t_qp,
                                     pos_ids=pos_ids, neg_ids=neg_ids)
            total.backward()
            log({k: v.item() for k, v in parts.items()})
    """

    def __init__(self, task_loss: nn.Module, score_loss: nn.Module | None = None,
                 embed_loss: nn.Module | None = None, weights: Mapping[str, float] | None = None,
                 hidden_loss: nn.Module | None = None, temperature: float = 1.0) -> None:
        super().__init__()
        weights = dict(weights or {})
        unknown = set(weights) - set(WEIGHT_KEYS)
        if unknown:
            raise ValueError(f"unknown weight keys {sorted(unknown)}; valid: {list(WEIGHT_KEYS)}")
        if any(w < 0 for w in weights.values()):
            raise ValueError(f"weights must be >= 0, got {weights}")
        self.task_loss = task_loss
        self.score_loss = score_loss
        self.embed_loss = embed_loss
        self.hidden_loss = hidden_loss
        self.weights = {k: float(weights.get(k, 1.0)) for k in WEIGHT_KEYS}
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, q: Tensor, d_pos: Tensor, d_neg: Tensor | None = None, *,
                teacher_scores: Tensor | None = None, teacher_cosines: Tensor | None = None,
                teacher_emb: Tensor | None = None,
                student_emb: Tensor | None = None, hidden: list[tuple] | None = None, **task_kwargs) -> tuple[Tensor, dict[str, Tensor]]:
        """Return ``(total, parts)``; see the class docstring."""
        if teacher_cosines is not None:
            if teacher_scores is not None:
                raise ValueError("pass teacher_scores or teacher_cosines, not both")
            teacher_scores = teacher_cosines / self.temperature
        parts = {"task": self.task_loss.batch_loss(q, d_pos, d_neg, **task_kwargs)}
        if self.score_loss is not None:
            if teacher_scores is None:
                raise ValueError("score distillation is on: pass teacher_scores (B, 1 + N)")
            parts["score"] = self.score_loss(q, d_pos, d_neg, teacher_scores)
        if self.embed_loss is not None:
            if teacher_emb is None:
                raise ValueError("embedding distillation is on: pass teacher_emb (rows of student_emb, "
                                 "default torch.cat([q, d_pos]))")
            student_emb = torch.cat([q, d_pos]) if student_emb is None else student_emb
            parts["embed"] = self.embed_loss(student_emb, teacher_emb)
        if self.hidden_loss is not None:
            if not hidden:
                raise ValueError("hidden-state distillation is on: pass hidden=[(student_states, "
                                 "teacher_states, attention_mask), ...]")
            parts["hidden"] = sum(self.hidden_loss(*group) for group in hidden) / len(hidden)
        total = sum(self.weights[k] * v for k, v in parts.items())
        logged = {k: v.detach() for k, v in parts.items()}
        logged["total"] = total.detach()
        return total, logged

    def extra_repr(self) -> str:
        return f"weights={self.weights}, temperature={self.temperature}"
