"""Inference backends of a sentence-transformers folder: ``torch`` (as saved), ``onnx`` or ``openvino``.

``onnx`` runs one file of the folder's ``onnx/`` subfolder (sentence-transformers' layout:
``onnx/model.onnx``, ``onnx/model_qint8_avx512_vnni.onnx``; see :mod:`embedray.models.export`)
with onnxruntime in place of the Hugging Face transformer; ``openvino`` runs
``openvino/openvino_model.xml`` with the OpenVINO runtime, in the project's precision policy
(``auto``: bf16 on a CPU with AMX-BF16 / AVX512-BF16, where OpenVINO's bf16 kernels run the
matrix units; ``fp32`` forces f32), or its statically quantized int8 file
``openvino/openvino_model_qint8_quantized.xml``. Everything else is the folder's own sentence-transformers
pipeline, loaded as usual: tokenizer, max sequence length, prompts, Pooling, a rotation
``Dense``, ``Normalize``. The ``openvino`` backend also runs the Pooling inside the compiled graph
when it is mean or CLS pooling over all tokens (:func:`graph_pooling`): the runtime then hands back
one vector per text instead of every token's hidden state, which it would otherwise convert to
fp32 and copy out for sentence-transformers to pool.

Written here because sentence-transformers' own ``backend="onnx"`` goes through optimum-onnx,
whose newest release (0.1.0) needs ``transformers<4.58`` and fails to import under the
transformers 5 that sentence-transformers 6 requires. The files follow its conventions (input
and output names, file names), so ``SentenceTransformer(folder, backend="onnx",
model_kwargs={"file_name": "onnx/model_qint8_avx512_vnni.onnx"})`` loads them wherever
optimum-onnx installs, and ``backend="openvino"`` the OpenVINO folder wherever optimum-intel does.
"""
from __future__ import annotations

import importlib.util
import threading
import time
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from embedray.models.bundled import resolve_model
from embedray.models.config import check_backend, check_precision
from embedray.models.precision import cpu_bf16_is_fast, resolve_precision, use_precision

ONNX_DIR = "onnx"
ONNX_FILE = "model.onnx"
#: The file name sentence-transformers' ``export_dynamic_quantized_onnx_model(model, "avx512_vnni", ...)`` writes.
INT8_FILE = "model_qint8_avx512_vnni.onnx"
ONNX_EXTRA = "pip install -c constraints.txt -e '.[onnx]'  (or: make install)"
#: sentence-transformers' OpenVINO layout (what optimum-intel's ``OVModelForFeatureExtraction`` saves).
OPENVINO_DIR = "openvino"
OPENVINO_FILE = "openvino_model.xml"
#: The statically quantized int8 file sentence-transformers' ``export_static_quantized_openvino_model``
#: writes (``embedray export --format openvino --quantize int8 --calibration DATA``).
OPENVINO_INT8_FILE = "openvino_model_qint8_quantized.xml"
OPENVINO_EXTRA = "pip install -c constraints.txt -e '.[onnx,openvino]'  (or: make install)"
#: The export's quality gate: int8 is served by ``auto`` only at this share of fp32's nDCG@10 or more.
INT8_MIN_NDCG_RATIO = 0.99
#: What the exported graph reads and returns: optimum's feature-extraction names.
OUTPUT_NAME = "last_hidden_state"
#: The output of an OpenVINO graph with the Pooling built in (:func:`pooled_graph`).
POOLED_NAME = "sentence_embedding"
#: A static-shape OpenVINO copy's length is a multiple of this (:class:`OvTransformer`): a few
#: padded tokens, against one compiled copy per length.
STATIC_LENGTH_MULTIPLE = 8
#: Static-shape copies an encoder of :func:`load_encoder` keeps. A corpus encode sends its
#: length-sorted batches shape after shape, so a few suffice; each copy holds its own buffers for
#: its shape, so memory grows with each one kept.
ENCODE_STATIC_SHAPES = 4
#: Seconds a batch shape runs on the dynamic graph before it gets a static-shape copy.
STATIC_AFTER_S = 1.0


