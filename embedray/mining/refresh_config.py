"""Configuration of negative refreshing during training (the ANCE loop)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class RefreshConfig:
    """How hard negatives are produced and renewed while a bi-encoder trains."""

    mode: Literal["off", "static", "async", "sync"] = "off"
    """``off``: negatives as ``train.negatives`` says; ``static``: mined once before training;
    ``async``: re-mined every ``every`` steps while training goes on; ``sync``: training waits."""
    every: int = 50
    """Optimizer steps between weight snapshots sent to the refresher."""
    cross_encoder: str | None = None
    """A trained cross-encoder folder; None = train one first (on base-model negatives)."""
    denoise: bool = True
    """Rescore mined negatives with the cross-encoder and drop likely false negatives."""
    max_restarts: int = 2
    """Times Ray restarts a crashed refresher actor (training keeps the last good pool meanwhile)."""
    num_cpus: float = 0.25
    """CPUs reserved for the refresher actor (fractional: training workers hold the rest)."""
    ray_data_encode: bool = False
    """Encode the corpus with a Ray Data actor pool instead of inside the refresher."""
    keep_indexes: int = 2
    """Published FAISS index versions kept on disk."""
    debug_kill_at_refresh: int | None = None
    """Fault injection for tests: the refresher SIGKILLs itself once, halfway through writing the
    index of this refresh (counted from 1 over the run, the preparation's pool v1 excluded)."""

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError("refresh.every must be >= 1")
        if self.num_cpus < 0 or self.max_restarts < 0:
            raise ValueError("refresh.num_cpus and refresh.max_restarts must be >= 0")
