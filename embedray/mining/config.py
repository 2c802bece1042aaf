"""Typed configs of the mining stage: negative selection and the cross-encoder.

Field semantics of the score rules follow sentence-transformers' ``mine_hard_negatives``
(``absolute_margin``, ``relative_margin``, ``max_score``, ``min_score``, ``range_min``,
``range_max``, ``sampling_strategy``) so that a recipe reads the same in both tools.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from embedray.mining.index import INDEX_TYPES, IndexType
from embedray.models.config import PRECISIONS

SamplingStrategy = Literal["top", "random"]
#: Candidates a denoising cross-encoder scores per negative asked for (``rescore_candidates``'s default).
REFILL = 3
CrossEncoderLoss = Literal["bce", "listnet", "lambda"]


def _check(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ValueError(f"mining config: field '{field}': {message}")


@dataclass
class MiningConfig:
    """How candidates are retrieved and which of them become hard negatives.

    Attributes:
        k: candidates retrieved per query from the index (besides room for the query's known
            positives, which are always excluded). Plays the role of ST's ``range_max``.
        num_negatives: at most this many negatives are kept per query.
        range_min: skip the first ``range_min`` candidates (ranked after removing positives):
            the very top of the ranking is where unlabelled positives hide.
        range_max: consider candidates only up to this rank (exclusive; ``None`` = ``k``).
        absolute_margin: keep a candidate only if ``score <= pos_score - absolute_margin``
            (ST's ``absolute_margin``). ``pos_score`` is the query's lowest positive score.
        relative_margin: keep a candidate only if ``score <= pos_score - |pos_score| * relative_margin``
            (ST's ``relative_margin``; equals ``pos * (1 - margin)`` for non-negative scores).
        max_score_ratio: NV-Retriever's "TopK-PercPos": keep a candidate only if
            ``score <= pos_score * ratio`` (e.g. 0.95), written sign-safe as
            ``pos - |pos| * (1 - ratio)``.
        max_score: drop candidates scoring above this absolute value.
        min_score: drop candidates scoring below this absolute value.
        sampling_strategy: ``top`` keeps the best surviving candidates; ``random`` samples
            ``num_negatives`` of them uniformly with a Generator seeded per (seed, query id).
        seed: seed of the ``random`` sampling; same seed → same negatives.
        rescore_candidates: candidates per query sent to the cross-encoder when it denoises.
            Extra candidates replace the ones it drops as likely false negatives, so queries keep
            ``num_negatives`` after denoising. ``None``: ``REFILL`` × ``num_negatives``, within
            the rank window; ``num_negatives``: no replacement (a dropped negative is gone).
        index_factory: FAISS ``index_factory`` string: ``Flat`` (exact inner product) for small
            corpora, e.g. ``IVF1024,Flat`` or ``HNSW32`` for large ones.
        index_type: how the mining index stores vectors: ``flat`` (``index_factory`` as given),
            ``int8`` (FAISS scalar quantizer, 4x smaller) or ``binary`` (sign bits, 32x smaller,
            candidates rescored with the fp32 vectors). ``int8``/``binary`` need
            ``index_factory: Flat``.
        batch_size: encoding batch size of the bi-encoder.
        query_prompt: text prepended to queries before encoding (e.g. an instruction); in a
            train job or pipeline, the model's ``query_prompt`` when left empty.
        doc_prompt: text prepended to documents before encoding (the model's ``doc_prompt``
            when left empty in a train job or pipeline).
        precision: compute precision of the bi-encoder that mines (the base model and the
            refresher): ``auto`` (bf16 where the hardware runs it fast), ``fp32`` or ``bf16``.
    """

    k: int = 50
    num_negatives: int = 7
    range_min: int = 0
    range_max: int | None = None
    absolute_margin: float | None = None
    relative_margin: float | None = None
    max_score_ratio: float | None = None
    max_score: float | None = None
    min_score: float | None = None
    sampling_strategy: SamplingStrategy = "top"
    seed: int = 0
    rescore_candidates: int | None = None
    index_factory: str = "Flat"
    index_type: IndexType = "flat"
    batch_size: int = 32
    query_prompt: str = ""
    doc_prompt: str = ""
    precision: str = "auto"

    RENAMED: ClassVar[dict[str, str]] = {"corpus_prompt": "doc_prompt"}

    def __post_init__(self) -> None:
        _check(self.k >= 1, "k", f"must be >= 1, got {self.k}")
        _check(self.num_negatives >= 1, "num_negatives", f"must be >= 1, got {self.num_negatives}")
        _check(self.range_min >= 0, "range_min", f"must be >= 0, got {self.range_min}")
        rmax = self.window_end
        _check(rmax <= self.k, "range_max", f"{rmax} exceeds k={self.k}; raise k or lower range_max")
        _check(self.range_min < rmax, "range_min",
               f"{self.range_min} leaves no candidates before range_max={rmax}")
        _check(self.num_negatives <= rmax - self.range_min, "num_negatives",
               f"{self.num_negatives} negatives cannot fit the rank window "
               f"[{self.range_min}, {rmax}); widen the window or ask for fewer")
        for name in ("absolute_margin", "relative_margin"):
            value = getattr(self, name)
            _check(value is None or value >= 0, name, f"must be >= 0 or null, got {value}")
        r = self.max_score_ratio
        _check(r is None or 0 < r <= 1, "max_score_ratio", f"must be in (0, 1] (e.g. 0.95), got {r}")
        if self.max_score is not None and self.min_score is not None:
            _check(self.min_score <= self.max_score, "min_score",
                   f"{self.min_score} is above max_score={self.max_score}")
        _check(self.sampling_strategy in ("top", "random"), "sampling_strategy",
               f"must be 'top' or 'random', got {self.sampling_strategy!r}")
        rc = self.rescore_candidates
        _check(rc is None or rc >= self.num_negatives, "rescore_candidates",
               f"must be >= num_negatives={self.num_negatives} (or null), got {rc}")
        _check(rc is None or rc <= rmax - self.range_min, "rescore_candidates",
               f"{rc} exceeds the rank window [{self.range_min}, {rmax})")
        _check(bool(self.index_factory.strip()), "index_factory", "empty factory string")
        _check(self.index_type in INDEX_TYPES, "index_type",
               f"must be one of {', '.join(INDEX_TYPES)}, got {self.index_type!r}")
        _check(self.index_type == "flat" or self.index_factory.strip() == "Flat", "index_type",
               f"{self.index_type!r} is an exhaustive quantized index and replaces index_factory "
               f"{self.index_factory!r}; set index_factory to 'Flat' or index_type to 'flat'")
        _check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.precision in PRECISIONS, "precision",
               f"must be auto (bf16 where the hardware runs it fast), fp32 or bf16, got {self.precision!r}")

    @property
    def window_end(self) -> int:
        """End (exclusive) of the rank window: ``range_max`` or ``k``."""
        return self.k if self.range_max is None else self.range_max

    @property
    def uses_positive_score(self) -> bool:
        """Whether a rule compares candidates with the positive's score."""
        return any(v is not None for v in (self.absolute_margin, self.relative_margin,
                                           self.max_score_ratio))

    @property
    def candidates_per_query(self) -> int:
        """How many negatives selection hands to a denoising cross-encoder (``rescore_candidates``,
        by default ``REFILL`` × ``num_negatives`` within the rank window)."""
        if self.rescore_candidates is not None:
            return self.rescore_candidates
        return min(REFILL * self.num_negatives, self.window_end - self.range_min)  # validated >= num_negatives


@dataclass
class CrossEncoderConfig:
    """Training, scoring and denoising settings of embedray's own cross-encoder.

    Attributes:
        base_model: bundled name or folder of the backbone; a fresh 1-logit head is put on it.
        loss: ``bce`` (pointwise BinaryCrossEntropyLoss on labelled pairs), ``listnet`` or
            ``lambda`` (listwise ListNetLoss / LambdaLoss on [positive, negatives...] lists).
        epochs: passes over the training pairs.
        max_steps: stop after this many optimizer steps (``-1`` = run all epochs).
        batch_size: training batch size (pairs for ``bce``, lists for listwise losses).
        learning_rate: peak AdamW learning rate (linear decay, ``warmup_ratio`` warm-up).
        head_learning_rate: peak learning rate of the fresh scoring head (classifier and
            pooler); ``None`` = ``learning_rate``. A randomly initialised head trained at a
            backbone's rate barely moves in a short run, so its scores stay near-constant.
        warmup_ratio: fraction of steps spent warming up.
        negatives_per_query: mined negatives per query used for training.
        max_length: max tokens of the (query, document) pair; longer pairs are truncated.
        seed: seeds the head initialisation, data order and dropout.
        score_batch_size: batch size when scoring pairs.
        denoise_margin: a mined negative with ``ce_score >= pos_ce_score - denoise_margin`` is
            dropped as a likely false negative (scores are sigmoid probabilities in [0, 1]).
        fusion_margin: when the gate passed the cross-encoder fused with the bi-encoder, a mined
            negative whose fused score is within ``fusion_margin`` of its positive's, or above it,
            is dropped (fused scores are in standard deviations of the query's candidates' scores,
            so a near copy of the positive, scored a hair apart, is dropped too).
        dev_rerank_depth: after training, rerank the base bi-encoder's top-``dev_rerank_depth``
            of the dev split and report nDCG@10 before/after (``0`` skips that check).
        gate: when the dev check says the cross-encoder ranks worse than the bi-encoder it
            reranks (on any task's dev split), it scores nothing for the run: denoising falls
            back to the bi-encoder's positive-aware rule and the pipeline's report has no
            reranking row, and says why. ``False``: use it whatever the dev check says.
        fuse: when the cross-encoder alone reranks dev worse than the bi-encoder, try its score
            fused with the bi-encoder's (:mod:`embedray.eval.fusion`, the weight chosen on dev);
            if the fusion reranks every dev split at least as well as the bi-encoder, and one
            better, the run uses it: to rerank and to denoise (a negative that the fused score
            puts at or above its query's positive is dropped, with ``denoise_fused``). Cross-encoder
            scores are then no distillation target. ``False``: the gate judges the cross-encoder alone.
        denoise_fused: whether a cross-encoder the gate passed only fused with the bi-encoder
            denoises (by the fused score). ``False``: denoising uses the positive-aware rule
            below instead, while reranking and distillation may still use the fused score (such
            a score mostly repeats the bi-encoder's order). A cross-encoder that alone reranks
            dev at least as well as the bi-encoder denoises either way.
        fallback_max_score_ratio: that positive-aware rule (NV-Retriever's TopK-PercPos): a
            mined negative whose bi-encoder score is above this share of its query's positive's
            is dropped (``mining.max_score_ratio``, unless the recipe sets one).
        precision: the cross-encoder's compute precision when it trains and when it scores
            (its scoring head stays fp32): ``auto`` (bf16 where the hardware runs it fast),
            ``fp32`` or ``bf16``.
    """

    base_model: str = "minilm-l6"
    loss: CrossEncoderLoss = "bce"
    epochs: int = 1
    max_steps: int = -1
    batch_size: int = 16
    learning_rate: float = 2e-5
    head_learning_rate: float | None = None
    warmup_ratio: float = 0.1
    negatives_per_query: int = 4
    max_length: int = 256
    seed: int = 0
    score_batch_size: int = 32
    denoise_margin: float = 0.05
    fusion_margin: float = 0.1
    dev_rerank_depth: int = 100
    gate: bool = True
    fuse: bool = True
    denoise_fused: bool = True
    fallback_max_score_ratio: float = 0.95
    precision: str = "auto"

    def __post_init__(self) -> None:
        def check(ok: bool, field: str, message: str) -> None:
            if not ok:
                raise ValueError(f"cross-encoder config: field '{field}': {message}")

        check(self.loss in ("bce", "listnet", "lambda"), "loss",
              f"must be 'bce', 'listnet' or 'lambda', got {self.loss!r}")
        check(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        check(self.max_steps == -1 or self.max_steps >= 1, "max_steps",
              f"must be -1 (all epochs) or >= 1, got {self.max_steps}")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.learning_rate > 0, "learning_rate", f"must be > 0, got {self.learning_rate}")
        check(self.head_learning_rate is None or self.head_learning_rate > 0, "head_learning_rate",
              f"must be > 0 or null, got {self.head_learning_rate}")
        check(0 <= self.warmup_ratio < 1, "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        check(self.negatives_per_query >= 1, "negatives_per_query",
              f"must be >= 1, got {self.negatives_per_query}")
        check(8 <= self.max_length <= 8192, "max_length", f"must be in [8, 8192], got {self.max_length}")
        check(isinstance(self.fusion_margin, (int, float)) and 0 <= self.fusion_margin <= 3, "fusion_margin",
              f"must be in [0, 3] (standard deviations of the fused score), got {self.fusion_margin}")
        check(self.score_batch_size >= 1, "score_batch_size",
              f"must be >= 1, got {self.score_batch_size}")
        check(-1 <= self.denoise_margin <= 1, "denoise_margin",
              f"must be in [-1, 1] (sigmoid-score units), got {self.denoise_margin}")
        check(0 < self.fallback_max_score_ratio <= 1, "fallback_max_score_ratio",
              f"must be in (0, 1] (e.g. 0.95), got {self.fallback_max_score_ratio}")
        check(self.dev_rerank_depth >= 0, "dev_rerank_depth",
              f"must be >= 0 (0 skips the dev check), got {self.dev_rerank_depth}")
        check(self.precision in PRECISIONS, "precision",
              f"must be auto (bf16 where the hardware runs it fast), fp32 or bf16, got {self.precision!r}")