class MissingExtraError(ValueError):
    """An optional backend's packages are not installed; the message names the install command."""


def require_onnx() -> None:
    """Raise :class:`MissingExtraError` unless onnxruntime and onnx are importable."""
    missing = [m for m in ("onnxruntime", "onnx") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(f"the onnx backend needs {' and '.join(missing)}, which is not installed: "
                                f"{ONNX_EXTRA}")


def require_openvino() -> None:
    """Raise :class:`MissingExtraError` unless the OpenVINO runtime is importable."""
    if importlib.util.find_spec("openvino") is None:
        raise MissingExtraError(f"the openvino backend needs openvino, which is not installed: {OPENVINO_EXTRA}")


def auto_backend(model_dir: str | Path, precision: str = "auto", onnx_file: str = ONNX_FILE) -> tuple[str, str]:
    """``(backend, file)`` that ``backend: auto`` runs for a model folder.

    Fastest first at the same retrieval quality on a CPU (README: ONNX, OpenVINO and int8): the
    int8 OpenVINO export where its quality check passed (``embedray export --format openvino
    --quantize int8 --calibration BEIR_DIR``: nDCG@10 at least :data:`INT8_MIN_NDCG_RATIO` of
    fp32 on held-out queries), then the OpenVINO export in bf16 where the CPU has bf16 units, then
    the int8 ONNX export, each where the folder has it, its runtime is installed and no precision
    was forced; otherwise torch in ``precision``.
    """
    if precision != "auto":
        return "torch", onnx_file
    ov_installed = importlib.util.find_spec("openvino") is not None
    if ov_installed and openvino_int8_passed(model_dir):
        return "openvino", OPENVINO_INT8_FILE
    if has_openvino_export(model_dir) and resolve_precision("auto", "cpu") == "bf16" and ov_installed:
        return "openvino", onnx_file
    has_int8 = (Path(model_dir) / ONNX_DIR / INT8_FILE).is_file()
    installed = all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))
    if has_int8 and installed:
        return "onnx", INT8_FILE
    return "torch", onnx_file


def openvino_int8_quality(model_dir: str | Path) -> dict | None:
    """The quality check the int8 OpenVINO export recorded in the folder's ``embedray.json``
    (``"export"`` → ``"openvino"`` → its file → ``"quality"``), or ``None`` where there is none."""
    import json

    meta_path = Path(model_dir) / "embedray.json"
    if not (Path(model_dir) / OPENVINO_DIR / OPENVINO_INT8_FILE).is_file() or not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        quality = meta["export"]["openvino"]["files"][f"{OPENVINO_DIR}/{OPENVINO_INT8_FILE}"]["quality"]
    except (ValueError, KeyError, TypeError):
        return None
    return quality if isinstance(quality, dict) else None


def openvino_int8_passed(model_dir: str | Path) -> bool:
    """Whether the folder's int8 OpenVINO export passed its retrieval quality check."""
    quality = openvino_int8_quality(model_dir)
    return bool(quality and quality.get("passed") is True)


def has_openvino_export(model_dir: str | Path) -> bool:
    """Whether the folder has ``openvino/openvino_model.xml`` (``embedray export --format openvino``)."""
    return (Path(model_dir) / OPENVINO_DIR / OPENVINO_FILE).is_file()


