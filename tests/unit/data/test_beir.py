import pytest

from embedray.data import DataError, Document, SkipReport, load_beir, write_beir
from embedray.data.errors import reason_key
from embedray.data.beir import iter_qrels
from embedray.data.jsonl import iter_jsonl

CORPUS = [{"_id": "d1", "title": "Cats", "text": "Cats purr."}, {"_id": "d2", "title": "", "text": "Dogs bark."},
          {"_id": 3, "text": "Fish swim."}]
QUERIES = [{"_id": "q1", "text": "which animal purrs"}, {"_id": "q2", "text": "which animal barks"}]
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\n"


@pytest.fixture
def beir_dir(tmp_path, write_lines):
    """A good small BEIR folder; tests overwrite one file to make it bad."""
    write_lines("beir/corpus.jsonl", *CORPUS)
    write_lines("beir/queries.jsonl", *QUERIES)
    (tmp_path / "beir" / "qrels").mkdir()
    (tmp_path / "beir" / "qrels" / "test.tsv").write_text(QRELS)
    return tmp_path / "beir"


def test_load_good_folder(beir_dir):
    data = load_beir(beir_dir, "test")
    assert set(data.corpus) == {"d1", "d2", "3"}
    assert data.corpus["d1"].text_for_model == "Cats Cats purr." and data.corpus["d2"].text_for_model == "Dogs bark."
    assert data.queries == {"q1": "which animal purrs", "q2": "which animal barks"}
    assert data.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2}}
    assert data.split_queries() == data.queries and data.report.total == 0


def test_write_then_load_roundtrip(tmp_path):
    docs = [Document("a", "alpha text", "A"), Document("b", "beta text")]
    write_beir(tmp_path / "out", docs, [("q", "query")], {"dev": {"q": {"b": 1}}})
    data = load_beir(tmp_path / "out", "dev")
    assert list(data.corpus.values()) == docs and data.qrels == {"q": {"b": 1}}
    with pytest.raises(FileNotFoundError, match="splits here: dev"):
        load_beir(tmp_path / "out", "test")


# (file, content lines, line, field, reason)
BAD = [
    ("corpus.jsonl", [CORPUS[0], '{"_id": "d2", "text": '], 2, None, "malformed JSON"),
    ("corpus.jsonl", [CORPUS[0], {"text": "no id"}], 2, "_id", "missing field"),
    ("corpus.jsonl", [CORPUS[0], {"_id": "d2", "text": " "}], 2, "text", "empty text"),
    ("corpus.jsonl", [CORPUS[0], {"_id": "d2", "text": ["x"]}], 2, "text", "expected a string, got list"),
    ("corpus.jsonl", [CORPUS[0], {"_id": "d2", "title": 5, "text": "x"}], 2, "title", "expected a string"),
    ("corpus.jsonl", [CORPUS[0], CORPUS[1], {"_id": "d1", "text": "again"}], 3, "_id", "duplicate id 'd1'"),
    ("queries.jsonl", [QUERIES[0], {"_id": "q2"}], 2, "text", "missing field"),
    ("queries.jsonl", [QUERIES[0], QUERIES[1], QUERIES[0]], 3, "_id", "duplicate id 'q1'"),
    ("qrels/test.tsv", ["query-id\tdoc-id\tscore", "q1\td1\t1"], 1, "header", "expected the header"),
    ("qrels/test.tsv", ["query-id\tcorpus-id\tscore", "q1\td1\t1", "q2\td2\thigh"], 3, "score", "non-negative integer"),
    ("qrels/test.tsv", ["query-id\tcorpus-id\tscore", "q1\td1\t1", "q2\td2\tinf"], 3, "score", "non-negative integer"),
    ("qrels/test.tsv", ["query-id\tcorpus-id\tscore", "q1\td1\t1", "q2\td2\tnan"], 3, "score", "non-negative integer"),
    ("qrels/test.tsv", ["query-id\tcorpus-id\tscore", "q1\td1\t1", "q2\td2\t1.5"], 3, "score", "got '1.5' (not an integer"),
    ("qrels/test.tsv", ["query-id\tcorpus-id\tscore", "q1\td1\t-1", "q2\td2\t1"], 2, "score", "got '-1' (a negative score"),
    ("qrels/test.tsv", ["query-id\tcorpus-id\tscore", "q1\td1\t1", "q2\td2\t1", "q1\td1\t2"], 4, "corpus-id",
     "duplicate judgement of query 'q1' and document 'd1' (first on line 2"),
    ("qrels/test.tsv", ["query-id\tcorpus-id\tscore", "q1\td1\t1", "q9\td2\t1"], 3, "query-id", "unknown query id 'q9'"),
    ("qrels/test.tsv", ["query-id\tcorpus-id\tscore", "q1\td9\t1", "q2\td2\t1"], 2, "corpus-id", "unknown document id 'd9'"),
    ("qrels/test.tsv", ["query-id\tcorpus-id\tscore", "q1\t\t1", "q2\td2\t1"], 2, "corpus-id", "empty id"),
]


