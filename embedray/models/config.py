"""Typed configuration of the trainable bi-encoder (:class:`embedray.models.encoder.BiEncoder`),
and the names every config section checks against (precisions, backends): torch-free, so that
reading a recipe or building the command line imports no torch."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

POOLING_MODES = ("auto", "mean", "cls", "last")
FINETUNE_MODES = ("full", "lora", "qlora")
DTYPES = ("float32", "bfloat16")
Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS = ("auto", "fp32", "bf16")
BACKENDS = ("torch", "onnx", "openvino")


def check_precision(value: str, field: str = "precision") -> str:
    """``value`` if it is one of :data:`PRECISIONS`, else a ``ValueError`` naming ``field``."""
    if value not in PRECISIONS:
        raise ValueError(f"{field}: {value!r} is not a precision; choose auto (bf16 where the hardware "
                         f"runs it fast), fp32 or bf16")
    return value


def check_backend(backend: str, field: str = "backend", allow_auto: bool = False) -> str:
    """``backend`` if it is one of :data:`BACKENDS` (or ``auto``), else a ``ValueError`` naming ``field``."""
    known = (*BACKENDS, "auto") if allow_auto else BACKENDS
    if backend not in known:
        raise ValueError(f"{field}: {backend!r} is not a backend; choose one of {', '.join(known)}")
    return backend


@dataclass
class ModelConfig:
    """How to build a bi-encoder from a bundled model or a local folder.

    Attributes:
        name_or_path: A bundled model name (``minilm-l6``, ``mpnet-base``, ``tiny-bert``) or a local
            folder: a sentence-transformers folder or a plain Hugging Face model folder.
        pooling: ``"mean"`` (masked average of token vectors), ``"cls"`` (first token), ``"last"``
            (last non-padding token, for decoder backbones), or ``"auto"``: the mode in the
            folder's sentence-transformers Pooling config (``"mean"`` when the folder has none).
        max_seq_length: Tokens kept per text (longer texts are truncated). ``None``: the folder's
            own value (sentence-transformers config, else the tokenizer's ``model_max_length``,
            capped at the backbone's ``max_position_embeddings``).
        projection_dim: Output size of a trainable linear projection after pooling; ``None`` for
            no projection (a Dense module already in the folder is then kept as is).
        normalize: L2-normalise the output embeddings (cosine similarity = dot product).
        finetune: ``"full"`` trains every weight; ``"lora"`` trains low-rank adapters (peft) and
            freezes the backbone; ``"qlora"`` is LoRA on a 4/8-bit quantised backbone (CUDA only).
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator (the update is scaled by ``lora_alpha / lora_r``).
        lora_dropout: Dropout on the LoRA branch input.
        lora_target_modules: Names (suffixes) of the linear layers that get adapters. ``None``: a
            per-architecture default (BERT: query/key/value/dense; MPNet: q/k/v/o/dense; Llama-
            like decoders: q/k/v/o/gate/up/down_proj), else every linear layer. The pooler is
            never adapted (its output is unused by embedding pooling).
        qlora_bits: Weight precision of the frozen backbone under ``finetune: qlora`` (4 or 8).
        dtype: Compute dtype of the backbone weights: ``"float32"`` or ``"bfloat16"``.
        query_prompt: Text prepended to queries (e.g. ``"query: "`` for E5-style models); saved
            as the exported model's ``query`` prompt.
        doc_prompt: Text prepended to documents; saved as the exported ``document`` prompt.
    """

    name_or_path: str = "minilm-l6"
    pooling: str = "auto"
    max_seq_length: int | None = None
    projection_dim: int | None = None
    normalize: bool = True
    finetune: str = "full"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | None = field(default=None)
    qlora_bits: int = 4
    dtype: str = "float32"
    query_prompt: str = ""
    doc_prompt: str = ""

    #: Earlier names of fields (a recipe that uses them still loads, with a warning).
    RENAMED: ClassVar[dict[str, str]] = {"query_prefix": "query_prompt", "doc_prefix": "doc_prompt"}

    def __post_init__(self) -> None:
        self.name_or_path = str(self.name_or_path)
        if not self.name_or_path.strip():
            raise ValueError("model.name_or_path: empty; give a bundled name (minilm-l6, "
                             "mpnet-base, tiny-bert) or a local model folder")
        _check_choice("pooling", self.pooling, POOLING_MODES)
        _check_choice("finetune", self.finetune, FINETUNE_MODES)
        _check_choice("dtype", self.dtype, DTYPES)
        _check_positive("max_seq_length", self.max_seq_length, allow_none=True)
        _check_positive("projection_dim", self.projection_dim, allow_none=True)
        _check_positive("lora_r", self.lora_r)
        _check_positive("lora_alpha", self.lora_alpha)
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"model.lora_dropout: {self.lora_dropout!r} must be in [0, 1)")
        if self.qlora_bits not in (4, 8):
            raise ValueError(f"model.qlora_bits: {self.qlora_bits!r} must be 4 or 8")
        if self.lora_target_modules is not None:
            if isinstance(self.lora_target_modules, str) or not self.lora_target_modules or not all(
                    isinstance(m, str) and m for m in self.lora_target_modules):
                raise ValueError("model.lora_target_modules: expected a non-empty list of module "
                                 f"names such as ['query', 'value'], got {self.lora_target_modules!r}")
            self.lora_target_modules = list(self.lora_target_modules)
        for name in ("query_prompt", "doc_prompt"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"model.{name}: expected a string, got {getattr(self, name)!r}")


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"model.{name}: {value!r} is not one of {', '.join(choices)}")


def _check_positive(name: str, value: object, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"model.{name}: {value!r} must be a positive integer"
                         + (" or null" if allow_none else ""))
