"""``embedray export``: add an ONNX (fp32, ``--quantize int8``) or OpenVINO export to a model folder."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


FORMATS, QUANTIZE = ("onnx", "openvino"), ("int8",)  # embedray.models.export's, without importing torch
HELP = "export a model folder to ONNX (fp32, --quantize int8) or OpenVINO for fast CPU serving"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="sentence-transformers folder (or bundled name, with --out) to export")
    p.add_argument("--format", choices=FORMATS, default="onnx", dest="fmt",
                   help="export format: onnx (onnx/, onnxruntime) or openvino (openvino/, bf16 on a CPU "
                        "with bf16 units) (default: %(default)s)")
    p.add_argument("--quantize", choices=QUANTIZE, default=None,
                   help="also write a dynamically quantized int8 file (onnx/model_qint8_avx512_vnni.onnx; onnx only)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="folder for the exported copy (replaced atomically); default: MODEL itself")


def run(args: argparse.Namespace) -> int:
    """``embedray export``: add an ONNX (and int8) or OpenVINO export to a model folder; prints the record."""
    from embedray.models.export import export_model  # torch: only when run

    record = export_model(args.model, args.out, args.fmt, args.quantize)
    out = Path(args.out).expanduser().resolve() if args.out else Path(args.model).expanduser().resolve()
    print(json.dumps({"model": str(out), **record}, indent=2))
    return 0
