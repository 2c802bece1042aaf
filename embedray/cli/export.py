"""``embedray export``: add an ONNX (fp32, ``--quantize int8``) or OpenVINO (fp32 weights,
``--quantize int8 --calibration DATA``) export to a model folder."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


FORMATS, QUANTIZE = ("onnx", "openvino"), ("int8",)  # embedray.models.export's, without importing torch
HELP = "export a model folder to ONNX or OpenVINO (each with --quantize int8) for fast CPU serving"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="sentence-transformers folder (or bundled name, with --out) to export")
    p.add_argument("--format", choices=FORMATS, default="onnx", dest="fmt",
                   help="export format: onnx (onnx/, onnxruntime) or openvino (openvino/, bf16 on a CPU "
                        "with bf16 units) (default: %(default)s)")
    p.add_argument("--quantize", choices=QUANTIZE, default=None,
                   help="also write an int8 file: onnx: dynamically quantized (onnx/model_qint8_avx512_vnni.onnx); "
                        "openvino: statically quantized, calibrated on --calibration "
                        "(openvino/openvino_model_qint8_quantized.xml)")
    p.add_argument("--calibration", default=None, metavar="DATA",
                   help="openvino int8: a BEIR folder (or a corpus .jsonl / .parquet) whose documents calibrate "
                        "the activation ranges; a BEIR folder's held-out judgements also check the int8 model's "
                        "nDCG@10 against fp32 (backend auto serves it only at >= 99%%)")
    p.add_argument("--check-split", default=None, metavar="SPLIT",
                   help="the split of --calibration's qrels/ the quality check scores (default: dev where it "
                        "exists, else test)")
    p.add_argument("--calibration-samples", type=int, default=300, metavar="N",
                   help="corpus texts sampled for calibration (default: %(default)s)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="folder for the exported copy (replaced atomically); default: MODEL itself")


def run(args: argparse.Namespace) -> int:
    """``embedray export``: add an ONNX (and int8) or OpenVINO export to a model folder; prints the record."""
    from embedray.eval.export_check import check_int8_quality  # torch: only when run
    from embedray.models.export import export_model

    record = export_model(args.model, args.out, args.fmt, args.quantize, calibration=args.calibration,
                          check_split=args.check_split, calibration_samples=args.calibration_samples,
                          quality_check=check_int8_quality)
    out = Path(args.out).expanduser().resolve() if args.out else Path(args.model).expanduser().resolve()
    print(json.dumps({"model": str(out), **record}, indent=2))
    return 0