def openvino_path(model_dir: str | Path, file_name: str = OPENVINO_FILE) -> Path:
    """An OpenVINO model file of a folder, which must exist: ``openvino/<file_name>`` for a
    ``.xml`` name (``openvino_model.xml``, or ``openvino_model_qint8_quantized.xml``: int8),
    ``openvino/openvino_model.xml`` for any other (the ``onnx`` backend's default ``model.onnx``).

    Raises:
        FileNotFoundError: naming the export command.
    """
    name = Path(file_name).name if str(file_name).endswith(".xml") else OPENVINO_FILE
    path = Path(model_dir) / OPENVINO_DIR / name
    if not path.is_file() or not path.with_suffix(".bin").is_file():
        quant = " --quantize int8 --calibration DATA" if "int8" in name else ""
        raise FileNotFoundError(f"{path} (and its .bin) does not exist; write it with "
                                f"'embedray export {model_dir} --format openvino{quant}'")
    return path


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

        feeds = _feeds(self.input_names, input_ids, attention_mask, token_type_ids)
        (hidden,) = self.session.run([OUTPUT_NAME], feeds)  # (batch, seq, hidden)
        return BaseModelOutput(last_hidden_state=torch.from_numpy(hidden))


def _feeds(names: list[str], input_ids: torch.Tensor, attention_mask: torch.Tensor,
           token_type_ids: torch.Tensor | None) -> dict[str, np.ndarray]:
    """The int64 numpy inputs an exported graph reads, by name (zero token types when absent)."""
    given = {"input_ids": input_ids, "attention_mask": attention_mask,
             "token_type_ids": torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids}
    return {name: given[name].cpu().numpy().astype(np.int64, copy=False) for name in names}


