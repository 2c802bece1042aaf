"""``embedray export``: write a model folder's ONNX export (fp32, and int8 for CPU serving) or
its OpenVINO export (run in bf16 on a CPU with bf16 units, fp32 elsewhere).

The result is the same sentence-transformers folder with sentence-transformers' backend layout
added: ``onnx/model.onnx`` (fp32) and, with ``--quantize int8``,
``onnx/model_qint8_avx512_vnni.onnx``; or, with ``--format openvino``,
``openvino/openvino_model.xml`` + ``.bin`` (fp32 weights; the runtime's precision hint decides
how it computes). Only the transformer is exported; Pooling, a rotation ``Dense`` and
``Normalize`` stay in ``modules.json`` and run as before, and ``embedray.json`` (Matryoshka
dims, metrics) travels with the copy, which records each format's export under
``"export"`` → ``"onnx"`` / ``"openvino"``. An export of one format keeps the other's files.

The graph comes from ``torch.onnx.export`` (the torch.export-based exporter, with eager
attention; the legacy TorchScript exporter traces transformers 5's attention masks wrongly), the
int8 file from onnxruntime's dynamic quantization with the settings of optimum's ``avx512_vnni`` preset
(int8 symmetric per-channel weights, uint8 activations, no reduced range), which is what
sentence-transformers' ``export_dynamic_quantized_onnx_model`` calls. Both are written here
because that helper and its fp32 export need optimum-onnx, which does not install beside
transformers 5 (see :mod:`embedray.models.backends`). The OpenVINO model is OpenVINO's own
conversion (``openvino.convert_model``) of that fp32 ONNX graph. Every export is checked against
the torch model on fixed probe texts before the folder is renamed into place.
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from embedray.models.backends import (INT8_FILE, ONNX_DIR, ONNX_FILE, OPENVINO_DIR, OPENVINO_FILE, OUTPUT_NAME,
                                      has_openvino_export, load_sentence_model, require_onnx,
                                      require_openvino)

log = logging.getLogger(__name__)

FORMATS = ("onnx", "openvino")
QUANTIZE = ("int8",)  # also in embedray.cli.export, which must not import torch
EXPORT_KEY = "export"
OPSET = 18
#: Worst fp32 deviation from torch (max |difference| of normalised embeddings) an export may have.
FP32_TOLERANCE = 1e-4
#: Below this cosine to torch on a probe text, int8 has broken the model rather than rounded it.
INT8_WARN_COSINE = 0.95
#: Below this cosine to torch fp32 on a probe text, bf16 has broken the model rather than rounded it.
BF16_WARN_COSINE = 0.99
#: Mixed lengths and scripts; the check encodes them with both backends.
PROBE_TEXTS = [
    "hello world",
    "How do I compress a folder with zstd on the command line?",
    "Debian is a Linux distribution; apt installs and upgrades its packages, resolving their "
    "dependencies, and keeps them up to date with security fixes.",
    "Café, naïve, 東京 — unicode in a query.",
    "x",
]


def export_model(model: str | Path, out: str | Path | None = None, fmt: str = "onnx",
                 quantize: str | None = None) -> dict:
    """Export a sentence-transformers folder's transformer to ONNX (and int8), checked and atomic.

    Args:
        model: sentence-transformers folder (or a bundled model name, with ``out``).
        out: target folder; default: ``model`` itself (the export is added beside the weights,
            sentence-transformers' convention). Built beside it and renamed into place.
        fmt: ``onnx`` or ``openvino``.
        quantize: ``None`` (fp32 only) or ``int8`` (dynamic int8, AVX512-VNNI settings; onnx only).

    Returns:
        What was recorded under ``"export"`` → ``fmt`` in the folder's ``embedray.json``: per
        file, its precision, size and agreement with the torch model on :data:`PROBE_TEXTS`
        (for openvino, in fp32 and in bf16).

    Raises:
        ValueError: an unknown format or quantization, a bundled model without ``out``, or an
            export that does not reproduce the torch model.
        MissingExtraError: onnxruntime / onnx / onnxscript (or openvino) are not installed.
    """
    from embedray.atomic import replace_dir
    from embedray.models.bundled import BUNDLED, resolve_model

    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not supported; choose one of {', '.join(FORMATS)}")
    if quantize is not None and quantize not in QUANTIZE:
        raise ValueError(f"quantize {quantize!r} is not supported; choose one of {', '.join(QUANTIZE)} "
                         "(or leave it out for fp32 only)")
    if quantize is not None and fmt != "onnx":
        raise ValueError(f"--quantize {quantize} applies to --format onnx; the {fmt} export runs in bf16 "
                         "where the CPU has bf16 units (precision auto), fp32 elsewhere")
    if out is None and (str(model) in BUNDLED or str(model).startswith("tiny-bert@")):
        raise ValueError(f"{model!r} is a bundled model (its folder belongs to an installed package or the "
                         "cache): pass --out DIR for the exported copy")
    require_onnx()
    _require_exporter()
    if fmt == "openvino":
        require_openvino()
    src = resolve_model(model)
    target = Path(out).expanduser().resolve() if out is not None else src
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.export-") as tmp:
        staged = Path(tmp) / "model"
        # The old files of this format are not copied: the new export replaces all of them.
        own = ONNX_DIR if fmt == "onnx" else OPENVINO_DIR
        shutil.copytree(src, staged, ignore=lambda d, names: [n for n in names if n.startswith(".")
                                                              or (Path(d) == src and n == own)])
        record = _export_into(staged, quantize) if fmt == "onnx" else _export_openvino(staged)
        replace_dir(staged, target)
    return record


def _reference(folder: Path):
    """The folder's torch model (eval mode) and its normalised embeddings of :data:`PROBE_TEXTS`."""
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(folder), device="cpu", trust_remote_code=False, local_files_only=True)
    reference.eval()
    expected = reference.encode(PROBE_TEXTS, convert_to_numpy=True, normalize_embeddings=True,
                                show_progress_bar=False)  # (n, dim)
    return reference, expected


