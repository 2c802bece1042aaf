"""Models: bundled model registry, bi-encoder, cross-encoder."""
from embedray.models.bundled import BUNDLED, UnknownModelError, build_tiny_bert, resolve_model
from embedray.models.config import ModelConfig

# Imported on first use so that `from embedray.models import resolve_model` stays torch-free.
_LAZY = {"BiEncoder": "embedray.models.encoder", "layer_reduced_student": "embedray.models.student",
         "model_size": "embedray.models.student", "load_encoder": "embedray.models.backends"}

__all__ = ["BUNDLED", "UnknownModelError", "build_tiny_bert", "resolve_model", "ModelConfig",
           *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
