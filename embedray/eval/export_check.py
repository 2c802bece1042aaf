"""The int8 OpenVINO export's quality check: retrieval on held-out judgements, int8 against fp32.

Here rather than in :mod:`embedray.models.export` because it evaluates retrieval (this package);
``embedray export`` passes it to :func:`embedray.models.export.export_model`, which runs it on the
staged copy before the folder is renamed into place.
"""
from __future__ import annotations

import logging
from pathlib import Path

from embedray.models.backends import (ENCODE_STATIC_SHAPES, INT8_MIN_NDCG_RATIO, OPENVINO_FILE, OPENVINO_INT8_FILE,
                                      load_sentence_model)

log = logging.getLogger(__name__)


def check_int8_quality(folder: Path, data: Path, split: str) -> dict:
    """nDCG@10 of the folder's int8 OpenVINO file and of its fp32 OpenVINO file (torch fp32
    within the export's tolerance) on ``split`` of the BEIR folder ``data``; ``passed`` when the
    int8 one reaches :data:`INT8_MIN_NDCG_RATIO` of fp32's."""
    from embedray.data.beir import load_beir
    from embedray.eval.retrieval import evaluate_retrieval

    beir = load_beir(data, split, missing_docs="keep")
    scores = {}
    for name, file, precision in (("int8", OPENVINO_INT8_FILE, "auto"), ("fp32", OPENVINO_FILE, "fp32")):
        log.info("int8 quality check: encoding %s (%d documents, %d queries) with the %s file",
                 data.name, len(beir.corpus), len(beir.qrels), name)
        model = load_sentence_model(folder, backend="openvino", onnx_file=file, precision=precision,
                                    static_shapes=ENCODE_STATIC_SHAPES)  # a corpus encode
        scores[name] = evaluate_retrieval(model, beir).metrics["ndcg@10"]
    ratio = scores["int8"] / scores["fp32"] if scores["fp32"] > 0 else 1.0
    passed = ratio >= INT8_MIN_NDCG_RATIO
    if not passed:
        log.warning("%s: nDCG@10 %.4f on %s/%s is %.1f%% of fp32's %.4f (< %.0f%%): kept, but backend auto "
                    "does not serve it", OPENVINO_INT8_FILE, scores["int8"], data.name, split, 100 * ratio,
                    scores["fp32"], 100 * INT8_MIN_NDCG_RATIO)
    return {"data": str(data), "split": split, "queries": len(beir.qrels), "ndcg@10": round(scores["int8"], 4),
            "fp32_ndcg@10": round(scores["fp32"], 4), "ratio": round(ratio, 4), "min_ratio": INT8_MIN_NDCG_RATIO,
            "passed": passed}
