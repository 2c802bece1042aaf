"""Inference backends of a sentence-transformers folder: ``torch`` (as saved) or ``onnx``.

``onnx`` runs one file of the folder's ``onnx/`` subfolder (sentence-transformers' layout:
``onnx/model.onnx``, ``onnx/model_qint8_avx512_vnni.onnx``; see :mod:`embedray.models.export`)
with onnxruntime in place of the Hugging Face transformer. Everything else is the folder's own
sentence-transformers pipeline, loaded as usual: tokenizer, max sequence length, prompts,
Pooling, a rotation ``Dense``, ``Normalize``.

Written here because sentence-transformers' own ``backend="onnx"`` goes through optimum-onnx,
whose newest release (0.1.0) needs ``transformers<4.58`` and fails to import under the
transformers 5 that sentence-transformers 6 requires. The files follow its conventions (input
and output names, file names), so ``SentenceTransformer(folder, backend="onnx",
model_kwargs={"file_name": "onnx/model_qint8_avx512_vnni.onnx"})`` loads them wherever
optimum-onnx installs.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from embedray.models.bundled import resolve_model
from embedray.models.config import check_backend, check_precision
from embedray.models.precision import use_precision

ONNX_DIR = "onnx"
ONNX_FILE = "model.onnx"
#: The file name sentence-transformers' ``export_dynamic_quantized_onnx_model(model, "avx512_vnni", ...)`` writes.
INT8_FILE = "model_qint8_avx512_vnni.onnx"
ONNX_EXTRA = "pip install -c constraints.txt -e '.[onnx]'  (or: make install)"
#: What the exported graph reads and returns: optimum's feature-extraction names.
OUTPUT_NAME = "last_hidden_state"


class MissingExtraError(ValueError):
    """An optional backend's packages are not installed; the message names the install command."""


def require_onnx() -> None:
    """Raise :class:`MissingExtraError` unless onnxruntime and onnx are importable."""
    missing = [m for m in ("onnxruntime", "onnx") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(f"the onnx backend needs {' and '.join(missing)}, which is not installed: "
                                f"{ONNX_EXTRA}")


def auto_backend(model_dir: str | Path, precision: str = "auto", onnx_file: str = ONNX_FILE) -> tuple[str, str]:
    """``(backend, onnx_file)`` that ``backend: auto`` runs for a model folder.

    The int8 ONNX export encodes fastest on a CPU at the same retrieval quality (README: ONNX
    and int8), so it is chosen where the folder has it (``embedray export MODEL --quantize
    int8``), onnxruntime is installed and no precision was forced; otherwise torch in
    ``precision``.
    """
    has_int8 = (Path(model_dir) / ONNX_DIR / INT8_FILE).is_file()
    installed = all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))
    if precision == "auto" and has_int8 and installed:
        return "onnx", INT8_FILE
    return "torch", onnx_file


def onnx_path(model_dir: str | Path, file_name: str = ONNX_FILE) -> Path:
    """The ONNX file ``file_name`` of a model folder (under ``onnx/``), which must exist.

    Raises:
        FileNotFoundError: naming the files that are there and the export command.
    """
    folder = Path(model_dir) / ONNX_DIR
    name = Path(file_name).name
    path = folder / name
    if not path.is_file():
        have = sorted(p.name for p in folder.glob("*.onnx")) if folder.is_dir() else []
        hint = f"it has {', '.join(have)}" if have else "it has no ONNX export"
        quant = " --quantize int8" if "int8" in name else ""
        raise FileNotFoundError(f"{path} does not exist ({hint}); write it with "
                                f"'embedray export {model_dir} --format onnx{quant}'")
    return path


def onnx_precision(file_name: str) -> str:
    """``int8`` for a quantized file (sentence-transformers names them ``*qint8*`` / ``*quint8*``),
    ``fp16`` for an ``O4``-optimized one, else ``fp32``."""
    name = Path(file_name).name
    if "int8" in name:
        return "int8"
    return "fp16" if "_O4" in name or "fp16" in name else "fp32"


class OrtTransformer(torch.nn.Module):
    """An onnxruntime session standing in for the Hugging Face model inside sentence-transformers'
    ``Transformer`` module: same call (``input_ids``, ``attention_mask``, ``token_type_ids``),
    same output (``last_hidden_state``, fp32), on the CPU.

    Args:
        path: ONNX file with optimum's feature-extraction inputs and ``last_hidden_state`` output.
        config: the transformer's Hugging Face config (sentence-transformers reads it).
        threads: intra-op threads; 0 keeps onnxruntime's default (one per physical core).
    """

    def __init__(self, path: str | Path, config, threads: int = 0):
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads > 0:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.config = config
        self.path = Path(path)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, return_dict: bool = True):
        from transformers.modeling_outputs import BaseModelOutput

        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        if given.get("token_type_ids") is None:
            given["token_type_ids"] = torch.zeros_like(input_ids)
        feeds = {name: given[name].cpu().numpy().astype(np.int64, copy=False) for name in self.input_names}
        (hidden,) = self.session.run([OUTPUT_NAME], feeds)  # (batch, seq, hidden)
        return BaseModelOutput(last_hidden_state=torch.from_numpy(hidden))


