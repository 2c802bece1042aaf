"""embedray: train, distill and serve text embedding models on Ray."""
__version__ = "0.1.0"

import logging as _logging

# faiss logs a ModuleNotFoundError for every SIMD build it does not find before loading the one
# that fits; that is expected, not an error a user should read.
_logging.getLogger("faiss.loader").setLevel(_logging.WARNING)
