"""The objective a :class:`~embedray.losses.config.LossConfig` describes: the task loss registry
and :func:`build_objective`."""
from __future__ import annotations

from torch import nn

from embedray.losses.classification import ClassificationLoss
from embedray.losses.combined import DistillationObjective
from embedray.losses.config import LossConfig
from embedray.losses.contrastive import ContrastiveLoss
from embedray.losses.embed_distill import EmbeddingDistillLoss
from embedray.losses.hidden_distill import HiddenStateDistillLoss
from embedray.losses.infonce import GatherFn, InfoNCELoss
from embedray.losses.kl_distill import KLDistillLoss
from embedray.losses.margin_mse import MarginMSELoss
from embedray.losses.ntxent import NTXentLoss
from embedray.losses.matryoshka import MatryoshkaEmbedDistillLoss, MatryoshkaLoss, MatryoshkaScoreLoss
from embedray.losses.score_mse import ScoreMSELoss
from embedray.losses.simcse import SimCSELoss
from embedray.losses.triplet import TripletLoss

#: Task losses by name ("mnrl" is sentence-transformers' name for InfoNCE).
LOSSES: dict[str, type[nn.Module]] = {
    "infonce": InfoNCELoss,
    "mnrl": InfoNCELoss,
    "triplet": TripletLoss,
    "contrastive": ContrastiveLoss,
    "simcse": SimCSELoss,
    "ntxent": NTXentLoss,
    "classification": ClassificationLoss,
}


def build_loss(name: str, **kwargs) -> nn.Module:
    """Instantiate a task loss by name, e.g. ``build_loss("infonce", temperature=0.05)``.

    Raises:
        ValueError: for an unknown name (listing the valid ones) or invalid arguments.
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name](**kwargs)


def build_objective(cfg: LossConfig, *, gather_fn: GatherFn | None = None, student_dim: int | None = None,
                    teacher_dim: int | None = None, labels: list[str] | None = None) -> nn.Module:
    """Build the whole objective a :class:`LossConfig` describes.

    Args:
        cfg: the loss config.
        gather_fn: how in-batch losses see other workers' documents
            (``embedray.training.gather.gather_fn_for_loss()``); used only when
            ``cfg.gather_across_workers``, required then.
        student_dim, teacher_dim: embedding sizes, required when ``cfg.distill_embed`` (and
            ``student_dim`` for classification).
        labels: the label names of a classification objective (its head's outputs).

    Returns:
        The task loss (wrapped in :class:`MatryoshkaLoss` when dims are set), or, when distilling, a
        :class:`DistillationObjective` whose ``forward`` returns ``(total, parts)``. Give
        ``objective.parameters()`` to the optimizer too (embedding-distillation projection).
    """
    kwargs: dict = {}
    if cfg.name == "classification":
        if student_dim is None or not labels:
            raise ValueError("loss.name: classification: pass student_dim and the labels")
        return ClassificationLoss(student_dim, labels, temperature=cfg.temperature)
    if cfg.name in ("infonce", "mnrl"):
        kwargs = {"temperature": cfg.temperature, "symmetric": cfg.symmetric,
                  "hardest_negatives": cfg.hardest_negatives}
    elif cfg.name in ("simcse", "ntxent"):
        kwargs = {"temperature": cfg.temperature}
    else:
        kwargs = {"distance": cfg.distance} | ({} if cfg.margin is None else {"margin": cfg.margin})
        if cfg.name == "triplet":
            kwargs["hardest_negatives"] = cfg.hardest_negatives
    if cfg.gather_across_workers:
        if gather_fn is None:
            raise ValueError("loss.gather_across_workers is on: pass "
                             "gather_fn=embedray.training.gather.gather_fn_for_loss()")
        kwargs["gather_fn"] = gather_fn
    task = build_loss(cfg.name, **kwargs)
    if cfg.matryoshka_dims:
        task = MatryoshkaLoss(task, cfg.matryoshka_dims, cfg.matryoshka_weights)
    if not cfg.distilling:
        return task

    # Student scores are the InfoNCE logits (cosine / temperature) in all three score losses.
    score = {
        None: None,
        "mse": ScoreMSELoss(similarity="cosine", scale=1.0 / cfg.temperature),
        "margin_mse": MarginMSELoss(similarity="cosine", scale=1.0 / cfg.temperature),
        "kl": KLDistillLoss(student_temperature=cfg.temperature, teacher_temperature=cfg.teacher_temperature,
                            in_batch=cfg.distill_in_batch),
    }[cfg.distill_score]
    if cfg.distill_matryoshka:
        if not (cfg.matryoshka_dims and score is not None):
            raise ValueError("loss.distill_matryoshka needs loss.distill_score and matryoshka dims "
                             "(student.matryoshka_dims in a pipeline)")
        score = MatryoshkaScoreLoss(score, cfg.matryoshka_dims, cfg.matryoshka_weights)
    embed = None
    if cfg.distill_embed:
        if student_dim is None or teacher_dim is None:
            raise ValueError("loss.distill_embed is on: pass student_dim and teacher_dim")
        if cfg.distill_matryoshka and student_dim == teacher_dim:
            embed = MatryoshkaEmbedDistillLoss(cfg.matryoshka_dims, cfg.matryoshka_weights)
        else:
            embed = EmbeddingDistillLoss(student_dim, teacher_dim)
    hidden = HiddenStateDistillLoss() if cfg.distill_hidden else None
    return DistillationObjective(task, score, embed, cfg.weights, hidden_loss=hidden, temperature=cfg.temperature)