def _export_into(folder: Path, quantize: str | None) -> dict:
    """Write ``onnx/`` files into the copy ``folder``, check them, record them in its embedray.json."""
    reference, expected = _reference(folder)
    onnx_dir = folder / ONNX_DIR
    onnx_dir.mkdir(exist_ok=True)
    files = {ONNX_FILE: "fp32"}
    _export_fp32(reference, onnx_dir / ONNX_FILE)
    if quantize == "int8":
        quantize_int8(onnx_dir / ONNX_FILE, onnx_dir / INT8_FILE)
        files[INT8_FILE] = "int8"
    record = {"format": "onnx", "opset": OPSET, "files": {}}
    for name, precision in files.items():
        check = _agreement(folder, name, expected)
        if precision == "fp32" and check["max_abs_diff"] > FP32_TOLERANCE:
            raise ValueError(f"the ONNX export differs from the torch model by {check['max_abs_diff']:.2g} "
                             f"(> {FP32_TOLERANCE}) on the probe texts; the graph is wrong: please report "
                             "it with the model's config.json")
        if precision == "int8" and check["min_cosine"] < INT8_WARN_COSINE:
            log.warning("%s: int8 embeddings reach only cosine %.4f to torch on the probe texts; "
                        "measure retrieval quality before serving it", name, check["min_cosine"])
        size_mb = round((onnx_dir / name).stat().st_size / 2**20, 2)
        record["files"][name] = {"precision": precision, "size_mb": size_mb, **check}
    _record(folder, "onnx", record)
    return record


def _export_openvino(folder: Path) -> dict:
    """Write ``openvino/`` into the copy ``folder`` from a fresh fp32 ONNX graph, check it in fp32
    (same tolerance as the ONNX export) and in bf16, record it in its embedray.json."""
    import openvino as ov

    reference, expected = _reference(folder)
    out = folder / OPENVINO_DIR
    out.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="embedray-export-onnx-") as tmp:
        graph = Path(tmp) / ONNX_FILE
        _export_fp32(reference, graph)
        ov.save_model(ov.convert_model(str(graph)), str(out / OPENVINO_FILE), compress_to_fp16=False)
    checks = {p: _agreement(folder, OPENVINO_FILE, expected, backend="openvino", precision=p)
              for p in ("fp32", "bf16")}
    if checks["fp32"]["max_abs_diff"] > FP32_TOLERANCE:
        raise ValueError(f"the OpenVINO export differs from the torch model by {checks['fp32']['max_abs_diff']:.2g} "
                         f"(> {FP32_TOLERANCE}) in fp32 on the probe texts; the conversion is wrong: please "
                         "report it with the model's config.json")
    if checks["bf16"]["min_cosine"] < BF16_WARN_COSINE:
        log.warning("openvino bf16 embeddings reach only cosine %.4f to torch fp32 on the probe texts; run "
                    "it with precision fp32 or measure retrieval quality before serving it",
                    checks["bf16"]["min_cosine"])
    size_mb = round(sum(f.stat().st_size for f in out.iterdir()) / 2**20, 2)
    record = {"format": "openvino", "openvino": ov.__version__.split("-")[0],
              "files": {f"{OPENVINO_DIR}/{OPENVINO_FILE}": {"precision": "fp32 weights", "size_mb": size_mb,
                                                            **{f"{p}_{k}": v for p, c in checks.items()
                                                               for k, v in c.items()}}}}
    _record(folder, "openvino", record)
    return record