def static_length(length: int, max_length: int | None = None) -> int:
    """``length`` padded up to a multiple of :data:`STATIC_LENGTH_MULTIPLE`, never past
    ``max_length`` (the positions the model embeds) unless ``length`` itself is."""
    padded = -(-length // STATIC_LENGTH_MULTIPLE) * STATIC_LENGTH_MULTIPLE
    return padded if max_length is None else max(min(padded, max_length), length)


def pad_feeds(feeds: dict[str, np.ndarray], length: int) -> dict[str, np.ndarray]:
    """The (rows, seq) inputs right-padded with zeros to ``length``: masked tokens, token type 0."""
    return {k: np.pad(v, ((0, 0), (0, length - v.shape[1]))) for k, v in feeds.items()}


class OvTransformer(torch.nn.Module):
    """An OpenVINO compiled model standing in for the Hugging Face model, like :class:`OrtTransformer`.

    Args:
        path: ``openvino_model.xml`` with optimum's feature-extraction inputs and outputs.
        config: the transformer's Hugging Face config.
        threads: inference threads; 0 keeps OpenVINO's default (all cores).
        precision: ``auto`` / ``fp32`` / ``bf16``, resolved for the CPU: OpenVINO's inference
            precision hint (``bf16`` runs the matrix units, activations and weights in bf16, with
            its own fp32 normalisation layers; ``f32`` keeps the graph in fp32). The hidden states
            come out in fp32 either way.
        pooling: ``mean`` / ``cls`` to pool inside the graph (:func:`pooled_graph`): the output is
            then one fp32 vector per text; ``None`` returns every token's hidden state.
        static_shapes: how many batch shapes get a copy of the graph compiled for that one shape
            (OpenVINO's CPU kernels run a fixed shape faster than the dynamic graph). A batch's
            length is padded up to a multiple of :data:`STATIC_LENGTH_MULTIPLE` (masked tokens
            change no text's output). A shape (rows, padded length) gets its copy once its batches
            have spent :data:`STATIC_AFTER_S` on the dynamic graph (a copy compiles in a fraction
            of that, and pays off only over many batches), the least recently used copy dropped
            beyond ``static_shapes``. Repeated shapes are what a corpus encode sends (full batches
            of length-sorted texts); 0 runs every batch on the dynamic graph.
    """

    def __init__(self, path: str | Path, config, threads: int = 0, precision: str = "auto",
                 pooling: str | None = None, static_shapes: int = 0):
        super().__init__()
        import openvino as ov

        self.precision = resolve_precision(precision, "cpu")
        if self.precision == "bf16" and not cpu_bf16_is_fast():
            # OpenVINO ignores a bf16 hint on a CPU without bf16 units and runs fp32: say so.
            warnings.warn("precision bf16: this CPU has no bf16 units (AMX-BF16 / AVX512-BF16), so OpenVINO "
                          "runs the graph in fp32", stacklevel=2)
            self.precision = "fp32"
        core = ov.Core()
        props = {"INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
                 "PERFORMANCE_HINT": "LATENCY"}
        if threads > 0:
            props["INFERENCE_NUM_THREADS"] = int(threads)
        graph = core.read_model(str(path))
        self.pooling = pooling
        if pooling is not None:
            graph = pooled_graph(graph, pooling)
        self.props = props
        self.compiled = core.compile_model(graph, "CPU", props)
        self.request = self.compiled.create_infer_request()
        self.input_names = [p.get_any_name() for p in self.compiled.inputs]
        self.output_name = OUTPUT_NAME if pooling is None else POOLED_NAME
        self.output = self.compiled.output(self.output_name)
        self.config = config
        self.path = Path(path)
        if static_shapes < 0:
            raise ValueError(f"static_shapes must be >= 0, got {static_shapes}")
        self.static_shapes = int(static_shapes)
        self._core, self._graph = core, graph
        self._static: OrderedDict[tuple[int, int], object] = OrderedDict()  # shape → infer request, LRU last
        self._spent: dict[tuple[int, int], float] = {}  # shape → seconds on the dynamic graph
        # positions the model can embed: padding never goes past them
        self._max_length = int(getattr(config, "max_position_embeddings", 0) or 0) or None
        self._lock = threading.Lock()  # one infer request: one call at a time

    def _static_request(self, rows: int, length: int):
        """The infer request of the static-shape copy for ``(rows, length)``, compiled once the
        shape has spent :data:`STATIC_AFTER_S` on the dynamic graph; ``None`` until then. Call
        under the lock."""
        import openvino as ov

        key = (rows, length)
        if key in self._static:
            self._static.move_to_end(key)
            return self._static[key]
        if self._spent.get(key, 0.0) < STATIC_AFTER_S:
            return None
        self._spent.pop(key, None)
        graph = self._graph.clone()
        graph.reshape({p.get_any_name(): ov.PartialShape([rows, length]) for p in graph.inputs})
        self._static[key] = self._core.compile_model(graph, "CPU", self.props).create_infer_request()
        if len(self._static) > self.static_shapes:
            self._static.popitem(last=False)
        return self._static[key]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, return_dict: bool = True):
        from transformers.modeling_outputs import BaseModelOutput

        rows, length = input_ids.shape
        key = (rows, static_length(length, self._max_length))
        feeds = _feeds(self.input_names, input_ids, attention_mask, token_type_ids)
        with self._lock:
            request = self._static_request(*key) if self.static_shapes else None
            if request is None:
                t0 = time.perf_counter()
                # (batch, seq, hidden), or (batch, hidden) with the pooling in the graph; fp32
                out = self.request.infer(feeds)[self.output].copy()
                if self.static_shapes:
                    self._spent[key] = self._spent.get(key, 0.0) + time.perf_counter() - t0
            else:
                out = request.infer(pad_feeds(feeds, key[1]))[self.output_name].copy()
                if out.ndim == 3:
                    out = out[:, :length]  # the hidden states of the texts' own positions
        return BaseModelOutput(last_hidden_state=torch.from_numpy(np.ascontiguousarray(out)))


class _PooledInGraph(torch.nn.Module):
    """Stands in for a Pooling module whose work the OpenVINO graph does: passes the features on."""

    def __init__(self, pooling: torch.nn.Module):
        super().__init__()
        self._dim = (getattr(pooling, "get_embedding_dimension", None) or pooling.get_sentence_embedding_dimension)()

    def forward(self, features: dict, **kwargs) -> dict:
        return features

    def get_sentence_embedding_dimension(self) -> int:
        return self._dim

    get_embedding_dimension = get_sentence_embedding_dimension


