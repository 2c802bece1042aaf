"""Models: bundled model registry, bi-encoder, cross-encoder."""
from embedray.models.bundled import BUNDLED, UnknownModelError, build_tiny_bert, resolve_model

__all__ = ["BUNDLED", "UnknownModelError", "build_tiny_bert", "resolve_model"]
