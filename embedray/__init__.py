"""embedray: train, distill and serve text embedding models on Ray."""
__version__ = "0.1.0"