def graph_pooling(model) -> str | None:
    """``"mean"`` or ``"cls"`` where the model's Pooling (right after its Transformer) can run in
    the OpenVINO graph with the same result; ``None`` keeps sentence-transformers' own.

    That is: mean over every token the attention mask keeps, or the first token of
    right-padded batches; prompts pooled with the text (``include_prompt``). Other modes (max,
    weighted, last token, several at once) stay in sentence-transformers.
    """
    if len(model) < 2 or type(model[1]).__name__ != "Pooling":
        return None
    pooling = model[1]
    mode = getattr(pooling, "pooling_mode", None)
    if not getattr(pooling, "include_prompt", True) or mode not in ("mean", "cls"):
        return None
    if mode == "cls" and getattr(model.tokenizer, "padding_side", "right") != "right":
        return None
    return mode


def pooled_graph(graph, pooling: str):
    """``graph`` (optimum's feature-extraction outputs) with ``pooling`` applied to its hidden
    states, in fp32: one output, ``sentence_embedding`` (batch, hidden).

    ``mean``: the sum of the hidden states the attention mask keeps over their count (at least
    1e-9), as sentence-transformers' Pooling computes it; ``cls``: the first token's.
    """
    import openvino as ov
    import openvino.opset13 as ops

    hidden = ops.convert(graph.output(OUTPUT_NAME).get_node().input_value(0), "f32")  # (batch, seq, hidden)
    axis1 = ops.constant(np.array([1], dtype=np.int64))
    if pooling == "mean":
        (mask_in,) = [p for p in graph.get_parameters() if "attention_mask" in p.output(0).get_names()]
        mask = ops.unsqueeze(ops.convert(mask_in, "f32"), ops.constant(np.array([2], dtype=np.int64)))
        total = ops.reduce_sum(ops.multiply(hidden, mask), axis1)
        count = ops.maximum(ops.reduce_sum(mask, axis1), ops.constant(np.array(1e-9, dtype=np.float32)))
        pooled = ops.divide(total, count)
    elif pooling == "cls":
        first, axis = (ops.constant(np.array(v, dtype=np.int64)) for v in (0, 1))
        pooled = ops.gather(hidden, first, axis)
    else:
        raise ValueError(f"pooling {pooling!r}: the graph pools mean or cls")
    result = ops.result(pooled)
    result.output(0).get_tensor().set_names({POOLED_NAME})
    return ov.Model([result], graph.get_parameters(), graph.get_friendly_name())