def load_sentence_model(model_dir: str | Path, backend: str = "torch", onnx_file: str = ONNX_FILE,
                        threads: int = 0, device: str | None = "cpu"):
    """A ``SentenceTransformer`` of ``model_dir`` whose transformer runs on ``backend``.

    Args:
        model_dir: sentence-transformers folder (for ``onnx``, with an ``onnx/`` export).
        backend: ``torch`` or ``onnx``.
        onnx_file: which file of ``onnx/`` to run (``model.onnx``: fp32; ``INT8_FILE``: int8).
        threads: onnxruntime intra-op threads (0: its default); torch's are set by the caller.
        device: torch device; the onnx backend runs on the CPU only.

    Returns:
        The model, with ``embedray_backend`` (``torch`` / ``onnx``) and, for onnx,
        ``embedray_precision`` (``fp32`` / ``int8``) and ``embedray_onnx_file`` set.
    """
    from sentence_transformers import SentenceTransformer

    check_backend(backend)
    if backend == "onnx":
        require_onnx()
        path = onnx_path(model_dir, onnx_file)
        if device not in (None, "cpu", "auto"):
            raise ValueError(f"device {device!r}: the onnx backend runs on the CPU; use --device cpu "
                             "or the torch backend")
        device = "cpu"
    model = SentenceTransformer(str(model_dir), device=None if device == "auto" else device,
                                trust_remote_code=False, local_files_only=True)
    model.embedray_backend = backend
    if backend == "onnx":
        _use_onnx(model, path, threads)
    return model


def _use_onnx(model, path: Path, threads: int) -> None:
    """Swap the first module's Hugging Face model for an :class:`OrtTransformer` of ``path``."""
    first = model[0]
    inner = getattr(first, "auto_model", None)
    if type(first).__name__ != "Transformer" or not isinstance(inner, torch.nn.Module):
        raise ValueError(f"{path.parent.parent}: the onnx backend replaces a Transformer first module, "
                         f"but this model starts with {type(first).__name__}")
    first.model = OrtTransformer(path, inner.config, threads)
    # sentence-transformers filters the features it passes by the model's forward parameters.
    first.model_forward_params = {"input_ids", "attention_mask", "token_type_ids", "return_dict"}
    model.embedray_precision = onnx_precision(path.name)
    model.embedray_onnx_file = path.name


def load_encoder(name_or_path: str | Path, device: str | None = "cpu",
                 max_seq_length: int | None = None, precision: str = "auto", backend: str = "torch",
                 onnx_file: str = "model.onnx"):
    """Load a bundled model name or a local sentence-transformers folder, offline.

    Args:
        name_or_path: ``"minilm-l6"``, ``"mpnet-base"``, ``"tiny-bert"`` or a folder.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``…; ``"auto"`` or ``None`` lets
            sentence-transformers pick (CUDA when available).
        max_seq_length: override the folder's max sequence length (tokens); default keeps it.
        precision: the transformer's compute precision, ``auto`` (bf16 where the hardware runs it
            fast), ``fp32`` or ``bf16`` (:mod:`embedray.models.precision`); pooling stays fp32.
        backend: ``torch``, or ``onnx``: onnxruntime runs ``onnx/<onnx_file>`` of the folder (an
            ``embedray export``), in that file's precision (:func:`load_sentence_model`).
        onnx_file: the ``onnx`` backend's file, ``model.onnx`` or ``model_qint8_avx512_vnni.onnx``.

    Returns:
        A ``sentence_transformers.SentenceTransformer``.
    """
    from sentence_transformers import SentenceTransformer

    check_precision(precision)
    path = resolve_model(name_or_path)
    if backend != "torch" and precision == "bf16":
        raise ValueError(f"precision bf16 applies to the torch backend; the {backend} backend runs "
                         f"{onnx_file} in its own precision")
    if backend != "torch":
        model = load_sentence_model(path, backend, onnx_file, device=device)
    else:
        model = SentenceTransformer(str(path), device=None if device in (None, "auto") else device,
                                    trust_remote_code=False, local_files_only=True)
    if max_seq_length is not None:
        if max_seq_length < 1:
            raise ValueError(f"max_seq_length must be >= 1, got {max_seq_length}")
        model.max_seq_length = int(max_seq_length)
    if backend == "torch":
        use_precision(model, precision)
    return model