@pytest.mark.parametrize("name,lines,line,field,reason", BAD)
def test_bad_input_names_file_line_field(beir_dir, write_lines, name, lines, line, field, reason):
    path = write_lines(f"beir/{name}", *lines)
    with pytest.raises(DataError) as info:
        load_beir(beir_dir, "test")
    msg = str(info.value)
    assert msg.startswith(f"{path}:{line}: " + (f"field '{field}': " if field else "")), msg
    assert reason in msg
    if line > 1:  # header errors spoil the whole file; row errors can be skipped and counted
        data = load_beir(beir_dir, "test", on_error="skip")
        assert data.report.examples[0] == msg and data.report.skipped[reason_key(info.value)] == 1
        # a skipped judged document or query also drops its judgement, counted as an unknown id
        cascade = sum(q not in data.queries or d not in data.corpus for q, d in [("q1", "d1"), ("q2", "d2")])
        assert data.report.total == 1 + (0 if name.startswith("qrels") else cascade)


def test_skip_mode_counts_reasons_not_ids(beir_dir, write_lines):
    write_lines("beir/corpus.jsonl", *CORPUS, CORPUS[0], CORPUS[1], {"_id": "x"}, "not json")
    data = load_beir(beir_dir, "test", on_error="skip")
    assert len(data.corpus) == 3
    assert dict(data.report.skipped) == {"duplicate id": 2, "missing field": 1, "malformed JSON": 1}


def test_missing_docs_keep_counts(beir_dir):
    (beir_dir / "qrels" / "test.tsv").write_text(QRELS + "q1\tgone\t1\n")
    data = load_beir(beir_dir, "test", missing_docs="keep")
    assert data.missing_doc_judgements == 1 and data.qrels["q1"] == {"d1": 1, "gone": 1}
    data = load_beir(beir_dir, "test", missing_docs="skip")
    assert data.qrels["q1"] == {"d1": 1} and data.report.total == 1


def test_qrels_non_utf8_byte_names_file_line_or_is_counted(beir_dir):
    path = beir_dir / "qrels" / "test.tsv"
    path.write_bytes(b"\xef\xbb\xbfquery-id\tcorpus-id\tscore\r\nq1\td1\t1\r\n\r\nq2\td\xe92\t1\r\nq2\td2\t2.0\r\n")
    with pytest.raises(DataError) as info:
        load_beir(beir_dir, "test")
    assert str(info.value).startswith(f"{path}:4: not valid UTF-8 (byte 0xe9 at column 5"), str(info.value)
    data = load_beir(beir_dir, "test", on_error="skip")  # the BOM before the header is fine
    assert data.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2}}
    assert dict(data.report.skipped) == {"not valid UTF-8": 1} and data.report.examples == [str(info.value)]


@pytest.mark.parametrize("name", ["corpus.jsonl", "queries.jsonl"])
def test_jsonl_non_utf8_byte_names_file_line(beir_dir, name):
    path = beir_dir / name
    path.write_bytes(path.read_bytes() + b'\n{"_id": "x9", "text": "caf\xe9"}\n')  # a blank line, then line 5 (corpus)
    line = 5 if name == "corpus.jsonl" else 4
    with pytest.raises(DataError, match=rf"^{path}:{line}: not valid UTF-8 \(byte 0xe9 at column 27"):
        load_beir(beir_dir, "test")
    data = load_beir(beir_dir, "test", on_error="skip")
    assert data.report.skipped == {"not valid UTF-8": 1} and "x9" not in data.corpus and "x9" not in data.queries


def test_qrels_are_read_without_csv_quoting(beir_dir, write_lines):
    write_lines("beir/corpus.jsonl", *CORPUS, {"_id": '"d4', "text": "An id that starts with a quote."})
    path = beir_dir / "qrels" / "test.tsv"
    path.write_text('query-id\tcorpus-id\tscore\nq1\t"d4\t1\nq2\td2\t1\nq1\td1\t2\n')
    assert list(iter_qrels(path)) == [(2, "q1", '"d4', 1), (3, "q2", "d2", 1), (4, "q1", "d1", 2)]
    data = load_beir(beir_dir, "test")
    assert data.qrels == {"q1": {'"d4': 1, "d1": 2}, "q2": {"d2": 1}} and data.report.total == 0


def test_qrels_skip_mode_counts_each_bad_line_by_reason(beir_dir):
    path = beir_dir / "qrels" / "test.tsv"
    path.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td1\t1\nq2\td2\t-2\nq2\td2\t0.5\nq2\td2\t3\n")
    report = SkipReport()
    assert list(iter_qrels(path, "skip", report)) == [(2, "q1", "d1", 1), (6, "q2", "d2", 3)]
    assert report.total == 3 and report.skipped["duplicate judgement of query and document"] == 1
    assert [e.split(": ")[0] for e in report.examples] == [f"{path}:{n}" for n in (3, 4, 5)]
    summary = report.as_dict()
    assert summary["total"] == 3 and sum(summary["by_reason"].values()) == 3 and summary["examples"] == report.examples
    assert f"{path}:3" in report.summary() and f"{path}:5" in report.summary()


def test_jsonl_tolerates_bom_and_blank_lines(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n{"a": 2}\n')
    assert list(iter_jsonl(path)) == [(1, {"a": 1}), (3, {"a": 2})]


def test_skip_report_summary():
    report = SkipReport()
    assert report.summary() == "no rows skipped"
    with pytest.raises(ValueError, match="on_error"):
        from embedray.data.errors import handle
        handle(DataError("f", 1, "x", "bad"), "ignore", report)
