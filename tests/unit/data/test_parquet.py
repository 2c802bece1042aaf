import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedray.data import (DataError, Document, SkipReport, TrainPair, iter_corpus_parquet, iter_pairs,
                           iter_queries_parquet, write_corpus_parquet, write_pairs_parquet,
                           write_queries_parquet)
from embedray.data import parquet as pmod


def _table(path, **columns):
    pq.write_table(pa.table(columns), path)
    return path


def test_roundtrip(tmp_path):
    docs = [Document("d1", "first text", "T"), Document("d2", "second text")]
    queries = [("q1", "a question"), ("q2", "another")]
    pairs = [TrainPair("q1", "d1", ("d2",)), TrainPair("q2", "d2")]
    assert write_corpus_parquet(docs, tmp_path / "corpus.parquet") == 2
    write_queries_parquet(queries, tmp_path / "queries.parquet")
    write_pairs_parquet(pairs, tmp_path / "pairs.parquet")
    assert list(iter_corpus_parquet(tmp_path / "corpus.parquet")) == docs
    assert list(iter_queries_parquet(tmp_path / "queries.parquet")) == queries
    assert list(iter_pairs(tmp_path / "pairs.parquet", query_ids={"q1", "q2"}, doc_ids={"d1", "d2"})) == pairs
    assert not list(tmp_path.glob(".*.tmp"))


def test_title_optional_and_integer_ids(tmp_path):
    path = _table(tmp_path / "c.parquet", _id=[7, 8], text=["a", "b"])
    assert list(iter_corpus_parquet(path)) == [Document("7", "a"), Document("8", "b")]


def test_rows_counted_across_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(pmod, "BATCH_ROWS", 4)
    texts = [f"text {i}" for i in range(10)]
    texts[9] = ""
    path = _table(tmp_path / "c.parquet", _id=[f"d{i}" for i in range(10)], text=texts)
    with pytest.raises(DataError, match=r"c\.parquet:row 9: field 'text': empty text"):
        list(iter_corpus_parquet(path))


@pytest.mark.parametrize("reader,columns,field", [
    (iter_corpus_parquet, {"_id": ["d1"], "body": ["x"]}, "text"),
    (iter_queries_parquet, {"text": ["x"]}, "_id"),
    (iter_pairs, {"query_id": ["q1"], "doc": ["d1"]}, "pos_id"),
])
def test_missing_column_names_file_and_column(tmp_path, reader, columns, field):
    path = _table(tmp_path / "t.parquet", **columns)
    with pytest.raises(DataError) as info:
        list(reader(path, on_error="skip", report=SkipReport()))  # a file-level error: raised even in skip mode
    assert str(info.value).startswith(f"{path}: field '{field}': missing column")
    assert "columns here:" in str(info.value)


BAD = [  # (reader, columns, row, field, reason)
    (iter_corpus_parquet, {"_id": ["d0", "d1"], "text": ["ok", "  "]}, 1, "text", "empty text"),
    (iter_corpus_parquet, {"_id": ["d0", None], "text": ["ok", "x"]}, 1, "_id", "missing value"),
    (iter_corpus_parquet, {"_id": ["d0", "d0"], "text": ["ok", "x"]}, 1, "_id", "duplicate id 'd0'"),
    (iter_corpus_parquet, {"_id": ["d0", "d1"], "text": ["ok", "x"], "title": ["t", None]}, None, None, None),
    (iter_queries_parquet, {"_id": ["q0", "q1"], "text": ["ok", None]}, 1, "text", "missing value"),
    (iter_queries_parquet, {"_id": ["q0", "q0"], "text": ["ok", "x"]}, 1, "_id", "duplicate id"),
    (iter_pairs, {"query_id": ["q0", "q1"], "pos_id": ["d0", ""]}, 1, "pos_id", "empty text"),
    (iter_pairs, {"query_id": ["q0", "qX"], "pos_id": ["d0", "d1"]}, 1, "query_id", "unknown query id 'qX'"),
    (iter_pairs, {"query_id": ["q0", "q1"], "pos_id": ["d0", "dX"]}, 1, "pos_id", "unknown document id"),
    (iter_pairs, {"query_id": ["q0", "q1"], "pos_id": ["d0", "d1"], "neg_ids": [[], ["d0", "dY"]]},
     1, "neg_ids[1]", "unknown document id 'dY'"),
]


@pytest.mark.parametrize("reader,columns,row,field,reason", BAD)
def test_bad_row_names_file_row_field(tmp_path, reader, columns, row, field, reason):
    path = _table(tmp_path / "t.parquet", **columns)
    kwargs = {"query_ids": {"q0", "q1"}, "doc_ids": {"d0", "d1"}} if reader is iter_pairs else {}
    if row is None:  # a null title is allowed
        assert len(list(reader(path, **kwargs))) == 2
        return
    with pytest.raises(DataError) as info:
        list(reader(path, **kwargs))
    assert str(info.value).startswith(f"{path}:row {row}: field '{field}': ")
    assert reason in str(info.value)
    report = SkipReport()
    assert len(list(reader(path, on_error="skip", report=report, **kwargs))) == 1
    assert report.total == 1


def test_pairs_from_jsonl(write_lines):
    path = write_lines("train_pairs.jsonl", {"query_id": "q1", "pos_id": "d1"},
                       {"query_id": "q2", "pos_id": "d2", "neg_ids": ["d1"]}, {"query_id": "q3"})
    report = SkipReport()
    assert list(iter_pairs(path, on_error="skip", report=report)) == [
        TrainPair("q1", "d1"), TrainPair("q2", "d2", ("d1",))]
    assert report.skipped["missing field"] == 1 and f"{path}:3: field 'pos_id'" in report.examples[0]


def test_a_beir_folder_may_hold_its_corpus_and_queries_as_parquet(topic_beir, parquet_beir, tmp_path):
    from embedray.data import load_beir
    from embedray.serve.corpus import load_corpus

    jsonl, parquet = load_beir(topic_beir, "test"), load_beir(parquet_beir, "test")
    assert parquet.corpus == jsonl.corpus and parquet.queries == jsonl.queries and parquet.qrels == jsonl.qrels
    assert [d.id for d in load_corpus(parquet_beir)] == list(jsonl.corpus)
    both = tmp_path / "both"
    import shutil

    shutil.copytree(parquet_beir, both)
    shutil.copy(topic_beir / "corpus.jsonl", both / "corpus.jsonl")
    with pytest.raises(ValueError, match="holds both corpus.jsonl and corpus.parquet; keep one"):
        load_beir(both, "test")
