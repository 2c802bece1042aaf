"""Typed configuration of the training objective (task loss, Matryoshka, gather, distillation)."""
from __future__ import annotations

from dataclasses import dataclass, field

TASK_LOSSES = ("infonce", "mnrl", "triplet", "contrastive", "simcse", "ntxent", "classification")
SCORE_DISTILL = ("margin_mse", "kl", "mse")
_IN_BATCH = ("infonce", "mnrl", "simcse")


@dataclass(frozen=True)
class LoopNeeds:
    """What an objective asks of the training loop: the loop reads this, never a loss field."""

    #: Dropout rate to set on the model once before training (None: the model's own).
    dropout: float | None = None
    #: Any distillation term is on.
    teacher: bool = False
    #: Teacher scores over each query's candidates (score distillation).
    teacher_scores: bool = False
    #: Teacher embeddings of the batch's queries and positives (embedding distillation).
    teacher_embeddings: bool = False
    #: The teacher's token states of every layer (hidden-state distillation).
    teacher_hidden: bool = False
    #: Teacher cosines over every document of the batch, not only each query's own candidates.
    teacher_in_batch: bool = False
    #: Matryoshka sizes the saved model records (None: the full size only).
    matryoshka_dims: tuple[int, ...] | None = None
    #: Rows carry a query to encode (classification rows are one labelled text).
    queries: bool = True
    #: Rows carry a label (classification).
    labels: bool = False


