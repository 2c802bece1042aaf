"""Training objectives over embeddings: one loss per file, plus a registry and a config builder.

The training loop encodes texts and passes embeddings; no loss here sees a model, Ray, or
``torch.distributed`` (cross-worker negatives come in through an optional ``gather_fn``).
"""
from __future__ import annotations

# Imported on first use: reading a LossConfig (a recipe, the command line) imports no torch.
_LAZY = {
    "LOSSES": "embedray.losses.objective",
    "ClassificationLoss": "embedray.losses.classification",
    "ContrastiveLoss": "embedray.losses.contrastive",
    "DistillationObjective": "embedray.losses.combined",
    "EmbeddingDistillLoss": "embedray.losses.embed_distill",
    "GatherFn": "embedray.losses.infonce",
    "HiddenStateDistillLoss": "embedray.losses.hidden_distill",
    "InfoNCELoss": "embedray.losses.infonce",
    "KLDistillLoss": "embedray.losses.kl_distill",
    "LossConfig": "embedray.losses.config",
    "MarginMSELoss": "embedray.losses.margin_mse",
    "MatryoshkaEmbedDistillLoss": "embedray.losses.matryoshka",
    "MatryoshkaLoss": "embedray.losses.matryoshka",
    "MatryoshkaScoreLoss": "embedray.losses.matryoshka",
    "NTXentLoss": "embedray.losses.ntxent",
    "ScoreMSELoss": "embedray.losses.score_mse",
    "SimCSELoss": "embedray.losses.simcse",
    "TripletLoss": "embedray.losses.triplet",
    "build_loss": "embedray.losses.objective",
    "build_objective": "embedray.losses.objective",
    "ids_to_tensor": "embedray.losses.infonce",
    "info_nce": "embedray.losses.infonce",
    "nt_xent": "embedray.losses.ntxent",
    "set_dropout": "embedray.losses.simcse",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