def _require_exporter() -> None:
    """torch's ONNX exporter needs onnxscript; say how to install it when it is missing."""
    import importlib.util

    from embedray.models.backends import ONNX_EXTRA, MissingExtraError

    if importlib.util.find_spec("onnxscript") is None:
        raise MissingExtraError(f"embedray export needs onnxscript (torch's ONNX exporter), which is not "
                                f"installed: {ONNX_EXTRA}")


class _LastHidden(torch.nn.Module):
    """The Hugging Face model as a function of named int64 inputs → ``last_hidden_state``."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True,
                          **extra).last_hidden_state


def _export_fp32(model, path: Path) -> None:
    """Export the transformer of a ``SentenceTransformer`` to ``path`` (dynamic batch and length)."""
    if type(model[0]).__name__ != "Transformer":
        raise ValueError(f"only a Hugging Face transformer first module exports to ONNX; this model starts "
                         f"with {type(model[0]).__name__}")
    hf = model[0].auto_model.eval()
    # Plain MatMul/Softmax attention: the int8 quantizer and onnxruntime's kernels handle it
    # much better than the exporter's lowering of scaled_dot_product_attention (README: ONNX).
    if hasattr(hf, "set_attn_implementation"):
        hf.set_attn_implementation("eager")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids")
             if n in model.tokenizer.model_input_names or n != "token_type_ids"]
    # Two texts of different lengths: a padded batch, so neither axis is specialised to 1.
    enc = model.tokenizer(PROBE_TEXTS[:2], padding=True, return_tensors="pt")
    inputs = {n: enc[n] for n in names}
    batch, length = torch.export.Dim("batch_size"), torch.export.Dim("sequence_length")
    # The exporter reports its steps on stdout, where the command prints its JSON record.
    with torch.no_grad(), contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings(), _quiet():
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated", category=FutureWarning)
        program = torch.onnx.export(_LastHidden(hf).eval(), (), kwargs=inputs, dynamo=True, verbose=False,
                                    input_names=names, output_names=[OUTPUT_NAME], opset_version=OPSET,
                                    dynamic_shapes={n: {0: batch, 1: length} for n in names})
    program.save(str(path))


@contextlib.contextmanager
def _quiet(names: tuple[str, ...] = ("", "onnxscript", "onnx_ir", "torch.onnx")):
    """Loggers of the exporter and the quantizer at WARNING for the duration: their INFO lines
    (one per rewritten or skipped node) say nothing a user acts on."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    # Its shape-inference pre-pass fails on torch.export graphs ("Incomplete symbolic shape
    # inference") and the quantized model is the same without it.
    advice = _DropMessage("pre-processing before quantization")
    loggers[0].addFilter(advice)
    try:
        yield
    finally:
        loggers[0].removeFilter(advice)
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class _DropMessage(logging.Filter):
    """Drops log records whose message contains ``text``."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization of an ONNX file, with optimum's ``avx512_vnni`` settings.

    Weights int8, symmetric, per channel; activations uint8, asymmetric, quantized at run time;
    every operator type onnxruntime's integer-ops quantizer handles (MatMul, Gather, ...).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    with _quiet():  # the quantizer logs every node it skips, on the root logger
        quantize_dynamic(src, dst, op_types_to_quantize=list(IntegerOpsRegistry), per_channel=True,
                         reduce_range=False, weight_type=QuantType.QInt8,
                         extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})


def _agreement(folder: Path, file_name: str, expected: np.ndarray, backend: str = "onnx",
               precision: str = "auto") -> dict:
    """Max |difference| and min cosine of the exported file's normalised probe embeddings to torch's."""
    model = load_sentence_model(folder, backend=backend, onnx_file=file_name, precision=precision)
    got = model.encode(PROBE_TEXTS, convert_to_numpy=True, normalize_embeddings=True,
                       show_progress_bar=False)  # (n, dim)
    cosine = (got * expected).sum(axis=1)  # (n,)
    return {"max_abs_diff": float(np.abs(got - expected).max()), "min_cosine": round(float(cosine.min()), 6)}


def _record(folder: Path, fmt: str, record: dict) -> None:
    meta_path = folder / "embedray.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
    exports = meta.get(EXPORT_KEY) if isinstance(meta.get(EXPORT_KEY), dict) else {}
    if "format" in exports:  # one export recorded at the top level by an earlier version
        exports = {exports["format"]: exports}
    exports[fmt] = record
    meta[EXPORT_KEY] = exports
    meta_path.write_text(json.dumps(meta, indent=2), encoding="utf-8")


#: Under the model cache (``$EMBEDRAY_CACHE``): converted copies, one folder per source digest.
CONVERTED_DIR = "openvino"
#: Seconds a process waits for another one converting the same folder.
CONVERT_LOCK_TIMEOUT_S = 1800


def folder_digest(model_dir: str | Path) -> str:
    """blake2b of a model folder's files (relative names and bytes); its own ``onnx/`` and
    ``openvino/`` exports and hidden files are left out, as :func:`export_model` leaves them."""
    from embedray.digest import files_digest

    root = Path(model_dir).resolve()
    skip = {ONNX_DIR, OPENVINO_DIR}
    return files_digest(root, sorted(p for p in root.rglob("*") if p.is_file()
                                     and not any(part.startswith(".") for part in p.relative_to(root).parts)
                                     and p.relative_to(root).parts[0] not in skip))


def openvino_conversion_blocker(model_dir: str | Path) -> str | None:
    """Why ``model_dir`` cannot be converted to OpenVINO here, or ``None`` when it can: the
    runtime and the exporter must be installed and the folder's first module must be a Hugging
    Face ``Transformer`` with safetensors weights (what :func:`export_model` exports)."""
    import importlib.util

    missing = [m for m in ("openvino", "onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        return f"{', '.join(missing)} not installed"
    root = Path(model_dir)
    try:
        modules = json.loads((root / "modules.json").read_text(encoding="utf-8"))
        first = modules[0]["type"] if modules else ""
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return "no readable modules.json"
    if not str(first).endswith(".Transformer"):
        return f"its first module is {first}, not a Transformer"
    if not any(root.glob("*.safetensors")):
        return "no safetensors weights"
    return None


def converted_openvino(model_dir: str | Path) -> Path:
    """A copy of ``model_dir`` with its OpenVINO export, converted once per folder content.

    The copy lives in ``$EMBEDRAY_CACHE/openvino/<digest of the folder>-<openvino version>``;
    the next call (any process on this machine) finds it there. Processes converting the same
    folder at once wait for the first one (a file lock); the copy is renamed into place only
    when complete and checked (:func:`export_model`).

    Raises:
        ValueError: the folder can't be converted (:func:`openvino_conversion_blocker`) or the
            conversion does not reproduce the torch model.
    """
    import openvino as ov
    from filelock import FileLock

    from embedray.models.bundled import cache_dir

    src = Path(model_dir).resolve()
    if has_openvino_export(src):
        return src
    if (why := openvino_conversion_blocker(src)) is not None:
        raise ValueError(f"{src}: can't convert it to OpenVINO: {why}")
    root = cache_dir() / CONVERTED_DIR
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{folder_digest(src)}-{ov.__version__.split('-')[0]}"
    done = target / OPENVINO_DIR / OPENVINO_FILE
    if done.is_file():
        return target
    with FileLock(str(target) + ".lock", timeout=CONVERT_LOCK_TIMEOUT_S):
        if not done.is_file():
            log.warning("converting %s to OpenVINO once (cached in %s)", src, target)
            export_model(src, target, fmt="openvino")
    return target
