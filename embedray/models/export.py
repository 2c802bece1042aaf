"""``embedray export``: write a model folder's ONNX export (fp32, and int8 for CPU serving) or
its OpenVINO export (run in bf16 on a CPU with bf16 units, fp32 elsewhere).

The result is the same sentence-transformers folder with sentence-transformers' backend layout
added: ``onnx/model.onnx`` (fp32) and, with ``--quantize int8``,
``onnx/model_qint8_avx512_vnni.onnx``; or, with ``--format openvino``,
``openvino/openvino_model.xml`` + ``.bin`` (fp32 weights; the runtime's precision hint decides
how it computes) and, with ``--quantize int8 --calibration DATA``,
``openvino/openvino_model_qint8_quantized.xml`` (static int8: weights and activations, the
activation ranges calibrated on texts of the user's corpus). Only the transformer is exported;
Pooling, a rotation ``Dense`` and ``Normalize`` stay in ``modules.json`` and run as before, and
``embedray.json`` (Matryoshka dims, metrics) travels with the copy, which records each format's
export under ``"export"`` → ``"onnx"`` / ``"openvino"``. An export of one format keeps the other's files.

The graph comes from ``torch.onnx.export`` (the torch.export-based exporter, with eager
attention; the legacy TorchScript exporter traces transformers 5's attention masks wrongly), the
int8 file from onnxruntime's dynamic quantization with the settings of optimum's ``avx512_vnni`` preset
(int8 symmetric per-channel weights, uint8 activations, no reduced range), which is what
sentence-transformers' ``export_dynamic_quantized_onnx_model`` calls. Both are written here
because that helper and its fp32 export need optimum-onnx, which does not install beside
transformers 5 (see :mod:`embedray.models.backends`). The OpenVINO model is OpenVINO's own
conversion (``openvino.convert_model``) of that fp32 ONNX graph; its int8 file is NNCF's
post-training quantization of it with the settings of sentence-transformers'
``export_static_quantized_openvino_model`` (optimum-intel's defaults: ``mixed`` preset, the
transformer model type with SmoothQuant, fast bias correction), calibrated on a seeded sample of
the corpus rather than a hub dataset. Every export is checked against the torch model on fixed
probe texts before the folder is renamed into place; the int8 file also by retrieval on held-out
queries where ``DATA`` is a BEIR folder with judgements
(:func:`embedray.eval.export_check.check_int8_quality`, passed in by ``embedray export``), and
``backend: auto`` serves it only where that check passed.
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from embedray.data.remote import is_uri, redact
from embedray.models.backends import (INT8_FILE, ONNX_DIR, ONNX_FILE, OPENVINO_DIR,
                                      OPENVINO_FILE, OPENVINO_INT8_FILE, OUTPUT_NAME, has_openvino_export,
                                      load_sentence_model, require_onnx, require_openvino)

log = logging.getLogger(__name__)

FORMATS = ("onnx", "openvino")
#: ``check(folder, data, split) -> record``: the int8 OpenVINO file's retrieval quality check.
QualityCheck = Callable[[Path, Path, str], dict]
QUANTIZE = ("int8",)  # also in embedray.cli.export, which must not import torch
EXPORT_KEY = "export"
OPSET = 18
#: Worst fp32 deviation from torch (max |difference| of normalised embeddings) an export may have.
FP32_TOLERANCE = 1e-4
#: Below this cosine to torch on a probe text, int8 has broken the model rather than rounded it.
INT8_WARN_COSINE = 0.95
#: Corpus texts the int8 OpenVINO export calibrates its activation ranges on (a seeded sample).
CALIBRATION_SAMPLES = 300
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
                 quantize: str | None = None, calibration: str | Path | None = None,
                 check_split: str | None = None, calibration_samples: int = CALIBRATION_SAMPLES,
                 quality_check: QualityCheck | None = None) -> dict:
    """Export a sentence-transformers folder's transformer to ONNX or OpenVINO (and int8), checked and atomic.

    Args:
        model: sentence-transformers folder (or a bundled model name, with ``out``).
        out: target folder; default: ``model`` itself (the export is added beside the weights,
            sentence-transformers' convention). Built beside it and renamed into place.
        fmt: ``onnx`` or ``openvino``.
        quantize: ``None`` (fp32 only) or ``int8``: for onnx, dynamic int8 (AVX512-VNNI
            settings); for openvino, static int8 calibrated on ``calibration``.
        calibration: openvino int8 only, required there: a BEIR folder (its ``corpus.jsonl`` /
            ``.parquet``) or a corpus file whose texts calibrate the activation ranges; a BEIR
            folder with ``qrels/<check_split>.tsv`` also checks retrieval quality.
        check_split: the judged split the int8 quality check scores (default ``dev`` where the
            folder has it, else ``test``: held-out queries, never ``train``).
        calibration_samples: corpus texts sampled for calibration.
        quality_check: ``check(folder, data, split) -> record`` run on the staged copy for the
            int8 OpenVINO file (:func:`embedray.eval.export_check.check_int8_quality`, which
            ``embedray export`` passes); without one the file records no check.

    Returns:
        What was recorded under ``"export"`` → ``fmt`` in the folder's ``embedray.json``: per
        file, its precision, size and agreement with the torch model on :data:`PROBE_TEXTS`
        (for openvino, in fp32 and in bf16; for its int8 file, the retrieval quality check).

    Raises:
        ValueError: an unknown format or quantization, a bundled model without ``out``, a
            missing or misplaced ``calibration``, or an export that does not reproduce the torch model.
        MissingExtraError: onnxruntime / onnx / onnxscript (or openvino, nncf) are not installed.
    """
    from embedray.atomic import replace_dir
    from embedray.models.bundled import BUNDLED, resolve_model

    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not supported; choose one of {', '.join(FORMATS)}")
    if quantize is not None and quantize not in QUANTIZE:
        raise ValueError(f"quantize {quantize!r} is not supported; choose one of {', '.join(QUANTIZE)} "
                         "(or leave it out for fp32 only)")
    if calibration is not None and (fmt != "openvino" or quantize is None):
        raise ValueError("--calibration applies to --format openvino --quantize int8 (the onnx int8 file is "
                         "quantized dynamically, without calibration)")
    if fmt == "openvino" and quantize is not None and calibration is None:
        raise ValueError("--format openvino --quantize int8 calibrates on your own texts: pass --calibration DATA "
                         "(a BEIR folder, whose held-out judgements also check the int8 model's retrieval "
                         "quality, or a corpus .jsonl / .parquet file)")
    if calibration_samples < 1:
        raise ValueError(f"calibration_samples must be >= 1, got {calibration_samples}")
    if out is None and (str(model) in BUNDLED or str(model).startswith("tiny-bert@")):
        raise ValueError(f"{model!r} is a bundled model (its folder belongs to an installed package or the "
                         "cache): pass --out DIR for the exported copy")
    if out is None and is_uri(str(model)):
        raise ValueError(f"{redact(str(model))}: a URI (its local copy is a cache): pass --out DIR for the exported copy")
    require_onnx()
    _require_exporter()
    if fmt == "openvino":
        require_openvino()
    int8_plan = None
    if fmt == "openvino" and quantize is not None:
        require_nncf()
        int8_plan = _calibration_plan(calibration, check_split)
    src = resolve_model(model)
    target = Path(out).expanduser().resolve() if out is not None else src
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.export-") as tmp:
        staged = Path(tmp) / "model"
        # The old files of this format are not copied: the new export replaces all of them.
        own = ONNX_DIR if fmt == "onnx" else OPENVINO_DIR
        shutil.copytree(src, staged, ignore=lambda d, names: [n for n in names if n.startswith(".")
                                                              or (Path(d) == src and n == own)])
        if fmt == "onnx":
            record = _export_into(staged, quantize)
        else:
            record = _export_openvino(staged, int8_plan, calibration_samples, quality_check)
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


def _export_openvino(folder: Path, int8_plan: dict | None = None,
                     calibration_samples: int = CALIBRATION_SAMPLES, quality_check: QualityCheck | None = None) -> dict:
    """Write ``openvino/`` into the copy ``folder`` from a fresh fp32 ONNX graph, check it in fp32
    (same tolerance as the ONNX export) and in bf16, record it in its embedray.json; with
    ``int8_plan`` (:func:`_calibration_plan`) also its calibrated int8 file, checked."""
    import openvino as ov

    reference, expected = _reference(folder)
    out = folder / OPENVINO_DIR
    out.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="embedray-export-onnx-") as tmp:
        graph = Path(tmp) / ONNX_FILE
        _export_fp32(reference, graph)
        fp32_model = ov.convert_model(str(graph))
        ov.save_model(fp32_model, str(out / OPENVINO_FILE), compress_to_fp16=False)
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
    record = {"format": "openvino", "openvino": ov.__version__.split("-")[0],
              "files": {f"{OPENVINO_DIR}/{OPENVINO_FILE}": {"precision": "fp32 weights",
                                                            "size_mb": _ir_size_mb(out / OPENVINO_FILE),
                                                            **{f"{p}_{k}": v for p, c in checks.items()
                                                               for k, v in c.items()}}}}
    if int8_plan is not None:
        texts = calibration_texts(int8_plan["corpus"], calibration_samples)
        quantize_openvino_int8(fp32_model, reference, texts, out / OPENVINO_INT8_FILE)
        check = _agreement(folder, OPENVINO_INT8_FILE, expected, backend="openvino")
        if check["min_cosine"] < INT8_WARN_COSINE:
            log.warning("%s: int8 embeddings reach only cosine %.4f to torch on the probe texts",
                        OPENVINO_INT8_FILE, check["min_cosine"])
        quality = None
        if int8_plan["split"] is not None and quality_check is not None:
            quality = quality_check(folder, int8_plan["data"], int8_plan["split"])
        else:
            why = (f"{int8_plan['data']} is not a BEIR folder with held-out judgements"
                   if int8_plan["split"] is None else "none was asked for")
            log.warning("%s: no quality check (%s), so backend auto does not serve it; pass --backend openvino "
                        "--onnx-file %s to serve it anyway", OPENVINO_INT8_FILE, why, OPENVINO_INT8_FILE)
        record["files"][f"{OPENVINO_DIR}/{OPENVINO_INT8_FILE}"] = {
            "precision": "int8", "size_mb": _ir_size_mb(out / OPENVINO_INT8_FILE),
            "calibration": {"data": str(int8_plan["data"]), "texts": len(texts)}, **check, "quality": quality}
    _record(folder, "openvino", record)
    return record


def _ir_size_mb(xml: Path) -> float:
    """MiB of an OpenVINO model: its ``.xml`` graph and ``.bin`` weights."""
    return round((xml.stat().st_size + xml.with_suffix(".bin").stat().st_size) / 2**20, 2)


def require_nncf() -> None:
    """The int8 OpenVINO export needs NNCF (in the ``[openvino]`` extra)."""
    import importlib.util

    from embedray.models.backends import OPENVINO_EXTRA, MissingExtraError

    if importlib.util.find_spec("nncf") is None:
        raise MissingExtraError(f"embedray export --format openvino --quantize int8 needs nncf, which is not "
                                f"installed: {OPENVINO_EXTRA}")


def _calibration_plan(calibration: str | Path, check_split: str | None) -> dict:
    """Where the calibration texts come from and which split checks quality, checked up front.

    Returns:
        ``{"data": resolved path, "corpus": corpus file, "split": split name or None}``;
        ``split`` is ``None`` for a bare corpus file or a folder without held-out judgements.
    """
    from embedray.data.beir import beir_file

    data = Path(calibration).expanduser().resolve()
    if data.is_dir():
        corpus = beir_file(data, "corpus")
        if not corpus.is_file():
            raise ValueError(f"--calibration {data}: no corpus.jsonl or corpus.parquet in it")
        qrels = data / "qrels"
        if check_split is None:
            check_split = next((s for s in ("dev", "test") if (qrels / f"{s}.tsv").is_file()), None)
        elif not (qrels / f"{check_split}.tsv").is_file():
            raise ValueError(f"--check-split {check_split}: {qrels / f'{check_split}.tsv'} does not exist")
        if check_split == "train":
            raise ValueError("--check-split train: the quality check scores held-out queries (dev or test), "
                             "not the ones a model was trained on")
        has_queries = beir_file(data, "queries").is_file()
        return {"data": data, "corpus": corpus, "split": check_split if has_queries else None}
    if not data.is_file():
        raise ValueError(f"--calibration {data}: no such file or folder")
    if data.suffix.lower() not in (".jsonl", ".parquet"):
        raise ValueError(f"--calibration {data}: expected a BEIR folder or a corpus .jsonl / .parquet file")
    if check_split is not None:
        raise ValueError(f"--check-split {check_split} needs --calibration to be a BEIR folder with qrels/")
    return {"data": data, "corpus": data, "split": None}


def calibration_texts(corpus: Path, n: int, seed: int = 0) -> list[str]:
    """A seeded uniform sample of ``n`` texts (title + text) of a corpus file, in one pass and
    bounded memory (reservoir sampling), in corpus order."""
    import random

    from embedray.data.beir import iter_corpus

    rng = random.Random(seed)
    kept: list[tuple[int, str]] = []
    for i, doc in enumerate(iter_corpus(corpus)):
        if len(kept) < n:
            kept.append((i, doc.text_for_model))
        elif (j := rng.randrange(i + 1)) < n:
            kept[j] = (i, doc.text_for_model)
    if not kept:
        raise ValueError(f"{corpus}: no documents to calibrate on")
    return [text for _, text in sorted(kept)]


def quantize_openvino_int8(fp32_model, reference, texts: list[str], path: Path) -> None:
    """NNCF post-training int8 quantization of an OpenVINO model, calibrated on ``texts``.

    The settings of optimum-intel's ``OVQuantizationConfig()`` that sentence-transformers'
    export uses: ``mixed`` preset (symmetric weights, asymmetric activations), transformer model
    type, fast bias correction, no overflow fix. One text per calibration sample, tokenized as the
    model encodes it (its tokenizer and max sequence length, unpadded).
    """
    import nncf
    import openvino as ov

    names = [p.get_any_name() for p in fp32_model.inputs]
    samples = []
    for text in texts:
        enc = reference.tokenizer([text], truncation=True, max_length=reference.max_seq_length,
                                  return_tensors="np")
        samples.append({n: (enc[n] if n in enc else np.zeros_like(enc["input_ids"])).astype(np.int64)
                        for n in names})
    advanced = nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix.DISABLE)
    # NNCF draws its progress bars on stdout, where the command prints its JSON record.
    with contextlib.redirect_stdout(sys.stderr), _quiet(("nncf",)):
        quantized = nncf.quantize(fp32_model, nncf.Dataset(samples), preset=nncf.QuantizationPreset.MIXED,
                                  model_type=nncf.ModelType.TRANSFORMER, subset_size=len(samples),
                                  fast_bias_correction=True, advanced_parameters=advanced)
    ov.save_model(quantized, str(path), compress_to_fp16=False)


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
