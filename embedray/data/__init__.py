"""Data formats (BEIR folders, FlagEmbedding JSONL, Parquet with ids), validation with
file:line errors, and the built-in Debian descriptions dataset."""
from embedray.data.beir import (Document, RetrievalData, iter_corpus, iter_qrels, iter_queries, load_beir,
                                write_beir)
from embedray.data.debian import DebianStats, build_debian
from embedray.data.errors import DataError, OnError, SkipReport
from embedray.data.flag import FlagExample, flag_to_beir, iter_flag_jsonl, text_id, write_flag_jsonl
from embedray.data.parquet import (
    TrainPair,
    iter_corpus_parquet,
    iter_pairs,
    iter_queries_parquet,
    write_corpus_parquet,
    write_pairs_parquet,
    write_queries_parquet,
)

__all__ = [
    "DataError", "DebianStats", "Document", "FlagExample", "OnError", "RetrievalData", "SkipReport",
    "TrainPair", "build_debian", "flag_to_beir", "iter_corpus", "iter_corpus_parquet",
    "iter_flag_jsonl", "iter_pairs", "iter_qrels", "iter_queries", "iter_queries_parquet",
    "load_beir", "text_id", "write_beir", "write_corpus_parquet", "write_flag_jsonl",
    "write_pairs_parquet", "write_queries_parquet",
]