def load_sentence_model(model_dir: str | Path, backend: str = "torch", onnx_file: str = ONNX_FILE,
                        threads: int = 0, device: str | None = "cpu", precision: str = "auto",
                        static_shapes: int = 0):
    """A ``SentenceTransformer`` of ``model_dir`` whose transformer runs on ``backend``.

    Args:
        model_dir: sentence-transformers folder (for ``onnx``, with an ``onnx/`` export; for
            ``openvino``, with an ``openvino/`` one).
        backend: ``torch``, ``onnx`` or ``openvino``.
        onnx_file: which file of ``onnx/`` to run (``model.onnx``: fp32; ``INT8_FILE``: int8); for
            ``openvino``, a ``.xml`` name picks the file of ``openvino/`` (``OPENVINO_INT8_FILE``:
            int8), any other runs ``openvino_model.xml``.
        threads: onnxruntime / OpenVINO threads (0: their default); torch's are set by the caller.
        device: torch device; the onnx and openvino backends run on the CPU only.
        precision: the openvino backend's precision (``auto``: bf16 on a CPU with bf16 units);
            torch's is applied by the caller (:func:`use_precision`), onnx runs its file's own.
        static_shapes: the openvino backend's static-shape copies (:class:`OvTransformer`): worth
            it where batch shapes repeat, as in a corpus encode; 0 (dynamic only) for a server,
            whose batches come in every shape.

    Returns:
        The model, with ``embedray_backend`` (``torch`` / ``onnx`` / ``openvino``) and, for onnx and
        openvino, ``embedray_precision`` (``fp32`` / ``int8`` / ``bf16``) and ``embedray_onnx_file``
        (the file run) set; for openvino, ``embedray_graph_pooling`` (``mean`` / ``cls`` where the
        graph pools, its Pooling module then a pass-through; ``None``). Such a model encodes; it is
        not one to save.
    """
    from sentence_transformers import SentenceTransformer

    check_backend(backend)
    if backend in ("onnx", "openvino"):
        if backend == "onnx":
            require_onnx()
            path = onnx_path(model_dir, onnx_file)
        else:
            require_openvino()
            path = openvino_path(model_dir, onnx_file)
        if device not in (None, "cpu", "auto"):
            raise ValueError(f"device {device!r}: the {backend} backend runs on the CPU; use --device cpu "
                             "or the torch backend")
        device = "cpu"
    model = SentenceTransformer(str(model_dir), device=None if device == "auto" else device,
                                trust_remote_code=False, local_files_only=True)
    model.embedray_backend = backend
    if backend == "onnx":
        _swap_transformer(model, OrtTransformer(path, _hf_config(model, path, backend), threads))
        model.embedray_precision = onnx_precision(path.name)
    elif backend == "openvino":
        pooling = graph_pooling(model)
        runner = OvTransformer(path, _hf_config(model, path, backend), threads, precision, pooling=pooling,
                               static_shapes=static_shapes)
        _swap_transformer(model, runner)
        if pooling is not None:
            model[0].module_output_name = POOLED_NAME  # the graph returns pooled vectors
            model._modules[list(model._modules)[1]] = _PooledInGraph(model[1])
        model.embedray_graph_pooling = pooling
        model.embedray_precision = "int8" if "int8" in path.name else runner.precision
    if backend != "torch":
        model.embedray_onnx_file = f"{path.parent.name}/{path.name}" if backend == "openvino" else path.name
    return model


def _hf_config(model, path: Path, backend: str):
    """The Hugging Face config of the model's Transformer first module (which the backend replaces)."""
    first = model[0]
    inner = getattr(first, "auto_model", None)
    if type(first).__name__ != "Transformer" or not isinstance(inner, torch.nn.Module):
        raise ValueError(f"{path.parent.parent}: the {backend} backend replaces a Transformer first module, "
                         f"but this model starts with {type(first).__name__}")
    return inner.config


def _swap_transformer(model, runner: torch.nn.Module) -> None:
    """Put ``runner`` in place of the first module's Hugging Face model."""
    first = model[0]
    first.model = runner
    # sentence-transformers filters the features it passes by the model's forward parameters.
    first.model_forward_params = {"input_ids", "attention_mask", "token_type_ids", "return_dict"}


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
        backend: ``torch``; ``onnx``: onnxruntime runs ``onnx/<onnx_file>`` of the folder (an
            ``embedray export``), in that file's precision; ``openvino``: the OpenVINO runtime runs
            ``openvino/openvino_model.xml`` in ``precision`` (:func:`load_sentence_model`), with
            static-shape copies for the batch shapes that repeat (``ENCODE_STATIC_SHAPES``).
        onnx_file: the ``onnx`` backend's file, ``model.onnx`` or ``model_qint8_avx512_vnni.onnx``;
            the ``openvino`` backend's ``openvino_model_qint8_quantized.xml`` for its int8 file.

    Returns:
        A ``sentence_transformers.SentenceTransformer``.
    """
    from sentence_transformers import SentenceTransformer

    check_precision(precision)
    path = resolve_model(name_or_path)
    if backend == "onnx" and precision == "bf16":
        raise ValueError(f"precision bf16 applies to the torch and openvino backends; the onnx backend runs "
                         f"{onnx_file} in its own precision")
    if backend != "torch":
        model = load_sentence_model(path, backend, onnx_file, device=device, precision=precision,
                                    static_shapes=ENCODE_STATIC_SHAPES)
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
