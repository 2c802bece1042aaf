"""Typed settings of the evaluation stage (the ``eval`` section of a recipe)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

_SWITCH = ("auto", "on", "off")
_MISSING = ("keep", "skip", "raise")


@dataclass
class EvalConfig:
    """How a model is evaluated on a BEIR split.

    Attributes:
        split: which ``qrels/<split>.tsv`` to score (never tune on ``test``).
        k: documents retrieved per query; Recall@100 needs ``k >= 100``.
        batch_size: texts per encoder call.
        max_seq_length: tokens per text; ``None`` keeps the model folder's own (256 for
            all-MiniLM-L6-v2, which published figures use).
        query_prompt: prepended to every query (``"query: "`` for E5-style models).
        doc_prompt: prepended to every document.
        ignore_identical_ids: drop a query's own id from its ranking: ``auto`` (on when at least half
            of the split's query ids are corpus ids: queries are documents, as in ArguAna, where
            1,298 of 1,406 are), ``on`` or ``off``.
        missing_docs: judgements naming documents absent from the corpus: ``keep`` them as
            relevant-but-unretrievable (BEIR/MTEB convention), ``skip`` them (counted), or ``raise``.
        truncate_dim: evaluate the first N embedding dimensions only (Matryoshka); ``None`` = all.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available).
        precision: the encoder's compute precision: ``auto`` (bf16 where the hardware runs it
            fast: CUDA with bf16, a CPU with AMX-BF16 or AVX512-BF16), ``fp32`` or ``bf16``.
        backend: ``torch``, ``onnx`` (onnxruntime on the model folder's ``onnx/`` export, in
            that file's precision; CPU only) or ``openvino`` (the OpenVINO runtime on its
            ``openvino/`` export, in ``precision``; CPU only).
        onnx_file: the ``onnx`` backend's file under ``onnx/``: ``model.onnx`` (fp32) or
            ``model_qint8_avx512_vnni.onnx`` (int8); the ``openvino`` backend's int8 file:
            ``openvino_model_qint8_quantized.xml``.
    """

    split: str = "test"
    k: int = 100
    batch_size: int = 64
    max_seq_length: int | None = None
    query_prompt: str = ""
    doc_prompt: str = ""
    ignore_identical_ids: str = "auto"
    missing_docs: str = "keep"
    truncate_dim: int | None = None
    device: str = "auto"
    precision: str = "auto"
    backend: str = "torch"
    onnx_file: str = "model.onnx"

    RENAMED: ClassVar[dict[str, str]] = {"query_prefix": "query_prompt", "doc_prefix": "doc_prompt"}

    def __post_init__(self) -> None:
        if not self.split or "/" in self.split or "\\" in self.split or self.split.startswith("."):
            raise ValueError(f"eval.split must be a plain split name such as 'test', got {self.split!r}")
        for name in ("k", "batch_size"):
            _positive(name, getattr(self, name))
        for name in ("max_seq_length", "truncate_dim"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        if isinstance(self.ignore_identical_ids, bool):
            self.ignore_identical_ids = "on" if self.ignore_identical_ids else "off"
        if self.ignore_identical_ids not in _SWITCH:
            raise ValueError(f"eval.ignore_identical_ids must be one of {_SWITCH}, "
                             f"got {self.ignore_identical_ids!r}")
        if self.missing_docs not in _MISSING:
            raise ValueError(f"eval.missing_docs must be one of {_MISSING}, got {self.missing_docs!r}")
        from embedray.models.config import check_precision

        check_precision(self.precision, "eval.precision")
        from embedray.models.config import check_backend

        check_backend(self.backend, "eval.backend")
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"eval.device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {self.device!r}")


def _positive(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"eval.{name} must be a positive integer, got {value!r}")
