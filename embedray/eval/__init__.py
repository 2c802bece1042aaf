"""Retrieval evaluation: nDCG@k / Recall@k / MRR@k on BEIR splits, tables and JSON reports."""
from embedray.eval.config import EvalConfig
from embedray.eval.metrics import compute_metrics
from embedray.eval.report import format_table
from embedray.eval.retrieval import (EncodeFn, Encoder, EvalResult, Timings, encode_texts,
                                     evaluate_retrieval)

__all__ = ["EvalConfig", "compute_metrics", "format_table", "Encoder",
           "EncodeFn", "EvalResult", "Timings", "encode_texts", "evaluate_retrieval"]