@dataclass
class LossConfig:
    """What the training loop optimises; :func:`embedray.losses.build_objective` turns it into a module."""

    #: Task loss: "infonce" (= "mnrl"), "triplet", "contrastive", "simcse", "ntxent" (SimCLR:
    #: query and positive are two views; every other embedding of the batch is a negative) or
    #: "classification" (a linear head on the embedding, cross-entropy on ``data.train_labels``).
    name: str = "infonce"
    #: Softmax temperature of InfoNCE / SimCSE / NT-Xent / classification (scale = 1 / temperature). Score distillation
    #: compares the teacher's scores with the same student logits, cosine / temperature.
    temperature: float = 0.05
    #: InfoNCE only: add the doc→query term.
    symmetric: bool = False
    #: Triplet / contrastive margin; None = the loss's default (triplet 0.2, contrastive 0.5).
    margin: float | None = None
    #: Distance of the triplet ("cosine", "euclidean", "dot") or contrastive ("cosine",
    #: "euclidean") loss.
    distance: str = "cosine"
    #: Ranking losses (infonce/mnrl, triplet): only each query's k hardest negatives count,
    #: chosen among every document of the worker's batch (other rows' positives and the hard
    #: negatives; known positives never). Triplet then needs no train.num_negatives. None: all.
    hardest_negatives: int | None = None
    #: Matryoshka sizes, e.g. [384, 192, 96, 48]; None trains the full size only.
    matryoshka_dims: list[int] | None = None
    #: One weight per Matryoshka size; None = all 1.
    matryoshka_weights: list[float] | None = None
    #: InfoNCE / SimCSE: score local queries against the documents of all DDP workers
    #: (the training loop passes ``embedray.training.gather.gather_fn_for_loss()``).
    gather_across_workers: bool = False
    #: Score distillation from teacher scores: "margin_mse", "kl", "mse" or None (off).
    distill_score: str | None = None
    #: Embedding distillation from teacher embeddings (learned projection if sizes differ).
    distill_embed: bool = False
    #: Hidden-state distillation: each student layer's token states copy those of the teacher
    #: layer it was initialised from (a layer-reduced student; ``distill.hidden_layers``
    #: otherwise), by MSE over real tokens of queries and documents.
    distill_hidden: bool = False
    #: KL distillation over every document of the worker's batch (each query's softmax over all
    #: B * (1 + N) positives and negatives of the batch) instead of its own [positive, negatives]:
    #: more of the teacher's ranking per step at no extra encoding. Needs distill_score "kl".
    distill_in_batch: bool = False
    #: Distillation at every Matryoshka size, not only the full one: the student's truncated
    #: similarities copy the teacher's scores, and (a student of the teacher's size) its first k
    #: features copy the teacher's first k. Needs distill_score and matryoshka_dims.
    distill_matryoshka: bool = False
    #: Temperature of the teacher's softmax in KL distillation.
    teacher_temperature: float = 1.0
    #: Weights of the parts when distilling: keys "task", "score", "embed", "hidden" (missing = 1).
    weights: dict[str, float] = field(default_factory=dict)
    #: If set, the training loop calls ``embedray.losses.simcse.set_dropout(model, dropout)``;
    #: None keeps the model's own rates. SimCSE needs dropout > 0 (0.1 is usual, MiniLM's default).
    dropout: float | None = None

    def __post_init__(self) -> None:
        def bad(fld: str, msg: str) -> ValueError:
            return ValueError(f"loss.{fld}: {msg}")

        if self.name not in TASK_LOSSES:
            raise bad("name", f"unknown loss {self.name!r}; choose one of {list(TASK_LOSSES)}")
        if not self.temperature > 0:
            raise bad("temperature", f"must be > 0, got {self.temperature}")
        if self.symmetric and self.name not in ("infonce", "mnrl"):
            raise bad("symmetric", f"only applies to infonce/mnrl, not {self.name!r}")
        if self.margin is not None:
            if self.name not in ("triplet", "contrastive"):
                raise bad("margin", f"only applies to triplet/contrastive, not {self.name!r}")
            if self.margin < 0:
                raise bad("margin", f"must be >= 0, got {self.margin}")
        if self.hardest_negatives is not None:
            if self.name not in ("infonce", "mnrl", "triplet"):
                raise bad("hardest_negatives", f"only applies to the ranking losses infonce/mnrl and triplet, "
                                               f"not {self.name!r}")
            if self.hardest_negatives < 1:
                raise bad("hardest_negatives", f"must be >= 1 or null, got {self.hardest_negatives}")
        distances = {"triplet": ("cosine", "euclidean", "dot"), "contrastive": ("cosine", "euclidean")}
        if self.distance not in distances.get(self.name, ("cosine",)):
            raise bad("distance", f"{self.distance!r} is not valid for {self.name!r}; choose one of "
                                  f"{list(distances.get(self.name, ('cosine',)))}")
        if self.matryoshka_dims is not None:
            dims = self.matryoshka_dims
            if not dims or any(not isinstance(d, int) or d <= 0 for d in dims) or len(set(dims)) != len(dims):
                raise bad("matryoshka_dims", f"must be distinct positive ints, got {dims}")
        if self.matryoshka_weights is not None:
            if self.matryoshka_dims is None:
                raise bad("matryoshka_weights", "given without matryoshka_dims")
            if len(self.matryoshka_weights) != len(self.matryoshka_dims) or any(w < 0 for w in self.matryoshka_weights):
                raise bad("matryoshka_weights", f"need {len(self.matryoshka_dims)} non-negative numbers "
                                                f"(one per dim), got {self.matryoshka_weights}")
        if self.gather_across_workers and self.name not in _IN_BATCH:
            raise bad("gather_across_workers", f"only applies to in-batch losses {list(_IN_BATCH)}, "
                                               f"not {self.name!r}")
        if self.distill_score not in (None, *SCORE_DISTILL):
            raise bad("distill_score", f"choose one of {list(SCORE_DISTILL)} or null, got {self.distill_score!r}")
        if self.name == "classification" and self.matryoshka_dims:
            raise bad("matryoshka_dims", "do not apply to classification (the head reads the full embedding)")
        if self.distilling and self.name in ("contrastive", "simcse", "ntxent", "classification"):
            raise bad("name", f"distillation needs (query, positive, negatives) batches; {self.name!r} has none")
        if self.distill_in_batch and self.distill_score != "kl":
            raise bad("distill_in_batch", f"needs distill_score: kl, got {self.distill_score!r}")
        if not self.teacher_temperature > 0:
            raise bad("teacher_temperature", f"must be > 0, got {self.teacher_temperature}")
        unknown = set(self.weights) - {"task", "score", "embed", "hidden"}
        if unknown:
            raise bad("weights", f"unknown keys {sorted(unknown)}; valid: task, score, embed, hidden")
        if any(w < 0 for w in self.weights.values()):
            raise bad("weights", f"must be >= 0, got {self.weights}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", f"must be in [0, 1), got {self.dropout}")
        if self.name == "simcse" and self.dropout == 0:
            raise bad("dropout", "simcse needs dropout > 0 to make two different views (0.1 is usual)")

    def loop_needs(self) -> LoopNeeds:
        """What the training loop must provide for this objective."""
        return LoopNeeds(dropout=self.dropout, teacher=self.distilling, teacher_scores=self.distill_score is not None,
                         teacher_embeddings=self.distill_embed, teacher_hidden=self.distill_hidden,
                         teacher_in_batch=self.distill_in_batch, queries=self.name != "classification",
                         labels=self.name == "classification",
                         matryoshka_dims=tuple(self.matryoshka_dims) if self.matryoshka_dims else None)

    @property
    def distilling(self) -> bool:
        """Whether any distillation term is on."""
        return self.distill_score is not None or self.distill_embed or self.distill_hidden
